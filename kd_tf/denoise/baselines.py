"""Classical denoisers the learned models are measured against: OpenCV NL-means and CBM3D."""

from __future__ import annotations

import cv2
import numpy as np


def nlmeans(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV `fastNlMeansDenoisingColored` on the 8-bit, clipped noisy image.

    Filter strength h = 0.6 * sigma (the best of 0.6/0.7/0.8/1.0 on chelsea at sigma 25) (0-255 scale) for luma and chroma, 7x7 patches, 21x21 search.
    """
    bgr = cv2.cvtColor(np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    strength = max(1.0, 0.6 * float(sigma))
    out = cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def cbm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """CBM3D (the `bm3d` package's `bm3d_rgb`), told the true noise sigma."""
    import bm3d

    return np.asarray(bm3d.bm3d_rgb(noisy.astype(np.float64), float(sigma) / 255.0), np.float32)


BASELINES = {"nlmeans": nlmeans, "cbm3d": cbm3d}
