"""tf.distribute for the training jobs: a strategy from its name, who the chief is, the global batch.

    default      one device (whatever TensorFlow picks)
    mirrored     every local GPU (every logical CPU device when there is no GPU), one process
    multiworker  every worker of the cluster described by the standard TF_CONFIG variable

The Distiller averages its loss over the *global* batch (`global_batch_size` with
tf.nn.compute_average_loss) and logs global means (`mean_results`), so one step on R replicas
with a global batch B is the step of one device with batch B. Models, optimizers and metrics
are created under `strategy.scope()`: the teacher is replicated like any model and stays frozen.
Only the chief writes checkpoints, logs and reports; the other workers write to scratch folders
(`is_chief`, `BackupAndRestore`). docs/DISTRIBUTED.md tells how to run it.

An objective that trains a model of its own (kd_tf.objectives.Adversarial, the GAN discriminator)
follows the same rules: its model and optimizer built in the scope, its per-sample losses averaged
with tf.nn.compute_average_loss(..., global_batch_size=global_batch_size(n)), its trackers Means;
latents drawn inside the step come from (seed, step) for the global batch, each replica keeping its
slice (kd_tf.generators.LatentSampler), and generators use synchronized batch normalization.
A tf.distribute.TPUStrategy fits by design (nothing here is per-device; the jobs take a
`strategy=` argument from Python); it is not tested on this project's CPU machines.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from kd_tf import callbacks
from kd_tf.config import STRATEGIES
from kd_tf.errors import InputError

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def read_tf_config() -> dict:
    """The cluster of a multi-worker run, from the TF_CONFIG environment variable; a clear error
    when it is missing or does not describe this task's place in a cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise InputError(f"--strategy multiworker needs the TF_CONFIG environment variable on every worker, "
                         f"for example TF_CONFIG='{TF_CONFIG_EXAMPLE}' (index 1 on the second machine)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InputError(f"TF_CONFIG is not valid JSON ({error}); expected {TF_CONFIG_EXAMPLE}") from None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    task = value.get("task") if isinstance(value, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h for h in hosts)
            for hosts in cluster.values()):
        raise InputError(f"TF_CONFIG cluster={cluster!r} is not accepted; expected a mapping from task type "
                         f"('chief', 'worker') to a list of 'host:port' strings, as in {TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise InputError(f"TF_CONFIG task={task!r} is not accepted; expected {{'type': one of {sorted(cluster)}, "
                         f"'index': this task's position in that list of the cluster, from 0}}")
    return value


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose reduce() takes what Keras 3's fit() gives it.

    keras/src/backend/tensorflow/trainer.py calls strategy.reduce() with values this strategy
    rejects (keras-team/keras#20585, #20329): a nested (input, target, weight) batch, to build the
    model ("Attempt to convert a value (PerReplica ...) to a Tensor"), and every step's scalar logs
    with axis=0 ("Invalid reduction dimension 0 for input with 0 dimensions"). Here a nest is
    reduced value by value and a scalar over the replicas only, which is what those calls mean.
    """

    def reduce(self, reduce_op, value, axis):
        reduce_one = super().reduce

        def one(v):
            rank = len(self.experimental_local_results(v)[0].shape)
            return reduce_one(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(one, value)


def strategy_from_name(name: str) -> tf.distribute.Strategy:
    """The strategy called `name` (one of STRATEGIES). Create it before any other TensorFlow work:
    a multi-worker strategy configures the runtime's collective ops."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(
            None if gpus else [device.name for device in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        read_tf_config()
        return _MultiWorkerMirroredStrategy()
    raise InputError(f"strategy {name!r} is not accepted; expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes checkpoints, logs and reports: always, except on the workers of
    a multi-worker run other than the chief (task 'chief', else 'worker' 0)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def scratch_dir(prefix: str = "kd_tf-worker-") -> str:
    """A temporary folder for what a non-chief worker must write but nobody reads; removed at exit."""
    import atexit

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """data.batch_size is the global batch: it must split evenly over the replicas (Keras 3 builds
    the model from the replicas' first batches, and fails on unequal ones)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise InputError(f"data.batch_size={batch_size} is not accepted with {replicas} replicas; expected a "
                         f"multiple of {replicas} (the global batch, split evenly over the replicas)")


def even_validation(noisy, clean, strategy: tf.distribute.Strategy, batch_size: int = 8):
    """(noisy, clean, batch size) for fit(validation_data=...) whose first batch splits evenly over
    the replicas, as Keras 3 needs (see check_batch_size): drops at most replicas - 1 crops and
    rounds the batch up to a multiple of the replicas. Unchanged on one replica."""
    replicas = strategy.num_replicas_in_sync
    keep = len(noisy) - len(noisy) % replicas
    if not keep:
        raise InputError(f"{len(noisy)} validation crop(s) for {replicas} replicas; expected at least one per "
                         f"replica: raise data.val_crops_per_image or hold out more images")
    return noisy[:keep], clean[:keep], -(-batch_size // replicas) * replicas


def global_batch_size(local_batch_size) -> tf.Tensor:
    """The samples of this step over all replicas in sync (int32), from one replica's count.

    Keras' optimizer.apply() sums the replicas' gradients, so each replica must differentiate its
    share of the global-batch mean: sum of its per-sample losses / global batch. Keras' own
    train_step divides its per-replica mean by `num_replicas_in_sync`
    (keras/src/losses/loss.py: scale_loss_for_distribution), which is the same when the replicas
    hold equal batches; summing the replicas' counts is also right for a partial last batch.
    Pass the result to tf.nn.compute_average_loss(..., global_batch_size=...).
    """
    local = tf.cast(local_batch_size, tf.int32)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local, tf.float32))   # float: any device
    return tf.cast(tf.round(total), tf.int32)


def mean_results(metrics) -> dict:
    """{name: result} of the metrics over every replica's samples so far (for a train/test step).

    Inside a replica's step, result() reads that replica's sums only; Keras then averages the
    replicas' results, which is exact only when they held equal batches. For keras.metrics.Mean
    trackers the sums are added over the replicas first (one small all-reduce), which is exact for
    a partial last batch too; other metrics keep Keras' behaviour.
    """
    results = {metric.name: metric.result() for metric in metrics}
    context = tf.distribute.get_replica_context()
    means = [metric for metric in metrics if isinstance(metric, keras.metrics.Mean)]
    if context is None or context.num_replicas_in_sync == 1 or not means:
        return results
    sums = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack(
        [tf.cast(tf.convert_to_tensor(v), tf.float32) for metric in means for v in (metric.total, metric.count)]))
    results.update({metric.name: tf.math.divide_no_nan(sums[2 * i], sums[2 * i + 1]) for i, metric in enumerate(means)})
    return results


class BackupAndRestore(callbacks.BackupAndRestore):
    """kd_tf.callbacks.BackupAndRestore of which only the chief writes `backup_dir`.

    The Keras multi-worker pattern: every worker saves (a save may read replicated variables with
    collective ops, so all must take part), the others into a scratch folder deleted at once; every
    worker restores from the chief's `backup_dir`, so resuming a run spread over several machines
    needs the runs folder on a shared filesystem. With chief=True it is the kd_tf callback as is.
    """

    def __init__(self, backup_dir, chief: bool = True, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.chief = chief

    def _save_model(self):
        if self.chief:
            return super()._save_model()
        scratch = tempfile.mkdtemp(prefix="kd_tf-backup-")
        try:
            self._save_into(Path(scratch), prune=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def on_train_end(self, logs=None):
        if self.chief:                         # delete_checkpoint=True: the chief removes its own backup
            super().on_train_end(logs)
