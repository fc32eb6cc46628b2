"""A few Distiller steps on tiny models and fixed data, as JSON on the last stdout line.

Run in subprocesses by tests/test_distribute.py: logical CPU devices and multi-worker collectives
must be configured before TensorFlow starts, which a pytest process has long done.

    python tests/distribute_run.py compare          # 2 logical CPUs: one device vs MirroredStrategy
    python tests/distribute_run.py worker BACKUP    # one worker of TF_CONFIG's cluster (multiworker)
    python tests/distribute_run.py time             # step time, 1 vs 2 replicas (docs/DISTRIBUTED.md)
    python tests/distribute_run.py gan              # the GAN objective: one device vs MirroredStrategy
    python tests/distribute_run.py gan-worker BACKUP  # the GAN objective, one worker of TF_CONFIG's cluster
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS, BATCH, SIZE = 6, 8, 16          # global batch of 8 16x16 patches


def split_cpu(devices: int = 2):
    """`devices` logical CPU devices on the one physical CPU (before TensorFlow initialises)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def fixed_data(cached: bool, partial: bool):
    """(inputs, targets, sample weights) for STEPS global batches; unequal weights on purpose, and
    with `partial` a last batch of 5 (split 3 + 2 over two replicas)."""
    rng = np.random.default_rng(7)
    clean = rng.random((STEPS * BATCH - (3 if partial else 0), SIZE, SIZE, 3)).astype("float32")
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype("float32")
    weights = rng.uniform(0.25, 2.0, len(clean)).astype("float32")
    inputs = noisy
    if cached:                          # teacher outputs as kd_tf.teacher_cache would give them
        inputs = {"inputs": noisy, "teacher_outputs": np.clip(noisy * 0.9 + 0.05, 0, 1).astype("float32")}
    return tf.data.Dataset.from_tensor_slices((inputs, clean, weights)).batch(BATCH)


def recorder():
    """Records the logged running means after every step (the Keras logs a user sees)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.psnr = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))
            self.psnr.append(float(logs["psnr"]))

    return Recorder()


def run(strategy, cached: bool = False, features: bool = False, partial: bool = False, callbacks=()) -> dict:
    import keras

    from kd_tf.distiller import Distiller
    from kd_tf.denoise.nets import build_unet

    keras.utils.set_random_seed(0)
    with strategy.scope():
        teacher = build_unet((8, 16), 1, name="teacher")
        student = build_unet((4, 8), 1, name="student")
        distiller = Distiller(teacher, student, student_loss_weight=0.5, probe_size=SIZE,
                              features=[("bottleneck", "bottleneck", 0.1)] if features else ())
        # plain SGD: a gradient off by the number of replicas would show (Adam would hide it)
        distiller.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.5))
    teacher_before = [w.copy() for w in teacher.get_weights()]
    record = recorder()
    history = distiller.fit(fixed_data(cached, partial), epochs=1, steps_per_epoch=STEPS, verbose=0,
                            shuffle=False, callbacks=[record, *callbacks])
    weights = np.concatenate([np.ravel(w) for w in distiller.student.get_weights()])
    teacher_change = max(float(np.max(np.abs(a - b))) for a, b in zip(teacher.get_weights(), teacher_before))
    return {"replicas": strategy.num_replicas_in_sync, "losses": record.losses, "psnr": record.psnr,
            "epoch_loss": float(history.history["loss"][-1]), "weights": weights.tolist(),
            "teacher_change": teacher_change,
            "teacher_replicated": all(isinstance(w.value, tf.distribute.DistributedValues) for w in teacher.weights)}


GAN_LATENT = 8


def gan_data():
    """Real images in [-1, 1] for STEPS global batches, the last one of 5 (split 3 + 2)."""
    rng = np.random.default_rng(11)
    real = np.tanh(rng.normal(0, 1, (STEPS * BATCH - 3, 28, 28, 1))).astype("float32")
    return tf.data.Dataset.from_tensor_slices(real).batch(BATCH)


def run_gan(strategy, callbacks=()) -> dict:
    """A few steps of the GAN objective: a tiny teacher and student generator (synchronized batch
    norm), a discriminator started from the teacher's, an R1 penalty, 2 discriminator steps per
    generator step, a feature term through an adapter, plain SGD on both sides."""
    import keras

    from kd_tf.generators import LatentSampler
    from kd_tf.distiller import Distiller
    from kd_tf.gan.nets import build_discriminator, build_generator
    from kd_tf.objectives import Adversarial, clone_discriminator

    keras.utils.set_random_seed(0)
    with strategy.scope():
        teacher = build_generator(GAN_LATENT, (8, 4, 4), name="teacher")
        teacher_d = build_discriminator((4, 8), name="teacher_d")
        student = build_generator(GAN_LATENT, (4, 4, 2), name="student")
        objective = Adversarial(clone_discriminator(teacher_d), keras.optimizers.SGD(0.05, momentum=0.5),
                                d_steps=2, r1_weight=0.5)
        distiller = Distiller(teacher, student, student_loss_weight=0.5, features=[("up0", "up0", 0.5)], objective=objective,
                              latent_sampler=LatentSampler(GAN_LATENT, seed=3))
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5))
    before = {"teacher": [w.copy() for w in teacher.get_weights()],
              "teacher_d": [w.copy() for w in teacher_d.get_weights()]}
    record = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            record.append({key: float(logs[key]) for key in ("loss", "distill", "own", "d_loss", "r1")})

    distiller.fit(gan_data(), epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False,
                  callbacks=[Recorder(), *callbacks])
    flat = lambda model: np.concatenate([np.ravel(w) for w in model.get_weights()]).tolist()
    change = lambda model, key: max(float(np.max(np.abs(a - b))) for a, b in zip(model.get_weights(), before[key]))
    return {"replicas": strategy.num_replicas_in_sync, "steps": record, "student": flat(student),
            "discriminator": flat(objective.discriminator),
            "discriminator_optimizer": [np.ravel(np.asarray(v)).tolist() for v in objective.optimizer.variables],
            "teacher_change": change(teacher, "teacher"), "teacher_d_change": change(teacher_d, "teacher_d"),
            "discriminator_replicated": all(isinstance(w.value, tf.distribute.DistributedValues)
                                            for w in objective.discriminator.weights)}


def gan_compare() -> dict:
    split_cpu(2)
    from kd_tf.distribute import strategy_from_name

    return {"single": run_gan(strategy_from_name("default")), "mirrored": run_gan(strategy_from_name("mirrored"))}


def gan_worker(backup_dir: str) -> dict:
    from kd_tf.distribute import BackupAndRestore, is_chief, strategy_from_name

    strategy = strategy_from_name("multiworker")
    chief = is_chief(strategy)
    result = run_gan(strategy, callbacks=[BackupAndRestore(backup_dir, chief=chief, delete_checkpoint=False)])
    result.update(chief=chief, task=json.loads(os.environ["TF_CONFIG"])["task"])
    return result


def compare() -> dict:
    split_cpu(2)
    from kd_tf.distribute import strategy_from_name

    mirrored = strategy_from_name("mirrored")
    single = strategy_from_name("default")                  # what --strategy default runs
    results = {}
    for name, options in (("plain", dict(features=True, partial=True)), ("cached", dict(cached=True))):
        results[name] = {"single": run(single, **options), "mirrored": run(mirrored, **options)}
    return results


def worker(backup_dir: str) -> dict:
    from kd_tf.distribute import BackupAndRestore, is_chief, strategy_from_name

    strategy = strategy_from_name("multiworker")
    chief = is_chief(strategy)
    backup = BackupAndRestore(backup_dir, chief=chief, delete_checkpoint=False)   # the chief's alone is written
    result = run(strategy, features=True, partial=True, callbacks=[backup])
    result.update(chief=chief, task=json.loads(os.environ["TF_CONFIG"])["task"])
    return result


def step_time(steps: int = 20, repeats: int = 3) -> dict:
    """Seconds per step of the shipped student's distillation on cached teacher outputs (the main
    job's mode: 64x64 patches, mixed precision): one device with batch 16, then MirroredStrategy on
    2 logical CPUs with the same global batch 16 (8 per replica) and with 16 per replica (global
    32). Median of `repeats` timings of `steps` steps, after 5 warm-up steps."""
    split_cpu(2)
    import keras

    from kd_tf.distiller import Distiller
    from kd_tf.distribute import strategy_from_name
    from kd_tf.denoise.nets import build_unet

    noisy = np.random.default_rng(0).random((16 * 8, 64, 64, 3)).astype("float32")
    bank = tf.data.Dataset.from_tensor_slices(({"inputs": noisy, "teacher_outputs": noisy}, noisy)).repeat()
    timings = {}
    for name, strategy, batch in (("1 replica, batch 16", strategy_from_name("default"), 16),
                                  ("2 replicas, global batch 16", strategy_from_name("mirrored"), 16),
                                  ("2 replicas, global batch 32", strategy_from_name("mirrored"), 32)):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            teacher = build_unet((8, 16), 1, name="teacher")
            student = build_unet((12, 24, 48, 96), 1, name="student", mixed_precision=True)
            distiller = Distiller(teacher, student, student_loss_weight=0.5)
            distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
        data = bank.batch(batch).prefetch(2)
        distiller.fit(data, epochs=1, steps_per_epoch=5, verbose=0)            # trace and warm up
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            distiller.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
            runs.append((time.perf_counter() - started) / steps)
        seconds = float(np.median(runs))
        timings[name] = {"seconds_per_step": seconds, "samples_per_second": batch / seconds,
                         "each_repeat": [round(r, 4) for r in runs]}
    one = timings["1 replica, batch 16"]["seconds_per_step"]
    ratio = timings["2 replicas, global batch 16"]["seconds_per_step"] / one
    return {"timings": timings, "step_time_ratio_2_over_1": ratio, "steps": steps, "repeats": repeats,
            "cpu_count": os.cpu_count()}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "compare":
        output = compare()
    elif mode == "worker":
        output = worker(sys.argv[2])
    elif mode == "time":
        output = step_time()
    elif mode == "gan":
        output = gan_compare()
    elif mode == "gan-worker":
        output = gan_worker(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected compare, worker, time, gan or gan-worker")
    print(json.dumps(output))
