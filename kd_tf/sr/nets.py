"""`build_upscaler`: residual blocks at the low resolution, a sub-pixel convolution up, and a
bilinear copy of the input added back, so the network learns only the missing detail
(ESPCN's sub-pixel layer, EDSR's blocks without batch norm). Every op is a TFLite builtin
(CONV_2D, DEPTH_TO_SPACE, RESIZE_BILINEAR, ADD), so the int8 export needs no custom op.
"""

from __future__ import annotations

import keras
from keras import layers

from kd_tf.errors import InputError
from kd_tf.layers import BilinearUpscale, DepthToSpace    # DepthToSpace: FFDNet's port uses it too


def build_upscaler(width: int = 32, blocks: int = 4, factor: int = 2, channels: int = 3,
                   name: str = "upscaler") -> keras.Model:
    """An image of any size in, `factor` times larger out; MACs grow with width^2 x blocks.

    >>> build_upscaler(8, 1, 2).output_shape
    (None, None, None, 3)
    >>> build_upscaler(8, 1, 2)(keras.ops.zeros((1, 5, 7, 3))).shape
    TensorShape([1, 10, 14, 3])
    """
    if int(width) < 1 or int(blocks) < 0 or int(factor) < 2:
        raise InputError(f"width={width}, blocks={blocks}, factor={factor}; accepted: width >= 1, blocks >= 0, "
                         f"factor >= 2")
    inputs = keras.Input((None, None, channels), name="low_resolution")
    x = head = layers.Conv2D(width, 3, padding="same", name="head")(inputs)
    for block in range(blocks):
        y = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{block}_conv1")(x)
        y = layers.Conv2D(width, 3, padding="same", name=f"block{block}_conv2")(y)
        x = layers.Add(name=f"block{block}_add")([x, y])
    x = layers.Add(name="body_skip")([x, head])
    x = layers.Conv2D(channels * factor ** 2, 3, padding="same", name="to_subpixels")(x)
    detail = DepthToSpace(factor, name="subpixel")(x)   # block_size = factor
    base = BilinearUpscale(factor, name="bilinear")(inputs)
    outputs = layers.Add(name="upscaled", dtype="float32")([base, detail])
    return keras.Model(inputs, outputs, name=name)
