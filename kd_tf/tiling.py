"""`Tiled`: a model with a fixed input size, callable on images of any size.

Many published teachers were exported for one input size (a TFLite-converted network, a model
built on keras.Input((256, 256, 3))). Wrapped, such a teacher runs on overlapping tiles of its
size, blended with linear ramps, so the Distiller, the teacher cache and evaluation give it patches
and photos of any size. The tile positions are fixed by the image size, so inside fit() (where the
patch size is static) the loop unrolls into the graph.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.errors import InputError
from kd_tf.model_io import rebuild_wrapper


def fixed_size(model) -> int | None:
    """The side of a model's fixed square image input, None when its H and W are free."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    shape = shape[0] if isinstance(shape, list) else shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    if shape[1] != shape[2]:
        raise InputError(f"model {model.name!r} takes {shape[1]}x{shape[2]} images; tiling needs a square input")
    return int(shape[1])


def _starts(length: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _ramp(tile: int, overlap: int) -> np.ndarray:
    weights = np.ones(tile, np.float32)
    if overlap:
        rise = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
        weights[:overlap], weights[-overlap:] = rise, rise[::-1]
    return weights


@keras.saving.register_keras_serializable(package="kd_tf")
class Tiled(keras.Model):
    """`model` (fixed tile x tile input) on any image size: overlapping tiles, blended.

    >>> inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    >>> Tiled(inner, overlap=2)(np.zeros((1, 13, 20, 3), "float32")).shape
    TensorShape([1, 13, 20, 3])
    """

    def __init__(self, model: keras.Model, overlap: int = 16, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{model.name}_tiled", **kwargs)
        self.model = model
        self.tile = fixed_size(model)
        if self.tile is None:
            raise InputError(f"model {model.name!r} takes images of any size; it needs no tiling")
        self.overlap = int(min(max(overlap, 0), self.tile // 2))
        self.channels = model.input_shape[-1]
        out = model.output_shape
        self.scale = int(out[1] // self.tile)
        self.out_channels = int(out[-1])

    @property
    def input_shape(self):
        return (None, None, None, self.channels)

    @property
    def output_shape(self):
        return (None, None, None, self.out_channels)

    def call(self, images, training=False):
        images = tf.convert_to_tensor(images)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise InputError("Tiled needs images of a known size (fixed-size patches, or eager calls)")
        if (height, width) == (self.tile, self.tile):
            return self.model(images, training=training)
        tile, scale = self.tile, self.scale
        full_h, full_w = max(tile, height), max(tile, width)
        while images.shape[1] < full_h or images.shape[2] < full_w:     # smaller than a tile: mirror up to one
            grow_h = min(full_h - images.shape[1], images.shape[1])
            grow_w = min(full_w - images.shape[2], images.shape[2])
            images = tf.pad(images, [[0, 0], [0, grow_h], [0, grow_w], [0, 0]], mode="SYMMETRIC")
        window = np.outer(_ramp(tile * scale, self.overlap * scale), _ramp(tile * scale, self.overlap * scale))
        total, weight = 0.0, np.zeros((full_h * scale, full_w * scale), np.float32)
        for top in _starts(full_h, tile, tile - self.overlap):
            for left in _starts(full_w, tile, tile - self.overlap):
                out = tf.cast(self.model(images[:, top:top + tile, left:left + tile], training=training), tf.float32)
                y, x = top * scale, left * scale
                pads = [[0, 0], [y, full_h * scale - y - tile * scale], [x, full_w * scale - x - tile * scale], [0, 0]]
                total = total + tf.pad(out * window[None, :, :, None], pads)
                weight[y:y + tile * scale, x:x + tile * scale] += window
        blended = total / weight[None, :, :, None]
        return blended[:, :height * scale, :width * scale]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, self.out_channels)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "overlap": self.overlap}

    @classmethod
    def from_config(cls, config):
        return rebuild_wrapper(cls, config, "model")
