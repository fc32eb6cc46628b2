"""Keras callbacks: TensorBoard image grids of fixed validation crops, a stop on divergence."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras


class ImageGridCallback(keras.callbacks.Callback):
    """Writes noisy | <model panels> | clean grids to TensorBoard every `every` epochs.

    The panels come from `model.panels(noisy)` when the model has one (the Distiller returns
    teacher and student), otherwise from `model(noisy)`. The crops are fixed, so the grids of
    successive epochs show the same content and progress is visible at a glance.
    """

    def __init__(self, noisy, clean, log_dir, every: int = 1, max_rows: int = 6, tag: str = "denoising"):
        super().__init__()
        self.noisy = np.asarray(noisy[:max_rows], np.float32)
        self.clean = np.asarray(clean[:max_rows], np.float32)
        self.every = max(1, int(every))
        self.tag = tag
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def _panels(self):
        if hasattr(self.model, "panels"):
            return self.model.panels(self.noisy)
        return {"output": self.model(self.noisy, training=False)}

    def grid(self, panels: dict) -> np.ndarray:
        """One image: a row per crop, columns noisy | panels | clean, with 2 px gutters."""
        columns = [self.noisy] + [np.asarray(p, np.float32) for p in panels.values()] + [self.clean]
        gutter = np.ones((self.noisy.shape[0], self.noisy.shape[1], 2, 3), np.float32)
        rows = np.concatenate([part for column in columns for part in (np.clip(column, 0, 1), gutter)][:-1], axis=2)
        return np.concatenate(list(rows), axis=0)[None]

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        panels = self._panels()
        names = " | ".join(["noisy", *panels, "clean"])
        with self._writer.as_default():
            tf.summary.image(self.tag, self.grid(panels), step=epoch + 1, description=names)
        self._writer.flush()


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
