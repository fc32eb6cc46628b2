"""Convolutions a dynamic-range int8 file keeps in float: selective quantization through the
converter's own rule.

TFLite's converter quantizes a kernel in dynamic-range mode only when it holds at least 1,024
weights (kd_tf.weight_rounding.MIN_ELEMENTS), and it has no per-layer switch. `keep_float`
computes each named convolution as groups of output channels with fewer weights each,
concatenated: the same function, and the converter leaves every group, and the input it reads,
in float. It is for the few layers whose input rounding costs most: on the denoising student the
first block's convolutions read the head's features, which on a bright flat image are a large
offset with small detail on it, and rounding them over [0, max] per image loses the detail
(issue 17: the largest single cost on a near-white image, in simulation).

The split is what the int8 weight rounding and tuning (kd_tf.weight_rounding, kd_tf.int8_tuning)
see: groups under the threshold are left in float there too. The file itself is written from
`join_float_groups`, one convolution per layer again, by kd_tf.export.dynamic_range_int8: each
group is one more CONV_2D op at run time (the shipped student's file: 1.54-1.73x faster than
float32 split, 1.88-2.20x joined; benchmarks/dynamic_float_layers_speed.json).

>>> import keras, numpy as np
>>> inputs = keras.Input((None, None, 16))
>>> model = keras.Model(inputs, keras.layers.Conv2D(32, 3, padding="same", name="wide")(inputs))
>>> floating = keep_float(model, ["wide"])
>>> [layer.name for layer in floating.layers if isinstance(layer, keras.layers.Conv2D)]   # 144 weights per channel
['wide_float0', 'wide_float7', 'wide_float14', 'wide_float21', 'wide_float28']
>>> x = np.random.default_rng(0).random((1, 8, 8, 16), dtype=np.float32)
>>> bool(np.allclose(floating(x), model(x), atol=1e-5))
True
>>> joined = join_float_groups(floating, ["wide"])
>>> [(layer.name, layer.filters) for layer in joined.layers if isinstance(layer, keras.layers.Conv2D)]
[('wide', 32)]
>>> bool(np.allclose(joined(x), model(x), atol=1e-5))
True
"""

from __future__ import annotations

import re

import keras
import numpy as np

from kd_tf.errors import InputError
from kd_tf.weight_rounding import MIN_ELEMENTS


def _float_groups(conv: keras.layers.Conv2D, min_elements: int) -> list[keras.layers.Conv2D]:
    """`conv` as convolutions of consecutive output channels, each under `min_elements` weights."""
    kernel, *bias = conv.get_weights()
    per_channel = int(np.prod(kernel.shape[:-1]))
    if per_channel >= min_elements:
        raise ValueError(f"layer {conv.name!r}: one output channel holds {per_channel} weights, not under "
                         f"{min_elements}; the converter would quantize any group of it")
    size = (min_elements - 1) // per_channel
    groups = []
    for start in range(0, kernel.shape[-1], size):
        stop = min(start + size, kernel.shape[-1])
        config = {**conv.get_config(), "name": f"{conv.name}_float{start}", "filters": stop - start}
        group = keras.layers.Conv2D.from_config(config)
        group.build((None, None, None, kernel.shape[2]))
        group.set_weights([kernel[..., start:stop], *[b[start:stop] for b in bias]])
        groups.append(group)
    return groups


def check_float_layers(model: keras.Model, names) -> None:
    """Raises InputError unless every name in `names` is an ungrouped Conv2D layer of `model`
    (what keep_float can split), naming the accepted ones: a job checks before any work."""
    convolutions = sorted(layer.name for layer in model.layers if type(layer) is keras.layers.Conv2D
                          and layer.groups == 1)
    unknown = [name for name in names if name not in convolutions]
    if unknown:
        raise InputError(f"keep_float: {unknown} not among the model's ungrouped Conv2D layers; accepted: {convolutions}")


def keep_float(model: keras.Model, names, min_elements: int = MIN_ELEMENTS) -> keras.Model:
    """A copy of functional `model` whose Conv2D layers in `names` are computed as output-channel
    groups of fewer than `min_elements` weights, concatenated under the layer's name, so that a
    dynamic-range TFLite file keeps them in float. The other layers are copies with the same weights."""
    names = list(names)
    check_float_layers(model, names)

    def call(layer, *args, **kwargs):
        if layer.name in names:
            groups = _float_groups(model.get_layer(layer.name), min_elements)
            if len(groups) == 1:
                return groups[0](*args, **kwargs)                    # already under the threshold
            return keras.layers.Concatenate(name=layer.name)([group(*args, **kwargs) for group in groups])
        return layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=lambda layer: type(layer).from_config(layer.get_config()),
                                    call_function=call)
    for layer in copy.layers:
        if layer.weights and layer.name not in names and not any(layer.name.startswith(f"{n}_float") for n in names):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def join_float_groups(model: keras.Model, names) -> keras.Model:
    """The inverse of keep_float: a copy of `model` in which each layer in `names`, split into
    output-channel groups `<name>_float<first channel>` (and concatenated under `<name>`), is one
    Conv2D named `<name>` again, its kernel and bias the groups' side by side: the same function,
    what kd_tf.export.dynamic_range_int8 keeps in float as one op. Other layers keep their weights."""
    names = list(names)
    groups = {}
    for name in names:
        pattern = re.compile(rf"{re.escape(name)}_float(\d+)")
        found = [(int(m.group(1)), layer) for layer in model.layers if (m := pattern.fullmatch(layer.name))]
        if not found:
            raise InputError(f"join_float_groups: {name!r} has no groups '{name}_float<n>' in the model; "
                             f"its layers: {[layer.name for layer in model.layers]}")
        groups[name] = [layer for _, layer in sorted(found, key=lambda pair: pair[0])]
    joined = {}
    for name, parts in groups.items():
        weights = [np.concatenate(tensors, axis=-1) for tensors in zip(*(part.get_weights() for part in parts))]
        conv = keras.layers.Conv2D.from_config({**parts[0].get_config(), "name": name,
                                                "filters": int(weights[0].shape[-1])})
        conv.build((None, None, None, weights[0].shape[2]))
        conv.set_weights(weights)
        joined[name] = conv
    group_of = {part.name: name for name, parts in groups.items() for part in parts}

    def call(layer, *args, **kwargs):
        if layer.name in group_of:                  # a group passes its input on to the joined layer
            name = group_of[layer.name]
            return joined[name](args[0]) if len(groups[name]) == 1 else args[0]
        if layer.name in joined:                    # the concatenation of the groups
            return joined[layer.name](args[0][0])
        return layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=lambda layer: type(layer).from_config(layer.get_config()),
                                    call_function=call)
    for layer in copy.layers:
        if layer.weights and layer.name not in joined:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy
