"""Keras callbacks: TensorBoard image grids of fixed validation crops."""

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
