"""Image-quality measures: PSNR and SSIM (float images in [0, 1]); FID, KID, precision/recall,
coverage and a mode-collapse check for generators, all in a feature space given as arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from kd_tf.errors import InputError


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


# -- generators: distances between feature distributions -----------------------------------------
# Features come from the digit classifier's penultimate layer (kd_tf.classifier), not from
# Inception-v3: the numbers are comparable between models scored here, not with published FIDs.

def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID (Heusel et al., 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2), in float64."""
    from scipy import linalg

    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    import warnings

    with warnings.catch_warnings():          # singular products (a collapsed generator): handled below
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(s_r @ s_f)
        if not np.all(np.isfinite(root)):    # the usual epsilon on the diagonal
            offset = np.eye(len(s_r)) * 1e-6
            root = linalg.sqrtm((s_r + offset) @ (s_f + offset))
    root = np.real(root)
    return float(np.sum((mu_r - mu_f) ** 2) + np.trace(s_r) + np.trace(s_f) - 2.0 * np.trace(root))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 10, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al., 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and std
    over `subsets` random subsets of `subset_size` (capped by the smaller set)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise InputError(f"KID needs at least 2 samples per set, got {len(real)} real and {len(fake)} generated")
    rng, dim, values = np.random.default_rng(seed), real.shape[1], []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        off = size * (size - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _pairwise(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def precision_recall_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision and recall (Kynkaanniemi et al., 2019: share of samples inside the other set's
    k-NN balls) and coverage (Naeem et al., 2020: share of real balls holding a sample)."""
    real_radius = np.sort(_pairwise(real, real), axis=1)[:, k]        # column 0 is the point itself
    fake_radius = np.sort(_pairwise(fake, fake), axis=1)[:, k]
    cross = _pairwise(real, fake)                                     # real x fake
    precision = float(np.mean(np.any(cross <= real_radius[:, None], axis=0)))
    recall = float(np.mean(np.any(cross <= fake_radius[None, :], axis=1)))
    coverage = float(np.mean(np.min(cross, axis=1) <= real_radius))
    return {"precision": precision, "recall": recall, "coverage": coverage}


def diversity(features: np.ndarray, pairs: int = 5000, seed: int = 0) -> float:
    """Mean feature distance between random pairs of different samples: near 0 when every sample
    is nearly the same image (mode collapse)."""
    features = np.asarray(features, np.float64)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(features), pairs), rng.integers(0, len(features), pairs)
    keep = i != j
    return float(np.mean(np.linalg.norm(features[i[keep]] - features[j[keep]], axis=1)))
