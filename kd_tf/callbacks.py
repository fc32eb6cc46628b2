"""Keras callbacks: TensorBoard image grids of fixed validation crops, generator metrics and sample
grids (FID/KID every N epochs), a stop on divergence, checkpoints whose epoch travels with their weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from kd_tf.atomic import replace_durably, write_text_atomically

log = logging.getLogger(__name__)


def first_images(inputs):
    """The images in a model's inputs: the inputs themselves, the first of (images, noise level),
    or a Distiller batch's "inputs"."""
    if isinstance(inputs, dict):
        return inputs["inputs"]
    return inputs[0] if isinstance(inputs, (tuple, list)) else inputs


def _grid_column(images, height: int, width: int) -> np.ndarray:
    """A column of a grid: clipped to [0, 1], RGB, enlarged by whole factors to height x width."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] != (height, width):
        images = np.repeat(np.repeat(images, height // images.shape[1], axis=1), width // images.shape[2], axis=2)
    return images


class ImageGridCallback(keras.callbacks.Callback):
    """Writes noisy | <model panels> | clean grids to TensorBoard every `every` epochs.

    The panels come from `model.panels(noisy)` when the model has one (the Distiller returns
    teacher and student), otherwise from `model(noisy)`. The crops are fixed, so the grids of
    successive epochs show the same content and progress is visible at a glance.
    """

    def __init__(self, noisy, clean, log_dir, every: int = 1, max_rows: int = 6, tag: str = "denoising"):
        super().__init__()
        # `noisy` is what the model takes: images, (images, noise level), or a Distiller's
        # {"inputs": images, "teacher_inputs": ...}; the grid's first column shows the images
        self.inputs = tf.nest.map_structure(lambda a: np.asarray(a[:max_rows], np.float32), noisy)
        self.noisy = first_images(self.inputs)
        self.clean = np.asarray(clean[:max_rows], np.float32)
        self.every = max(1, int(every))
        self.tag = tag
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def _panels(self):
        if hasattr(self.model, "panels"):
            return self.model.panels(self.inputs)
        return {"output": self.model(self.inputs, training=False)}

    def grid(self, panels: dict) -> np.ndarray:
        """One image: a row per crop, columns noisy | panels | clean, with 2 px gutters. Gray
        columns become RGB and an upscaler's small inputs are enlarged (nearest neighbour) to its
        outputs' size, so every task's grid lines up."""
        columns = [self.noisy] + [np.asarray(p, np.float32) for p in panels.values()] + [self.clean]
        height, width = max(c.shape[1] for c in columns), max(c.shape[2] for c in columns)
        columns = [_grid_column(c, height, width) for c in columns]
        gutter = np.ones((self.noisy.shape[0], height, 2, 3), np.float32)
        rows = np.concatenate([part for column in columns for part in (column, gutter)][:-1], axis=2)
        return np.concatenate(list(rows), axis=0)[None]

    def on_train_end(self, logs=None):
        self._writer.close()             # flushes and releases the event file (one per fit)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        panels = self._panels()
        names = " | ".join(["noisy", *panels, "clean"])
        with self._writer.as_default():
            tf.summary.image(self.tag, self.grid(panels), step=epoch + 1, description=names)
        self._writer.flush()


class StopAtStep(keras.callbacks.Callback):
    """Ends fit() after exactly `steps` optimizer steps, mid-epoch if need be.

    Epochs of steps_per_epoch round a budget up (--steps 400 with 250 per epoch ran 500 while the
    learning-rate schedule decayed over 400); the last epoch is cut short instead, and still
    validates and checkpoints (Keras runs on_epoch_end after the break).
    """

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)

    def on_train_batch_end(self, batch, logs=None):
        if int(np.asarray(self.model.optimizer.iterations)) >= self.steps:
            self.model.stop_training = True


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite during training."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first step whose logged terms are not finite, naming the step and the terms.

    keras.callbacks.TerminateOnNaN only sets `stop_training`, so the job goes on to save and
    export a broken model. This raises instead: nothing after fit() runs, the last
    BackupAndRestore checkpoint (the end of the last good epoch) stays the newest, and the CLI
    exits non-zero with this message.
    """

    def __init__(self, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, batch, logs=None):
        bad = {key: float(value) for key, value in (logs or {}).items()
               if np.ndim(value) == 0 and not np.isfinite(float(value))}
        if bad:
            step = int(np.asarray(self.model.optimizer.iterations))
            where = f"; the last good checkpoint is in {self.checkpoint_dir}" if self.checkpoint_dir else ""
            terms = ", ".join(f"{key}={value}" for key, value in bad.items())
            raise TrainingDiverged(f"training diverged at step {step}: {terms}{where}. Lower "
                                   f"train.learning_rate or check the data, then rerun the same command to resume")


def digit_grid(images, columns: int) -> np.ndarray:
    """N x 28 x 28 x 1 images in [-1, 1] -> one gray image in [0, 1], `columns` per row, 2 px gutters."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)[..., 0]
    rows = -(-len(images) // columns)
    size = images.shape[1]
    grid = np.ones((rows * (size + 2) - 2, columns * (size + 2) - 2), np.float32)
    for index, image in enumerate(images):
        top, left = (index // columns) * (size + 2), (index % columns) * (size + 2)
        grid[top:top + size, left:left + size] = image
    return grid


def side_by_side(panels: dict, columns: int) -> np.ndarray:
    """Grids of each panel (teacher | student), separated by a 6 px black bar."""
    grids = [digit_grid(images, columns) for images in panels.values()]
    bar = np.zeros((grids[0].shape[0], 6), np.float32)
    return np.concatenate([part for grid in grids for part in (grid, bar)][:-1], axis=1)


class GeneratorMetricsCallback(keras.callbacks.Callback):
    """Every `every` epochs: FID, KID, precision/recall/coverage of the trained generator against
    the real digits' features, and a fixed-z grid of teacher | student (or the generator alone)
    to TensorBoard; warns when the samples look collapsed (kd_tf.generators.Scorer).

    `score(generate)` does the scoring (features, real statistics, collapse check); the latents
    of the grid are fixed, so successive epochs show the same z.
    """

    def __init__(self, score, grid_latents, log_dir, every: int = 1, columns: int = 8):
        super().__init__()
        self.score = score
        self.grid_latents = np.asarray(grid_latents, np.float32)
        self.every, self.columns = max(1, int(every)), columns
        self._writer = tf.summary.create_file_writer(str(log_dir))
        self.history = []

    def on_train_end(self, logs=None):
        self._writer.close()

    def _generator(self):     # a Distiller's student, else the generator's moving average if kept, else it
        return (getattr(self.model, "student", None) or getattr(self.model, "ema_generator", None)
                or self.model.generator)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        generator = self._generator()
        scores = self.score(lambda z: generator(z, training=False))
        panels = self.model.panels(self.grid_latents)
        with self._writer.as_default():
            for key in ("fid", "kid", "precision", "recall", "coverage", "diversity_ratio"):
                tf.summary.scalar(f"generator/{key}", scores[key], step=epoch + 1)
            tf.summary.image("samples", side_by_side(panels, self.columns)[None, ..., None], step=epoch + 1,
                             description=" | ".join(panels))
        self._writer.flush()
        self.history.append({"epoch": epoch + 1, **scores})
        if logs is not None:
            logs.update({f"val_{key}": scores[key] for key in ("fid", "kid")})


# -- checkpoints a kill cannot misalign ---------------------------------------------------------

_CHECKPOINT = re.compile(r"epoch-(\d+)\.weights\.h5")
METADATA = "training_metadata.json"


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}.weights.h5"


@dataclasses.dataclass(frozen=True)
class RestorePoint:
    """The checkpoint a run resumes from: the epochs it completed and the weights file (None: a new run)."""

    epoch: int
    weights: Path | None


def _unreadable(path: Path) -> str | None:
    """Why an HDF5 weights file cannot be restored (every dataset is read), or None."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            file.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception as error:                       # h5py raises OSError, KeyError, RuntimeError...
        return f"{type(error).__name__}: {error}"
    return None


def _legacy_points(backup_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, weights) pairs of keras.callbacks.BackupAndRestore's own layout, left by earlier
    versions (latest.weights.h5 + training_metadata.json, and their .bkp copies)."""
    points = []
    for suffix in ("", ".bkp"):
        weights, metadata = backup_dir / f"latest.weights.h5{suffix}", backup_dir / f"{METADATA}{suffix}"
        if not weights.is_file():
            continue
        try:
            points.append((int(json.loads(metadata.read_text())["epoch"]), weights))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring %s: its epoch record %s is unreadable (%s)", weights, metadata, error)
    return points


def restore_point(backup_dir) -> RestorePoint:
    """The newest whole checkpoint in `backup_dir`. Its epoch is in its file name, so the data
    stream's offset and the restored weights always come from the same file; a torn or corrupt
    file is skipped with a warning (the run redoes that epoch), a torn metadata file is not needed."""
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return RestorePoint(0, None)
    points = [(int(m.group(1)), 1, path) for path in backup_dir.iterdir()
              if (m := _CHECKPOINT.fullmatch(path.name))]
    points += [(epoch, 0, path) for epoch, path in _legacy_points(backup_dir)]
    for epoch, _, path in sorted(points, reverse=True):
        problem = _unreadable(path)
        if problem is None:
            return RestorePoint(epoch, path)
        log.warning("checkpoint %s is unreadable (%s); falling back to the one before", path, problem)
    return RestorePoint(0, None)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore whose checkpoint is one file named after its epoch.

    Keras writes the weights, then the epoch in a second file, each in place: a kill between the
    two reran an epoch, a torn epoch file made the run unresumable, and its fallback to the
    previous weights left the data stream (read before fit) an epoch ahead. Here the weights are
    written beside, fsynced and renamed to epoch-NNNNN.weights.h5, so a checkpoint exists whole
    or not at all and carries its epoch; `restore_point` picks it both for the data offset
    (kd_tf.runs.resumed_batches) and for the weights. The last `keep` checkpoints are kept, so a
    corrupt newest one falls back to the one before. training_metadata.json is written after, for
    people and tools; nothing reads it back. Saves once per epoch.
    """

    def __init__(self, backup_dir, delete_checkpoint: bool = True, keep: int = 2, **kwargs):
        kwargs.pop("double_checkpoint", None)        # always: `keep` checkpoints
        if kwargs.get("save_freq", "epoch") != "epoch":
            raise ValueError("kd_tf's BackupAndRestore saves once per epoch (save_freq='epoch')")
        super().__init__(backup_dir, delete_checkpoint=delete_checkpoint, **kwargs)
        self.keep = max(1, int(keep))
        self.restored = RestorePoint(0, None)

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        if not self.model.built:
            raise ValueError(f"To use the BackupAndRestore callback, the model must be built before fit(); "
                             f"{self.model} is not")
        self.restored = point = restore_point(self.backup_dir)
        if point.weights is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        if point.weights.name.endswith(".weights.h5"):
            self.model.load_weights(str(point.weights))
        else:                                        # Keras' latest.weights.h5.bkp: load_weights wants the ending
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory() as scratch:
                copy = Path(scratch) / "restored.weights.h5"
                shutil.copyfile(point.weights, copy)
                self.model.load_weights(str(copy))
        self.model._initial_epoch = point.epoch

    def _save_model(self):
        self._save_into(Path(self.backup_dir), prune=True)

    def _save_into(self, directory: Path, prune: bool):
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / checkpoint_name(self._current_epoch)
        partial = directory / f".partial-{final.name}"          # save_weights needs the .weights.h5 ending
        self.model.save_weights(str(partial), overwrite=True)
        replace_durably(partial, final)                        # the checkpoint is committed here
        write_text_atomically(directory / METADATA, json.dumps(
            {"epoch": self._current_epoch, "batch": 0, "weights": final.name}))
        if prune:
            numbered = sorted((int(m.group(1)), path) for path in directory.iterdir()
                              if (m := _CHECKPOINT.fullmatch(path.name)))
            for _, old in numbered[:-self.keep]:
                old.unlink(missing_ok=True)
            for stale in directory.glob(".partial-*"):          # left by a kill mid-write
                stale.unlink(missing_ok=True)
