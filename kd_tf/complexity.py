"""Parameters and multiply-accumulates of any functional Keras model.

MACs are counted the way papers count them: convolutions and dense layers only (adds and
activations are free), for one image of the given size.
"""

from __future__ import annotations

import math

import keras


def count_params(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights))


def _layer_macs(layer, input_shape, output_shape) -> int:
    kind = type(layer).__name__
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        kernel = math.prod(layer.kernel_size)
        return math.prod(output_shape[1:]) * kernel * input_shape[-1] // layer.groups
    if kind in ("Conv2DTranspose", "Conv1DTranspose", "Conv3DTranspose"):
        kernel = math.prod(layer.kernel_size)
        return math.prod(input_shape[1:]) * kernel * output_shape[-1]
    if kind in ("DepthwiseConv2D", "DepthwiseConv1D"):
        return math.prod(output_shape[1:]) * math.prod(layer.kernel_size)
    if kind == "SeparableConv2D":
        depthwise = math.prod(output_shape[1:-1]) * input_shape[-1] * math.prod(layer.kernel_size) * layer.depth_multiplier
        return depthwise + math.prod(output_shape[1:-1]) * input_shape[-1] * layer.depth_multiplier * output_shape[-1]
    if kind == "Dense":
        return math.prod(output_shape[1:]) * input_shape[-1]
    return 0


def count_macs(model: keras.Model, input_shape=(256, 256, 3)) -> int:
    """MACs for one input of `input_shape` (without the batch axis; a list of shapes for a
    multi-input model, such as FFDNet's image and noise level).

    The model is cloned onto a fixed-size input so every layer has a concrete shape; nested
    functional models are counted recursively.
    """
    if input_shape and isinstance(input_shape[0], (tuple, list)):     # a multi-input model: one shape each
        fixed_input = [keras.Input(shape=tuple(shape), batch_size=1) for shape in input_shape]
    else:
        fixed_input = keras.Input(shape=tuple(input_shape), batch_size=1)
    fixed = keras.models.clone_model(model, input_tensors=fixed_input)
    total = 0
    for layer in fixed.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer, tuple(layer.input.shape[1:]))
            continue
        for node in layer._inbound_nodes:
            inputs = node.input_tensors
            outputs = node.output_tensors
            if not inputs or not outputs:
                continue
            total += _layer_macs(layer, tuple(inputs[0].shape), tuple(outputs[0].shape))
    return int(total)
