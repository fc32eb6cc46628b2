"""Killing an export at any moment leaves each final path with the old artifact or none, never a
broken one (every artifact is written under a temporary name, then renamed)."""

import os
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

from kd_tf.export import LiteRTModel
from kd_tf.nets import build_unet


def _intact(out):
    """Loads whatever is at the final paths; returns how many artifacts were there."""
    present = 0
    if (out / "student.keras").exists():
        keras.models.load_model(out / "student.keras")
        present += 1
    if (out / "savedmodel").exists():
        tf.saved_model.load(str(out / "savedmodel"))
        present += 1
    if (out / "student_int8.tflite").exists():
        LiteRTModel(out / "student_int8.tflite")
        present += 1
    return present


def test_export_killed_at_any_time_never_leaves_a_broken_artifact(tmp_path):
    keras.utils.set_random_seed(0)
    model = tmp_path / "student.keras"
    build_unet((4, 8), 1, name="student").save(model)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kd_tf", "export", "--model", str(model), "--out", str(out),
               "--formats", "keras", "savedmodel", "int8", "--set", "calibration_batches=2",
               "--set", "latency_sizes=[64]", "--set", "threads=[1]", "--set", f"output.runs_dir={tmp_path / 'runs'}"]
    env = {**os.environ, "KD_TF_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.time()
    subprocess.run(command, check=True, env=env, capture_output=True)
    duration = time.time() - started
    assert _intact(out) == 3

    for fraction in (0.45, 0.65, 0.85):                 # past the imports, into the writing
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(fraction * duration)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert _intact(out) >= 2, f"killed at {fraction:.0%}"   # at most one in its rename window


def test_a_file_reaches_the_disk_before_its_name_changes(tmp_path, monkeypatch):
    from kd_tf import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic.write_text_atomically(tmp_path / "report.json", "{}")
    assert events == ["fsync", "replace", "fsync"]          # the file, the rename, the folder
    assert (tmp_path / "report.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 1


def test_directory_swap_never_leaves_the_final_name_missing(tmp_path, monkeypatch):
    from kd_tf import atomic

    final, new = tmp_path / "savedmodel", tmp_path / "savedmodel.partial"
    final.mkdir()
    (final / "old.pb").write_text("old")
    new.mkdir()
    (new / "new.pb").write_text("new")

    def no_plain_rename(a, b):          # the two-step fallback would leave a moment without `final`
        raise AssertionError("the directory was moved in two steps")

    monkeypatch.setattr(atomic.os, "replace", no_plain_rename)
    atomic.replace_directory(new, final)
    assert [p.name for p in final.iterdir()] == ["new.pb"] and sorted(p.name for p in tmp_path.iterdir()) == ["savedmodel"]
