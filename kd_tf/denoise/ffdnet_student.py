"""A blind student of FFDNet's shape, and its start from an FFDNet teacher's weights.

FFDNet computes at half resolution (pixel-unshuffle x2, a chain of 3x3 convolutions, pixel-shuffle
x2), which makes it cheap per pixel; a narrow copy of that chain is a student of the teacher's own
family, so it can *inherit* the teacher's weights (issue 16's arms (b) and (d)), which no U-Net
student of an FFDNet teacher can. The student is blind (image in, image out: no noise level), and
its last convolution reads the unshuffled input beside the features, starting as the identity on
it: from random weights the
network is residual (output = input + correction, DnCNN's observation: it trains far faster than
predicting the clean image), and inheritance can still fit the last layer to the teacher's
output (a plain residual chain could not: its features no longer hold the noise it must subtract).

Inheritance keeps, in each hidden layer, the teacher's channels with the most activation energy
on training patches, then fits each student convolution in turn by ridge regression to the
teacher's pre-activations at those channels, from the *student's own* inputs (the layers already
fitted, ThiNet / He et al. 2017's reconstruction): dropped channels and the missing noise level
are compensated by the remaining weights instead of leaving holes. The last layer is fitted to the
teacher's output.

>>> student = build_blind_ffdnet(features=8, depth=3)
>>> [layer.name for layer in student.layers if "conv" in layer.name], student.output_shape
(['conv00', 'conv01', 'conv02'], (None, None, None, 3))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.errors import InputError
from kd_tf.layers import CropLike, DepthToSpace, PadToEven, SpaceToDepth

MIXED = "mixed_bfloat16"


def build_blind_ffdnet(features: int = 28, depth: int = 12, channels: int = 3, name: str = "student",
                       mixed_precision: bool | str = False) -> keras.Model:
    """The blind FFDNet-shaped denoiser: image (B, H, W, channels) in, image out, any H, W.

    `depth` 3x3 convolutions at half resolution (`features` channels, ReLU), the last one linear
    with 4 x channels outputs, reading the features and the unshuffled input (`input_skip`),
    initialised to the identity on the input; `mixed_precision` as kd_tf.denoise.nets.build_unet
    (the output layers stay float32)."""
    for label, value, minimum in (("features", features, 1), ("depth", depth, 2), ("channels", channels, 1)):
        if not isinstance(value, int) or value < minimum:
            raise InputError(f"{label}={value!r}; accepted: an int >= {minimum}")
    dtype = "mixed_float16" if mixed_precision == "float16" else MIXED if mixed_precision else "float32"
    image = keras.Input((None, None, channels), name="noisy")
    x = PadToEven(name="pad_to_even", dtype=dtype)(image)
    unshuffled = SpaceToDepth(2, name="pixel_unshuffle", dtype=dtype)(x)
    x = unshuffled
    for index in range(depth - 1):
        x = keras.layers.Conv2D(features, 3, padding="same", activation="relu", name=f"conv{index:02d}",
                                dtype=dtype)(x)
    x = keras.layers.Concatenate(name="input_skip", dtype="float32")([x, unshuffled])
    last = keras.layers.Conv2D(channels * 4, 3, padding="same", name=f"conv{depth - 1:02d}", dtype="float32")
    x = DepthToSpace(2, name="pixel_shuffle", dtype="float32")(last(x))
    model = keras.Model(image, CropLike(name="denoised", dtype="float32")([x, image]), name=name)
    kernel, bias = last.get_weights()
    kernel[..., features:, :] = 0.0
    kernel[1, 1, features:, :] = np.eye(channels * 4, dtype=kernel.dtype)
    last.set_weights([kernel, bias])
    return model


def _convs(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _is_chain(model: keras.Model) -> bool:
    names = {layer.name for layer in model.layers}
    convs = _convs(model)
    return ({"pixel_unshuffle", "pixel_shuffle"} <= names and len(convs) >= 2
            and [c.name for c in convs] == [f"conv{i:02d}" for i in range(len(convs))])


def is_blind_ffdnet(model: keras.Model) -> bool:
    """Whether `model` is a build_blind_ffdnet network (a student this module can fill)."""
    return _is_chain(model) and len(model.inputs) == 1 and "input_skip" in {layer.name for layer in model.layers}


def ffdnet_inheritance_problem(teacher: keras.Model, student: keras.Model) -> str | None:
    """Why `student` cannot inherit from `teacher`, or None when it can: the teacher is a
    kd_tf.denoise.ffdnet network (image and noise level in), the student a build_blind_ffdnet one
    of the same depth and at most the teacher's width."""
    if not (_is_chain(teacher) and "noise_level_map" in {layer.name for layer in teacher.layers}):
        return "the teacher is not a kd_tf.denoise.ffdnet network (pixel_unshuffle, noise_level_map, conv00...)"
    if not is_blind_ffdnet(student):
        return "the student is not a kd_tf.denoise.ffdnet_student.build_blind_ffdnet network"
    t, s = _convs(teacher), _convs(student)
    if len(t) != len(s):
        return f"the student has {len(s)} convolutions, the teacher {len(t)}; accepted: the same depth"
    if s[0].filters > t[0].filters:
        return f"the student is wider ({s[0].filters} channels) than the teacher ({t[0].filters}); accepted: at most"
    if s[-1].filters != t[-1].filters:
        return f"the student outputs {s[-1].filters // 4} channels, the teacher {t[-1].filters // 4}"
    return None


def _im2col(x: np.ndarray) -> np.ndarray:
    """(B, h, w, c) -> (B*h*w, 9c + 1): each pixel's 3x3 neighbourhood (zero 'same' padding) in a
    Conv2D kernel's (dy, dx, c) order, and a 1 for the bias."""
    height, width = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    columns = [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(3) for dx in range(3)]
    columns.append(np.ones(x.shape[:3] + (1,), x.dtype))
    return np.concatenate(columns, axis=-1).reshape(-1, 9 * x.shape[-1] + 1).astype(np.float64)


def _teacher_activations(teacher: keras.Model, images, sigmas):
    """The teacher's unshuffled input and every convolution's pre-activation (float32 numpy)."""
    x = teacher.get_layer("pixel_unshuffle")(teacher.get_layer("pad_to_even")(images))
    unshuffled = np.asarray(x, np.float32)
    x = teacher.get_layer("noise_level_map")([x, sigmas])
    convs, outputs = _convs(teacher), []
    for layer in convs:
        z = tf.nn.conv2d(tf.cast(x, tf.float32), tf.cast(layer.kernel, tf.float32), 1, "SAME") + layer.bias
        outputs.append(np.asarray(z, np.float32))
        x = tf.nn.relu(z)
    return unshuffled, outputs


def inherit_from_ffdnet(teacher: keras.Model, student: keras.Model, batches, ridge: float = 1e-3) -> dict:
    """Sets `student`'s (build_blind_ffdnet) weights from `teacher`'s (an FFDNet) and returns what
    was kept and how well each layer was fitted. `batches`: a few batches of the teacher's inputs,
    (noisy images, sigma / 255) pairs, training patches with the noise the student will see.
    `ridge`: the regression's ridge, relative to the mean of its Gram matrix's diagonal."""
    problem = ffdnet_inheritance_problem(teacher, student)
    if problem:
        raise InputError(problem)
    data = [_teacher_activations(teacher, images, sigmas) for images, sigmas in batches]
    if not data:
        raise InputError("no batches to measure the teacher's activations on")
    t_convs, s_convs = _convs(teacher), _convs(student)
    inputs = [unshuffled for unshuffled, _ in data]           # the student's input to the layer being fitted
    kept = {"channels": [], "relative_error": []}
    for index, layer in enumerate(s_convs):
        last = index == len(s_convs) - 1
        if last:
            channels = np.arange(layer.filters)
        else:
            energy = sum(np.mean(np.square(np.maximum(z[index], 0)), axis=(0, 1, 2)) for _, z in data)
            channels = np.sort(np.argsort(-energy, kind="stable")[:layer.filters])
        if last:                                             # the last layer also reads the input
            inputs = [np.concatenate([x, unshuffled], axis=-1) for x, (unshuffled, _) in zip(inputs, data)]
        targets = [z[index][..., channels] for _, z in data]
        gram, cross = 0.0, 0.0
        for x, y in zip(inputs, targets):
            columns = _im2col(x)
            gram = gram + columns.T @ columns
            cross = cross + columns.T @ y.reshape(-1, len(channels)).astype(np.float64)
        weights = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), cross)
        kernel = weights[:-1].reshape(3, 3, -1, len(channels)).astype(np.float32)
        bias = weights[-1].astype(np.float32)
        layer.set_weights([kernel, bias])
        fitted = [np.asarray(tf.nn.conv2d(x, kernel, 1, "SAME") + bias) for x in inputs]
        error = sum(float(np.mean(np.square(f - y))) for f, y in zip(fitted, targets))
        scale = sum(float(np.mean(np.square(y))) for y in targets)
        kept["channels"].append(channels.tolist())
        kept["relative_error"].append(error / max(scale, 1e-12))
        inputs = [np.maximum(f, 0) for f in fitted]
    return kept
