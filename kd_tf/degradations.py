"""What a restoration task undoes: the degradation that turns a clean patch into a student input.

A degradation maps one clean image (H x W x C, [0, 1]) and a stateless seed to its degraded
version; `scale` is how much larger the model's output is than its input (2 for 2x
super-resolution), so data, evaluation and inference know the target size. The same seed gives
the same degradation, so streams are reproducible and resumable.

>>> import numpy as np
>>> clean = np.random.default_rng(0).random((32, 32, 3)).astype("float32")
>>> [tuple(d.apply(clean, [1, 2]).shape) for d in (GaussianNoise(25), Downscale(2), JPEG(30), GaussianBlur(1.5))]
[(32, 32, 3), (16, 16, 3), (32, 32, 3), (32, 32, 3)]
>>> from_config({"kind": "downscale", "factor": 2}).scale
2
"""

from __future__ import annotations

import math

import tensorflow as tf

from kd_tf.errors import InputError


class Degradation:
    """The base class: `apply(clean, seed)` for one image; `scale` output side / input side."""

    kind = "base"
    scale = 1

    def apply(self, clean, seed):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"kind": self.kind}

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "kind")
        return f"{type(self).__name__}({arguments})"


def _uniform(seed, low, high):
    return tf.random.stateless_uniform([], seed, low, high) if high > low else tf.constant(float(low))


class GaussianNoise(Degradation):
    """Additive white Gaussian noise, sigma drawn per image from [sigma_min, sigma_max] (0-255)."""

    kind = "noise"

    def __init__(self, sigma_min: float, sigma_max: float | None = None):
        sigma_max = sigma_min if sigma_max is None else sigma_max
        if not 0 <= float(sigma_min) <= float(sigma_max):
            raise InputError(f"noise sigma range ({sigma_min}, {sigma_max}); accepted: 0 <= min <= max (0-255)")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def apply(self, clean, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        sigma = _uniform(seeds[0], self.sigma_min, self.sigma_max)
        clean = tf.convert_to_tensor(clean, tf.float32)
        return clean + sigma / 255.0 * tf.random.stateless_normal(tf.shape(clean), seeds[1])

    def get_config(self):
        return {"kind": self.kind, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class GaussianBlur(Degradation):
    """Isotropic Gaussian blur, its sigma (px) drawn per image, plus optional noise (0-255) on top:
    deblurring. The kernel spans +-3 sigma of the largest blur."""

    kind = "blur"

    def __init__(self, sigma_min: float, sigma_max: float | None = None, noise_sigma: float = 0.0):
        sigma_max = sigma_min if sigma_max is None else sigma_max
        if not 0 < float(sigma_min) <= float(sigma_max) or noise_sigma < 0:
            raise InputError(f"blur sigma range ({sigma_min}, {sigma_max}), noise_sigma={noise_sigma}; accepted: "
                             f"0 < min <= max (px), noise_sigma >= 0")
        self.sigma_min, self.sigma_max, self.noise_sigma = float(sigma_min), float(sigma_max), float(noise_sigma)
        self.radius = int(math.ceil(3 * self.sigma_max))

    def apply(self, clean, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        sigma = _uniform(seeds[0], self.sigma_min, self.sigma_max)
        taps = tf.range(-self.radius, self.radius + 1, dtype=tf.float32)
        line = tf.exp(-0.5 * tf.square(taps / sigma))
        line = line / tf.reduce_sum(line)
        clean = tf.convert_to_tensor(clean, tf.float32)
        channels = tf.shape(clean)[-1]
        padded = tf.pad(clean[None], [[0, 0], [self.radius] * 2, [self.radius] * 2, [0, 0]], mode="REFLECT")
        rows = tf.tile(tf.reshape(line, [-1, 1, 1, 1]), [1, 1, channels, 1])
        blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
        blurred = tf.nn.depthwise_conv2d(blurred, tf.transpose(rows, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")[0]
        if self.noise_sigma:
            blurred = blurred + self.noise_sigma / 255.0 * tf.random.stateless_normal(tf.shape(blurred), seeds[1])
        return blurred

    def get_config(self):
        return {"kind": self.kind, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "noise_sigma": self.noise_sigma}


class Downscale(Degradation):
    """Super-resolution's input: `tf.image.resize(clean, size // factor, "bicubic", antialias=True)`."""

    kind = "downscale"

    def __init__(self, factor: int = 2):
        if int(factor) < 2 or int(factor) != factor:
            raise InputError(f"downscale factor={factor!r}; accepted: an int >= 2")
        self.factor = self.scale = int(factor)

    def apply(self, clean, seed=None):
        clean = tf.convert_to_tensor(clean, tf.float32)
        size = tf.shape(clean)[-3:-1] // self.factor
        return tf.image.resize(clean, size, method="bicubic", antialias=True)

    def get_config(self):
        return {"kind": self.kind, "factor": self.factor}


class JPEG(Degradation):
    """JPEG compression artefacts, quality drawn per image from [quality_min, quality_max]."""

    kind = "jpeg"

    def __init__(self, quality_min: int, quality_max: int | None = None):
        quality_max = quality_min if quality_max is None else quality_max
        if not 1 <= int(quality_min) <= int(quality_max) <= 100:
            raise InputError(f"JPEG quality range ({quality_min}, {quality_max}); accepted: 1 <= min <= max <= 100")
        self.quality_min, self.quality_max = int(quality_min), int(quality_max)

    def apply(self, clean, seed):
        clean = tf.clip_by_value(tf.convert_to_tensor(clean, tf.float32), 0.0, 1.0)
        if self.quality_min == self.quality_max:
            return tf.image.adjust_jpeg_quality(clean, self.quality_min)
        return tf.image.stateless_random_jpeg_quality(clean, self.quality_min, self.quality_max + 1,
                                                      tf.cast(seed, tf.int32))

    def get_config(self):
        return {"kind": self.kind, "quality_min": self.quality_min, "quality_max": self.quality_max}


class AlreadyDegraded(Degradation):
    """The user's inputs are degraded already (real camera noise): nothing is added, and with no
    clean truth the teacher labels them (unlabeled distillation)."""

    kind = "none"

    def apply(self, clean, seed=None):
        return tf.convert_to_tensor(clean, tf.float32)


KINDS = {cls.kind: cls for cls in (GaussianNoise, GaussianBlur, Downscale, JPEG, AlreadyDegraded)}


def from_config(config: dict) -> Degradation:
    """The degradation a config names: {"kind": noise|blur|downscale|jpeg|none, ...its arguments}."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in KINDS:
        raise InputError(f"degradation kind {kind!r}; accepted: {', '.join(KINDS)}")
    try:
        return KINDS[kind](**config)
    except TypeError as error:
        raise InputError(f"degradation {kind!r} with {config}: {error}") from None
