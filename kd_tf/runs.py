"""What every job shares: its run folder, atomic JSON reports, the cosine optimizer, the
epoch plan, the standard callbacks and resuming after an interruption.

A run writes its artifacts and report to `runs/<run>`, its TensorBoard logs to
`tensorboard_logs/<run>`, and resumes from its last completed epoch when rerun with the same name.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path

import keras
import tensorflow as tf
import numpy as np

from kd_tf import config as cfg
from kd_tf.atomic import write_text_atomically
from kd_tf import distribute
from kd_tf.callbacks import ImageGridCallback, StopAtStep, StopOnNonFiniteLoss, restore_point
from kd_tf.errors import InputError

log = logging.getLogger(__name__)


class RunPaths:
    """The folders of one run: artifacts in runs/<name>, TensorBoard logs in tensorboard_logs/<name>.

    On a multi-worker run's other workers (chief=False) artifacts and logs go to a scratch folder
    removed at exit; `backup` stays the chief's, which every worker restores from."""

    def __init__(self, output: cfg.OutputConfig, verb: str, chief: bool = True):
        self.name = output.run_name or f"{verb}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        self.root = Path(output.runs_dir) / self.name
        self.logs = Path(output.log_dir) / self.name
        self.backup = self.root / "backup"
        self.chief = chief
        if not chief:
            scratch = Path(distribute.scratch_dir())
            self.root, self.logs = scratch / "runs" / self.name, scratch / "logs" / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, payload: dict) -> Path:
        return write_json(self.root / name, payload)


def write_json(path: Path, payload: dict) -> Path:
    """Writes `payload` next to `path` first, then renames: a killed job never leaves half a report."""
    return write_text_atomically(path, json.dumps(payload, indent=2, default=_jsonable))


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of an image's 8-bit pixels and shape: the same photo gives the same digest whatever
    its file name or float storage, so a split can be checked by content."""
    pixels = np.round(np.clip(np.asarray(image, np.float32), 0, 1) * 255).astype(np.uint8)
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def split_record(sets: dict[str, dict]) -> dict:
    """{set name: {image name: digest}} of a run's images (train, heldout, heldout2)."""
    return {name: {image: image_digest(array) for image, array in sorted(images.items())}
            for name, images in sets.items()}


def record_split(paths: "RunPaths", sets: dict[str, dict]) -> dict:
    """Saves the run's split as runs/<run>/split.json, or checks that a resumed run has the split it
    started with: a changed folder, fraction or seed would otherwise reshuffle it silently and
    score images the model trained on."""
    record = split_record(sets)
    path = paths.root / "split.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != record:
            changed = sorted(name for name in set(saved) | set(record) if saved.get(name) != record.get(name))
            raise InputError(f"run {paths.name!r} was started on another split of the images ({', '.join(changed)} "
                             f"differ from {path}); resume it with the data settings it started with, or "
                             f"start a new run with another --run-name")
    elif paths.chief:
        write_json(path, record)
    return record


TRAINING_SECTIONS = ("data", "train", "net", "student", "distill", "assistant", "finetune", "init_from")


def record_config(paths: "RunPaths", config: dict, defaults: dict | None = None) -> None:
    """Saves what decides a run's training (runs/<run>/training_config.json), or checks that a rerun
    resuming it asks for the same: resuming with other data, steps or losses would silently mix two
    trainings. Evaluation and output settings may change between reruns; a key added to kd_tf after
    the run started is no change while it is asked at its default (`defaults`, the job's defaults)."""
    training = {key: config[key] for key in TRAINING_SECTIONS if key in config}
    path = paths.root / "training_config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [f"{section}.{key}" for section in sorted(set(saved) | set(training))
                   for key in _diff(saved.get(section), training.get(section), (defaults or {}).get(section))]
        if changed:
            raise InputError(f"run {paths.name!r} was started with other training settings ({', '.join(changed[:6])} "
                             f"differ from {path}); rerun with the same settings to resume it, or give a new "
                             f"--run-name")
    elif paths.chief:
        write_json(path, training)


def _diff(saved, asked, defaults=None) -> list[str]:
    saved, asked, defaults = json.loads(json.dumps([saved, asked, defaults], default=_jsonable))
    if isinstance(saved, dict) and isinstance(asked, dict):
        added = {key for key in set(asked) - set(saved)
                 if isinstance(defaults, dict) and key in defaults and asked[key] == defaults[key]}
        return [key for key in sorted(set(saved) | set(asked) - added) if saved.get(key) != asked.get(key)]
    return [] if saved == asked else ["(value)"]


def trained_on(model_path: str | os.PathLike, heldout: dict[str, np.ndarray]) -> list[str]:
    """The held-out images that the model at `model_path` trained on, by content, according to the
    split.json of its run folder ([] when the model has none, e.g. a shipped or foreign model)."""
    record = Path(model_path).parent / "split.json"
    if not record.is_file():
        return []
    trained = set(json.loads(record.read_text()).get("train", {}).values())
    return sorted(name for name, image in heldout.items() if image_digest(image) in trained)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def cosine_optimizer(train: cfg.TrainConfig) -> keras.optimizers.Optimizer:
    """Adam with cosine decay over the whole step budget (the schedule resumes with the step)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        train.learning_rate, decay_steps=train.steps, alpha=train.final_learning_rate_fraction)
    return keras.optimizers.Adam(schedule)


def epochs_for(train: cfg.TrainConfig) -> tuple[int, int]:
    """(epochs, steps_per_epoch) covering at least `train.steps` steps."""
    per_epoch = min(train.steps_per_epoch, train.steps)
    return -(-train.steps // per_epoch), per_epoch


def standard_callbacks(paths: RunPaths, val_noisy, val_clean, output: cfg.OutputConfig, tag: str, steps: int):
    """TensorBoard scalars, image grids, BackupAndRestore so a killed run resumes, and a stop after
    exactly `steps` steps (the epochs may round the budget up)."""
    spread = max(1, len(val_clean) // 6)                 # grid rows from as many held-out photos as possible
    rows = tf.nest.map_structure(lambda a: a[::spread], val_noisy)   # images, or (images, noise level)
    return [
        keras.callbacks.TensorBoard(log_dir=str(paths.logs / tag), update_freq="epoch", write_graph=False),
        ImageGridCallback(rows, val_clean[::spread], paths.logs / tag / "images",
                          every=output.image_grid_every),
        distribute.BackupAndRestore(str(paths.backup / tag), chief=paths.chief, delete_checkpoint=False,
                                    keep=2),   # a corrupt newest checkpoint falls back one epoch
        StopOnNonFiniteLoss(paths.backup / tag),
        StopAtStep(steps),
    ]


def resumed_batches(backup_dir: Path, steps_per_epoch: int) -> int:
    """Batches a run already trained on (0 for a new run), so its data stream continues where it
    stopped instead of replaying the first batches. It comes from the checkpoint that
    BackupAndRestore restores (kd_tf.callbacks.restore_point), never from a separate record."""
    point = restore_point(backup_dir)
    if point.epoch:
        log.info("resuming %s after epoch %d (%s)", Path(backup_dir).name, point.epoch, point.weights.name)
    return point.epoch * steps_per_epoch


def worker_report(paths: RunPaths, job: str, history: dict) -> dict:
    """What a multi-worker run's other workers return: the chief evaluates, saves and reports."""
    return {"job": job, "run": paths.name, "history": history, "report_path": None,
            "table": f"{job}: this worker trained in sync with the chief, which writes the run folder"}
