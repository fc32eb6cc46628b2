"""The velocity-predicting U-Net: [noisy image, noise variance] -> predicted v (see schedule.predict).

Shaped after keras.io's DDIM example (residual blocks, a sinusoidal embedding of the noise
variance broadcast over the image), sized for 28x28 digits: levels at 28, 14 and 7 pixels.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from kd_tf.errors import InputError

EMBEDDING_MAX_FREQUENCY = 1000.0


@keras.saving.register_keras_serializable(package="kd_tf")
class SinusoidalEmbedding(layers.Layer):
    """Noise variance (batch, 1, 1, 1) -> (batch, 1, 1, dims) sines and cosines at log-spaced
    frequencies, so the network can tell nearby noise levels apart."""

    def __init__(self, dims: int = 32, **kwargs):
        super().__init__(**kwargs)
        if int(dims) < 2 or int(dims) % 2:
            raise InputError(f"embedding dims={dims!r}; accepted: an even int >= 2")
        self.dims = int(dims)

    def call(self, variance):
        frequencies = ops.exp(ops.linspace(math.log(1.0), math.log(EMBEDDING_MAX_FREQUENCY), self.dims // 2))
        angular = ops.cast(2.0 * math.pi * frequencies, variance.dtype)
        return ops.concatenate([ops.sin(angular * variance), ops.cos(angular * variance)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _residual(x, width, name):
    shortcut = x if x.shape[-1] == width else layers.Conv2D(width, 1, name=f"{name}_skip")(x)
    # group norm, not keras.io's batch norm: the same per sample in training and inference, so an
    # unrolled sampler (a student of several steps) sees no train/test gap
    x = layers.GroupNormalization(groups=_groups(x.shape[-1]), name=f"{name}_norm")(x)
    x = layers.Conv2D(width, 3, padding="same", activation="swish", name=f"{name}_conv1")(x)
    x = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2")(x)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def build_denoiser(image_size: int = 28, channels: int = 1, widths=(32, 64, 96), blocks: int = 2,
                   embedding_dims: int = 32, name: str = "denoiser") -> keras.Model:
    """A residual U-Net predicting the velocity v of a noisy image, told the noise variance.

    `image_size` must be divisible by 2 ** (len(widths) - 1) (28: three levels).

    >>> build_denoiser(28, 1, (8, 16), 1).output_shape
    (None, 28, 28, 1)
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or image_size % (2 ** (len(widths) - 1)):
        raise InputError(f"image_size={image_size}, widths={widths}; accepted: at least two levels and a size "
                         f"divisible by {2 ** (len(widths) - 1)}")
    noisy = keras.Input((image_size, image_size, channels), name="noisy")
    variance = keras.Input((1, 1, 1), name="noise_variance")
    embedding = SinusoidalEmbedding(embedding_dims, name="embedding")(variance)
    embedding = layers.UpSampling2D(image_size, interpolation="nearest", name="embedding_broadcast")(embedding)
    x = layers.Conv2D(widths[0], 1, name="head")(noisy)
    x = layers.Concatenate(name="with_embedding")([x, embedding])
    skips = []
    for level, width in enumerate(widths[:-1]):
        for block in range(blocks):
            x = _residual(x, width, f"down{level}_block{block}")
            skips.append(x)
        x = layers.AveragePooling2D(2, name=f"down{level}")(x)
    for block in range(blocks):
        x = _residual(x, widths[-1], f"middle_block{block}")
    for level in reversed(range(len(widths) - 1)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
        for block in range(blocks):
            x = layers.Concatenate(name=f"up{level}_skip{block}")([x, skips.pop()])
            x = _residual(x, widths[level], f"up{level}_block{block}")
    # zero-initialised output: an untrained network predicts v = 0, a stable start
    outputs = layers.Conv2D(channels, 1, kernel_initializer="zeros", name="velocity", dtype="float32")(x)
    return keras.Model([noisy, variance], outputs, name=name)
