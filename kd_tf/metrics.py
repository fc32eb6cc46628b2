"""Image-quality measures on float images in [0, 1]: PSNR and SSIM."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def psnr(clean, restored, max_val: float = 1.0):
    """Per-image PSNR in dB of a batch (NHWC) or single image; `restored` is clipped to [0, 1]."""
    restored = tf.clip_by_value(tf.cast(restored, tf.float32), 0.0, max_val)
    return tf.image.psnr(tf.cast(clean, tf.float32), restored, max_val=max_val)


def ssim(clean, restored, max_val: float = 1.0):
    """Per-image SSIM (Gaussian 11x11 window, averaged over channels) of a batch or single image."""
    restored = tf.clip_by_value(tf.cast(restored, tf.float32), 0.0, max_val)
    return tf.image.ssim(tf.cast(clean, tf.float32), restored, max_val=max_val)


def psnr_metric(y_true, y_pred):
    """`compile(metrics=[psnr_metric])` form: mean PSNR of the batch."""
    return tf.reduce_mean(psnr(y_true, y_pred))


psnr_metric.__name__ = "psnr"


def image_scores(clean: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of one HxWxC image pair, as Python floats."""
    return float(psnr(clean, restored).numpy()), float(ssim(clean, restored).numpy())
