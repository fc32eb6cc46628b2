"""Killing an export at any commit point leaves each final path with a whole artifact, the old or the
new one (every artifact is written under a temporary name, flushed, then renamed or exchanged)."""

import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.export import LiteRTModel
from kd_tf.denoise.nets import build_unet


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


class Killed(BaseException):
    """A kill injected at one exact point: nothing after it runs."""


def test_export_killed_at_each_commit_point_keeps_every_artifact_whole(tmp_path, monkeypatch):
    """The export is killed just before each rename or directory exchange that commits a file
    (and, in the run before, it is counted): every final path always holds a loadable artifact,
    the old or the new one, never a missing or broken one."""
    from kd_tf import atomic
    from kd_tf.cli import main

    keras.utils.set_random_seed(0)
    model = tmp_path / "student.keras"
    build_unet((4, 8), 1, name="student").save(model)
    out, photos = tmp_path / "out", tmp_path / "photos"          # small photos: each export takes seconds
    photos.mkdir()
    for index in range(4):
        cv2.imwrite(str(photos / f"p{index}.png"), np.random.default_rng(index).integers(0, 256, (72, 72, 3), np.uint8))
    argv = ["export", "--model", str(model), "--out", str(out), "--data", str(photos),
            "--formats", "keras", "savedmodel", "int8",
            "--set", "calibration_batches=2", "--set", "latency_sizes=[64]", "--set", "threads=[1]",
            "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", f"output.log_dir={tmp_path / 'tb'}"]
    assert main(argv) == 0 and _intact(out) == 3          # the old artifacts the kills must never lose

    commits, real_replace, real_exchange = [], atomic.os.replace, atomic._exchange

    def commit(kind, real, kill_at):
        def do(a, b):
            commits.append(f"{kind} {os.path.basename(b)}")
            if len(commits) == kill_at:
                raise Killed(commits[-1])
            return real(a, b)
        return do

    def run(kill_at):
        commits.clear()
        monkeypatch.setattr(atomic.os, "replace", commit("rename", real_replace, kill_at))
        monkeypatch.setattr(atomic, "_exchange", commit("exchange", real_exchange, kill_at))
        try:
            return main(argv)
        finally:
            monkeypatch.undo()

    assert run(kill_at=0) == 0                       # counts the commit points of a whole export
    points = list(commits)
    assert any(p.startswith("exchange savedmodel") for p in points) and any("student.keras" in p for p in points)
    for kill_at in range(1, len(points) + 1):
        with pytest.raises(Killed):
            run(kill_at)
        assert _intact(out) == 3, f"killed before {points[kill_at - 1]}"


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
