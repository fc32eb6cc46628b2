"""Keras callbacks: TensorBoard image grids of fixed validation crops, generator metrics and sample
grids (FID/KID every N epochs), a stop on divergence."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras


def first_images(inputs):
    """The images in a model's inputs: the inputs themselves, the first of (images, noise level),
    or a Distiller batch's "inputs"."""
    if isinstance(inputs, dict):
        return inputs["inputs"]
    return inputs[0] if isinstance(inputs, (tuple, list)) else inputs


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
        """One image: a row per crop, columns noisy | panels | clean, with 2 px gutters."""
        columns = [self.noisy] + [np.asarray(p, np.float32) for p in panels.values()] + [self.clean]
        gutter = np.ones((self.noisy.shape[0], self.noisy.shape[1], 2, 3), np.float32)
        rows = np.concatenate([part for column in columns for part in (np.clip(column, 0, 1), gutter)][:-1], axis=2)
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
    to TensorBoard; warns when the samples look collapsed (kd_tf.gan_jobs.score_generator).

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

    def _generator(self):
        return getattr(self.model, "student", None) or self.model.generator

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
