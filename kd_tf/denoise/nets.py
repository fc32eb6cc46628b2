"""Residual U-Net denoisers: one builder for the teacher and the whole student family.

The network predicts the noise residual (output = input + correction), which converges far
faster than predicting the clean image directly (DnCNN's observation). Levels are named
`enc{i}`, `bottleneck`, `dec{i}` in teacher and student alike, so feature pairs line up by name.
"""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers

from kd_tf.layers import DepthToSpace, SpaceToDepth

MIXED = "mixed_bfloat16"


def _residual_block(x, width, name, dtype):
    """x + conv(relu(conv(x))): EDSR-style, no normalisation, so it quantizes cleanly."""
    y = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"{name}_conv1", dtype=dtype)(x)
    y = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2", dtype=dtype)(y)
    return layers.Add(name=f"{name}_add", dtype=dtype)([x, y])


def _pointwise_block(x, width, hidden, name, dtype):
    """x + conv1x1(relu(conv1x1(x))) through `hidden` channels: per-pixel capacity at 2 * width *
    hidden MACs per value, a fraction of a 3x3 block's 18 * width ** 2 when hidden is a few widths.
    Named like a residual block (conv1 reads the stream, conv2 writes into it), so channel
    equalization and growing a trained student treat it as one."""
    y = layers.Conv2D(hidden, 1, activation="relu", name=f"{name}_conv1", dtype=dtype)(x)
    y = layers.Conv2D(width, 1, name=f"{name}_conv2", dtype=dtype)(y)
    return layers.Add(name=f"{name}_add", dtype=dtype)([x, y])


def _blocks(x, width, count, name, dtype, pointwise: int = 0):
    for j in range(count):
        x = _residual_block(x, width, f"{name}_block{j}", dtype)
    if pointwise:
        x = _pointwise_block(x, width, pointwise, f"{name}_block{count}", dtype)
    return layers.Activation("linear", name=name, dtype=dtype)(x)


def _context_vector(level_outputs, width: int, dtype):
    """relu(sum over levels l of conv1x1_l(mean over the image of level l's stream)): what the whole
    image says (its noise level above all) in `width` numbers. One 1x1 convolution per pooled level,
    named context_from{l}, so each reads one stream (channel equalization scales its input rows)."""
    projected = [layers.Conv2D(width, 1, name=f"context_from{level}", dtype=dtype)(
        layers.GlobalAveragePooling2D(keepdims=True, name=f"pool{level}", dtype=dtype)(tensor))
        for level, tensor in level_outputs]
    total = projected[0] if len(projected) == 1 else layers.Add(name="context_sum", dtype=dtype)(projected)
    return layers.Activation("relu", name="context", dtype=dtype)(total)


def _modulate(x, context, width: int, level: int, dtype):
    """x * scale(context) + shift(context), per channel (FiLM, Perez et al. 2018). Both 1x1
    convolutions start at zero kernels with biases 1 and 0, so a network gains the modulation as an
    identity and computes what it did before, then learns it."""
    scale = layers.Conv2D(width, 1, kernel_initializer="zeros", bias_initializer="ones", name=f"film{level}_scale",
                          dtype=dtype)(context)
    shift = layers.Conv2D(width, 1, kernel_initializer="zeros", name=f"film{level}_shift", dtype=dtype)(context)
    scaled = layers.Multiply(name=f"film{level}_mul", dtype=dtype)([x, scale])
    return layers.Add(name=f"film{level}", dtype=dtype)([scaled, shift])


def build_unet(widths=(32, 64, 128, 256), blocks=2, channels: int = 3, name: str = "unet",
               mixed_precision: bool | str = False, unshuffle: int = 1, global_context: int = 0,
               pointwise=0) -> keras.Model:
    """A residual U-Net for images of any size divisible by unshuffle * 2 ** (len(widths) - 1).

    widths: channels per level, the first level's resolution first; blocks: residual blocks per level (an
    int, or one int per level). `unshuffle` 2 runs the whole U-Net at half resolution on the
    pixel-unshuffled image (FFDNet's trick, Zhang et al. 2018) and pixel-shuffles the correction back:
    per pixel, a first level of w channels then costs what w / 2 channels cost at full resolution, so a
    budget buys twice the width everywhere (and int8 kernels, which pay only from about 24 channels,
    run on wider tensors). `mixed_precision` computes in bfloat16 (True) or float16
    ("float16") with float32 weights and a float32 output; the weights are the same either way, so a bf16-trained model can be
    rebuilt in float32 with `set_weights` for export. `global_context` > 0 gives a blind denoiser what
    a told one gets as an input, the image's noise level: the means over the whole image of the first
    level's and the bottleneck's streams become a vector of that many numbers, which scales and shifts
    every decoder level's channels (FiLM); its 1x1 convolutions run once per image (4 k MACs for
    11-22-44-88 with 16), its multiplies and adds on every decoder value (free by the MAC convention).
    `pointwise` > 0 ends each decoder level and the bottleneck with one residual block of two 1x1
    convolutions through that many channels (an int for every level, or one per level; 0: none):
    per-pixel capacity for few MACs, e.g. 80 at the second level of 11-22-44-88 costs 880 MACs per
    pixel.

    >>> build_unet((8, 16), 1, unshuffle=2).get_layer("tail").output.shape
    (None, None, None, 12)
    >>> pointwise_of(build_unet((8, 16, 32), 1, pointwise=[0, 24, 0]))
    (0, 24, 0)
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths={widths!r}; accepted: at least two positive ints")
    per_level = (blocks,) * len(widths) if isinstance(blocks, int) else tuple(blocks)
    if len(per_level) != len(widths) or min(per_level) < 1:
        raise ValueError(f"blocks={blocks!r}; accepted: a positive int or one per level ({len(widths)})")
    if unshuffle not in (1, 2, 4):
        raise ValueError(f"unshuffle={unshuffle!r}; accepted: 1 (full resolution), 2 or 4")
    if type(global_context) is not int or global_context < 0:
        raise ValueError(f"global_context={global_context!r}; accepted: an int >= 0 (0: none)")
    hidden = (pointwise,) * len(widths) if isinstance(pointwise, int) else tuple(pointwise)
    if len(hidden) != len(widths) or any(type(h) is not int or h < 0 for h in hidden):
        raise ValueError(f"pointwise={pointwise!r}; accepted: an int >= 0 or one per level ({len(widths)}), 0: none")
    dtype = "mixed_float16" if mixed_precision == "float16" else MIXED if mixed_precision else "float32"

    inputs = keras.Input(shape=(None, None, channels), name="noisy")
    x = inputs if unshuffle == 1 else SpaceToDepth(unshuffle, name="unshuffle", dtype=dtype)(inputs)
    x = layers.Conv2D(widths[0], 3, padding="same", name="head", dtype=dtype)(x)
    skips = []
    for i, width in enumerate(widths[:-1]):
        x = _blocks(x, width, per_level[i], f"enc{i}", dtype)
        skips.append(x)
        x = layers.Conv2D(widths[i + 1], 3, strides=2, padding="same", name=f"down{i}", dtype=dtype)(x)
    x = _blocks(x, widths[-1], per_level[-1], "bottleneck", dtype, hidden[-1])
    if global_context:
        context = _context_vector([(0, skips[0]), (len(widths) - 1, x)], global_context, dtype)
    for i in reversed(range(len(widths) - 1)):
        x = layers.Conv2DTranspose(widths[i], 2, strides=2, name=f"up{i}", dtype=dtype)(x)
        x = layers.Add(name=f"skip{i}", dtype=dtype)([x, skips[i]])
        x = _blocks(x, widths[i], per_level[i], f"dec{i}", dtype, hidden[i])
        if global_context:
            x = _modulate(x, context, widths[i], i, dtype)
    correction = layers.Conv2D(channels * unshuffle ** 2, 3, padding="same", name="tail", dtype="float32")(x)
    if unshuffle > 1:
        correction = DepthToSpace(unshuffle, name="shuffle", dtype="float32")(correction)
    outputs = layers.Add(name="denoised", dtype="float32")([inputs, correction])
    return keras.Model(inputs, outputs, name=name)


def unet_levels(model: keras.Model) -> int:
    """How many resolution levels a build_unet network has (its stride-2 `down` convolutions + 1)."""
    return 1 + sum(1 for layer in model.layers if layer.name.startswith("down"))


def unshuffle_of(model: keras.Model) -> int:
    """The pixel-unshuffle factor in front of a build_unet network (1: it runs at full resolution)."""
    return next((layer.block_size for layer in model.layers if isinstance(layer, SpaceToDepth)), 1)


def global_context_of(model: keras.Model) -> int:
    """The width of a build_unet network's global context vector (0: it has none)."""
    names = {layer.name for layer in model.layers}
    return int(model.get_layer("context_from0").filters) if "context_from0" in names else 0


_POINTWISE_CONV1 = re.compile(r"(bottleneck|dec(\d+))_block\d+_conv1")


def pointwise_of(model: keras.Model) -> tuple[int, ...]:
    """Per level, the hidden width of a build_unet network's pointwise block (0: none)."""
    levels = unet_levels(model)
    found = [0] * levels
    for layer in model.layers:
        match = _POINTWISE_CONV1.fullmatch(layer.name)
        if match and tuple(layer.kernel_size) == (1, 1):
            found[levels - 1 if match.group(1) == "bottleneck" else int(match.group(2))] = int(layer.filters)
    return tuple(found)


def has_unet_streams(model: keras.Model) -> bool:
    """Whether `model` has build_unet's layer names, so equalize_channel_ranges applies."""
    names = {layer.name for layer in model.layers}
    levels = unet_levels(model)
    return {"head", "tail", "denoised"} <= names and all(
        f"down{i}" in names and f"up{i}" in names and f"skip{i}" in names for i in range(levels - 1))


def _stream_layers(model: keras.Model, level: int, levels: int):
    """The layers writing into (outputs add into) and reading from level `level`'s feature stream,
    and the tensors that carry it. Encoder and decoder streams of a level share one channel
    basis, because the skip connection adds one into the other."""
    names = {layer.name for layer in model.layers}
    writers = [("head" if level == 0 else f"down{level - 1}", "conv")]
    readers = [("tail", "conv") if level == 0 else (f"up{level - 1}", "transpose")]
    carriers = [writers[0][0]]
    prefixes = ["bottleneck"] if level == levels - 1 else [f"enc{level}", f"dec{level}"]
    if level < levels - 1:
        writers.append((f"up{level}", "transpose"))
        readers.append((f"down{level}", "conv"))
        carriers.append(f"skip{level}")
    if f"context_from{level}" in names:             # the global context reads the stream's mean
        readers.append((f"context_from{level}", "conv"))
    if f"film{level}" in names:                     # FiLM: x * scale + shift; only the shift writes in the basis
        writers.append((f"film{level}_shift", "conv"))
        carriers += [f"film{level}_mul", f"film{level}"]
    for prefix in prefixes:
        j = 0
        while f"{prefix}_block{j}_conv1" in names:
            readers.append((f"{prefix}_block{j}_conv1", "conv"))
            writers.append((f"{prefix}_block{j}_conv2", "conv"))
            carriers.append(f"{prefix}_block{j}_add")
            j += 1
    return writers, readers, carriers


def _equalizing_scales(model: keras.Model, groups, batches, max_scale: float) -> list:
    """Per group of layers (whose outputs share channels), each channel's scale that brings its peak
    |activation| on `batches` up to the group's widest channel, at most `max_scale`."""
    names = [name for group in groups for name in group]
    taps = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    peaks = dict.fromkeys(names, 0.0)
    for batch in batches:
        for name, tensor in zip(names, taps(batch, training=False)):
            peaks[name] = np.maximum(peaks[name], np.max(np.abs(np.asarray(tensor, np.float32)), axis=(0, 1, 2)))
    scales = []
    for group in groups:
        peak = np.max([peaks[name] for name in group], axis=0)
        scales.append(np.clip(np.max(peak) / np.maximum(peak, 1e-8), 1.0, max_scale).astype(np.float32))
    return scales


def equalize_channel_ranges(model: keras.Model, batches, max_scale: float = 16.0) -> keras.Model:
    """Rescales each level's feature channels so they all span the widest channel's range.

    int8 quantization gives each tensor one range; a channel that spans a tenth of it keeps only
    a few levels. Every stream of a build_unet network is linear in its channels (convolutions
    write into it and read from it, additions merge it), so scaling channel c by s_c in every
    writer and by 1 / s_c in every reader leaves the float function unchanged (Nagel et al.
    2019, cross-layer equalization) while the quantized one keeps more levels. Changes `model`'s
    weights in place and returns it; `batches` are float inputs drawn as in training.
    """
    levels = unet_levels(model)
    streams = [_stream_layers(model, level, levels) for level in range(levels)]
    scales = _equalizing_scales(model, [carriers for _, _, carriers in streams], batches, max_scale)
    for (writers, readers, _), scale in zip(streams, scales):
        for name, kind in writers:                   # output channels: conv (..., out), transpose (.., out, in)
            kernel, bias = model.get_layer(name).get_weights()
            kernel = kernel * (scale if kind == "conv" else scale[:, None])
            model.get_layer(name).set_weights([kernel, bias * scale])
        for name, kind in readers:                   # input channels: conv (.., in, out), transpose (..., in)
            kernel, bias = model.get_layer(name).get_weights()
            kernel = kernel / (scale[:, None] if kind == "conv" else scale)
            model.get_layer(name).set_weights([kernel, bias])
    return model


def float32_copy(model: keras.Model, widths, blocks) -> keras.Model:
    """The same U-Net computing in float32 (for export and evaluation after bf16 training)."""
    copy = build_unet(widths, blocks, channels=model.input_shape[-1], name=model.name, mixed_precision=False,
                      unshuffle=unshuffle_of(model), global_context=global_context_of(model),
                      pointwise=pointwise_of(model))
    copy.set_weights(model.get_weights())
    return copy


def equalize_block_channels(model: keras.Model, batches, max_scale: float = 16.0) -> keras.Model:
    """Rescales each residual block's inner channels (conv1's ReLU outputs, conv2's inputs) so
    they all span the widest one's range, as `equalize_channel_ranges` does for the streams:
    ReLU commutes with a positive scale, so the float function is unchanged. Changes `model`'s
    weights in place and returns it."""
    pairs = [(layer.name, layer.name[:-1] + "2") for layer in model.layers
             if layer.name.endswith("_conv1") and isinstance(layer, layers.Conv2D)]
    if not pairs:
        return model
    scales = _equalizing_scales(model, [[first] for first, _ in pairs], batches, max_scale)
    for (first, second), scale in zip(pairs, scales):
        kernel, bias = model.get_layer(first).get_weights()
        model.get_layer(first).set_weights([kernel * scale, bias * scale])
        kernel, bias = model.get_layer(second).get_weights()
        model.get_layer(second).set_weights([kernel / scale[:, None], bias])
    return model


def unet_equalizer(model: keras.Model, blocks: bool = False):
    """`equalize_channel_ranges` for kd_tf.export.int8_ready / dynamic_ready when `model` is one
    of build_unet's U-Nets (their layer names tell the streams apart), else None: nothing to
    equalize. `blocks`: the residual blocks' inner channels too (`equalize_block_channels`; the
    dynamic-range export uses it, the full-integer one was calibrated without)."""
    if not has_unet_streams(model):
        return None
    if not blocks:
        return equalize_channel_ranges

    def both(copy, batches):
        return equalize_block_channels(equalize_channel_ranges(copy, batches), batches)

    return both
