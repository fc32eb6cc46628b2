"""Distillation under tf.distribute: R replicas with a global batch B take the steps of one device
with batch B. The runs happen in subprocesses (tests/distribute_run.py): logical CPU devices and
multi-worker collectives must be set up before TensorFlow starts.

Tolerances (measured on this 2-core CPU machine: losses within 1.6e-7 relative, student weights
within 7.6e-8 absolute, for MirroredStrategy on 2 logical CPUs and for 2 workers alike). A loss
left unscaled for the replicas gives 0.26 relative; Keras' own 1/replicas scaling, which is wrong
for a partial last batch, moves the weights by 1.6e-4. Both would fail here.
"""

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf import distribute
from kd_tf.cli import _overrides, build_parser

HELPER = Path(__file__).with_name("distribute_run.py")
LOSS_RTOL = 2e-6        # logged running mean of the loss and of the PSNR, every step
WEIGHT_ATOL = 1e-6      # final student weights (largest magnitude about 0.35)


def _helper(*args, env=None, timeout=240) -> dict:
    done = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_run(result, reference):
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(result["psnr"], reference["psnr"], rtol=LOSS_RTOL)
    assert result["epoch_loss"] == pytest.approx(reference["epoch_loss"], rel=LOSS_RTOL)
    np.testing.assert_allclose(result["weights"], reference["weights"], rtol=0, atol=WEIGHT_ATOL)
    assert result["teacher_change"] == 0.0


@pytest.fixture(scope="module")
def compared():
    """One device vs MirroredStrategy on 2 logical CPUs, 6 steps of global batch 8 each:
    'plain' (live teacher, a feature term, unequal sample weights, a last batch of 5 split 3 + 2)
    and 'cached' (kd_tf.teacher_cache batches)."""
    return _helper("compare")


@pytest.mark.parametrize("variant", ["plain", "cached"])
def test_mirrored_two_replicas_match_one_device_with_the_global_batch(compared, variant):
    single, mirrored = compared[variant]["single"], compared[variant]["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["teacher_replicated"]
    _assert_same_run(mirrored, single)
    assert single["losses"][-1] < single["losses"][0]          # it did train


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _two_workers(mode, tmp_path):
    """Runs the helper's `mode` in 2 worker processes (TF_CONFIG on 127.0.0.1); their results,
    after checking that only the chief wrote a checkpoint and that both freed their ports."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    try:
        for index in range(2):
            task = {"type": "worker", "index": index}
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": task}))
            command = [sys.executable, str(HELPER), mode, str(tmp_path / f"backup{index}")]
            with open(tmp_path / f"worker{index}.out", "w") as out, open(tmp_path / f"worker{index}.err", "w") as err:
                workers.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
        codes = [worker.wait(timeout=240) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    assert codes == [0, 0], [(tmp_path / f"worker{i}.err").read_text()[-3000:] for i in range(2)]
    results = [json.loads((tmp_path / f"worker{i}.out").read_text().strip().splitlines()[-1]) for i in range(2)]
    assert [r["chief"] for r in results] == [True, False]
    assert list((tmp_path / "backup0").glob("epoch-*.weights.h5"))        # the chief's checkpoint
    assert not (tmp_path / "backup1").exists()                         # the other worker wrote nothing
    for port in ports:                                                 # both servers are gone
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
    return results


def test_two_workers_match_one_process_and_only_the_chief_writes(compared, tmp_path):
    for result in _two_workers("worker", tmp_path):
        assert result["replicas"] == 2 and result["teacher_replicated"]
        _assert_same_run(result, compared["plain"]["single"])


# -- the GAN objective: generator phase, discriminator phase (own optimizer), shared latents -----

GAN_LOSS_RTOL = 5e-6    # loss, distill, own, d_loss and r1, every step (measured: 7.8e-7 at most)
GAN_WEIGHT_ATOL = 2e-6  # student, discriminator and its optimizer's state (measured: 3.4e-7; largest about 1)


@pytest.fixture(scope="module")
def gan_compared():
    """One device vs MirroredStrategy, 6 steps of global batch 8 (the last one 5, split 3 + 2):
    synchronized batch norm, a feature term, d_steps=2 and an R1 penalty (tests/distribute_run.py)."""
    return _helper("gan")


def _assert_same_gan_run(result, reference):
    for key in ("loss", "distill", "own", "d_loss", "r1"):
        np.testing.assert_allclose([s[key] for s in result["steps"]], [s[key] for s in reference["steps"]],
                                   rtol=GAN_LOSS_RTOL, err_msg=key)
    np.testing.assert_allclose(result["student"], reference["student"], rtol=0, atol=GAN_WEIGHT_ATOL)
    np.testing.assert_allclose(result["discriminator"], reference["discriminator"], rtol=0, atol=GAN_WEIGHT_ATOL)
    assert result["discriminator_optimizer"][0] == reference["discriminator_optimizer"][0] == [12]   # 6 x d_steps
    for mine, theirs in zip(result["discriminator_optimizer"], reference["discriminator_optimizer"]):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=GAN_WEIGHT_ATOL)
    assert result["teacher_change"] == 0.0 and result["teacher_d_change"] == 0.0


def test_gan_mirrored_two_replicas_match_one_device_with_the_global_batch(gan_compared):
    single, mirrored = gan_compared["single"], gan_compared["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["discriminator_replicated"]
    _assert_same_gan_run(mirrored, single)
    assert single["steps"][-1]["distill"] < single["steps"][0]["distill"]      # it did train


def test_gan_two_workers_match_one_process_and_only_the_chief_writes(gan_compared, tmp_path):
    for result in _two_workers("gan-worker", tmp_path):
        assert result["replicas"] == 2 and result["discriminator_replicated"]
        _assert_same_gan_run(result, gan_compared["single"])


# -- in-process: names, configuration, errors -------------------------------------------------

def test_strategy_names_and_tf_config_errors(monkeypatch):
    assert distribute.strategy_from_name("default").num_replicas_in_sync == 1
    assert distribute.is_chief(distribute.strategy_from_name("default"))
    with pytest.raises(ValueError, match=r"strategy 'tpu' is not accepted; expected one of \('default', 'mirrored'"):
        distribute.strategy_from_name("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.strategy_from_name("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match=r"TF_CONFIG task=.*'index': 1.* is not accepted"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["host-without-port"]}, "task": {}}))
    with pytest.raises(ValueError, match="TF_CONFIG cluster=.* 'host:port' strings"):
        distribute.read_tf_config()


def test_config_and_cli_take_the_strategy(capsys):
    assert cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"strategy": "mirrored"}}).train.strategy == "mirrored"
    with pytest.raises(cfg.ConfigError, match=r"train.strategy='tpu' is not accepted; expected one of \('default', "
                                              r"'mirrored', 'multiworker'\)"):
        cfg.from_dict(denoise_config.TeacherJobConfig, {"train": {"strategy": "tpu"}})
    for verb in ("distill", "train-teacher"):
        args = build_parser().parse_args([verb, "--strategy", "multiworker"])
        assert _overrides(args)["train.strategy"] == "multiworker"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--strategy", "tpu"])
    assert "invalid choice: 'tpu' (choose from 'default', 'mirrored', 'multiworker')" in capsys.readouterr().err


def test_global_batch_must_split_evenly_over_the_replicas():
    two = types.SimpleNamespace(num_replicas_in_sync=2)
    distribute.check_batch_size(16, two)
    with pytest.raises(ValueError, match=r"data.batch_size=15 is not accepted with 2 replicas; expected a multiple"):
        distribute.check_batch_size(15, two)
    noisy, clean, batch = distribute.even_validation(np.zeros((5, 8, 8, 3)), np.ones((5, 8, 8, 3)), two, 7)
    assert (len(noisy), len(clean), batch) == (4, 4, 8)
    one = types.SimpleNamespace(num_replicas_in_sync=1)
    assert distribute.even_validation(np.zeros((5, 8, 8, 3)), np.ones((5, 8, 8, 3)), one)[0].shape[0] == 5
    assert int(distribute.global_batch_size(5)) == 5                   # one replica: its own batch


def test_only_the_chief_writes_backups_and_run_folders(tmp_path):
    from kd_tf.runs import RunPaths

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 2), "float32")
    for chief in (True, False):
        backup = tmp_path / f"backup_{chief}"
        model.fit(x, x[:, :1], epochs=2, verbose=0,
                  callbacks=[distribute.BackupAndRestore(str(backup), chief=chief, delete_checkpoint=False)])
        assert bool(list(backup.glob("epoch-*.weights.h5"))) == chief
    output = cfg.OutputConfig(run_name="run", runs_dir=str(tmp_path / "runs"), log_dir=str(tmp_path / "logs"))
    worker = RunPaths(output, "distill", chief=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()
    assert worker.backup == tmp_path / "runs" / "run" / "backup"        # restores from the chief's
    assert worker.root.is_dir() and worker.logs.is_dir()               # a scratch folder, removed at exit
