"""A real training process killed with SIGKILL resumes and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kd_tf.denoise.nets import build_unet

CONFIG = """
data: {patch_size: 32, batch_size: 4, val_crop: 32, val_crops_per_image: 1}
train: {steps: 40, steps_per_epoch: 5, seed: 3}
student: {family: unet, widths: [4, 8], blocks: 1}
distill: {compare_scratch: true}
eval: {sigmas: [25], baselines: [], max_images: 2, timing_size: 64}
export_formats: []
"""
TOLERANCE = 1e-5          # relative, on held-out PSNR; weights within 1e-5 absolute


def _command(root, run):
    return [sys.executable, "-m", "kd_tf", "distill", "--config", str(root / "config.yaml"),
            "--teacher", str(root / "teacher.keras"), "--run-name", run]


def _epochs_done(root, run, phase):
    metadata = root / "runs" / run / "backup" / phase / "training_metadata.json"
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    keras.utils.set_random_seed(0)
    build_unet((8, 16), 1, name="teacher").save(root / "teacher.keras")
    (root / "config.yaml").write_text(CONFIG + f"output: {{runs_dir: {root / 'runs'}, log_dir: {root / 'tb'}}}\n")
    return root


def _run_until_killed(root, run, phase, env, log):
    """Starts the job and SIGKILLs it once `phase` has checkpointed two epochs."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(_command(root, run), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.time() + 240
            while _epochs_done(root, run, phase) < 2 and process.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL, f"the run ended before it could be killed in {phase}"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not (root / "runs" / run / "report.json").exists()
    assert _epochs_done(root, run, phase) >= 2
    return Path(log).read_text()


def test_sigkill_in_each_phase_then_rerun_matches_an_uninterrupted_run(workspace):
    """Killed while distilling, rerun and killed again while training the scratch comparison,
    rerun to the end: both students and their scores equal the uninterrupted run's."""
    env = {**os.environ, "KD_TF_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    full = workspace / "runs" / "full" / "report.json"
    subprocess.run(_command(workspace, "full"), check=True, env=env, capture_output=True, cwd=Path.cwd())

    run = "killed"
    _run_until_killed(workspace, run, "distill", env, workspace / "first.log")
    second = _run_until_killed(workspace, run, "scratch", env, workspace / "second.log")
    assert "resuming distill after epoch" in second
    resumed = subprocess.run(_command(workspace, run), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming scratch after epoch" in resumed.stderr

    expected = json.loads(full.read_text())["methods"]
    got = json.loads((workspace / "runs" / run / "report.json").read_text())["methods"]
    for name in ("student (distilled)", "student (scratch)"):
        assert got[name]["scores"]["25.0"]["psnr"] == pytest.approx(expected[name]["scores"]["25.0"]["psnr"],
                                                                   rel=TOLERANCE), name
    for file in ("student.keras", "student_scratch.keras"):
        a = keras.models.load_model(workspace / "runs" / "full" / file).get_weights()
        b = keras.models.load_model(workspace / "runs" / run / file).get_weights()
        assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) < 1e-5, file
