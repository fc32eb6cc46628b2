"""A student U-Net that starts from its teacher's weights instead of random ones.

The student keeps, at every level, the teacher's stream channels and residual-block channels that
carry the most energy on real inputs, and the teacher's residual blocks that add the most; its
weights are the teacher's weights at those channels. This is weight inheritance as in DistilBERT
(layers taken from the teacher) and GAN Compression (channels taken from the teacher), here by
activation energy. The sliced network is a poor denoiser as it stands (dropped channels leave
holes), but its filters are the teacher's: measured here, it trains to in 800 steps what a
randomly initialised student needs several thousand for.

Both networks must come from kd_tf.denoise.nets.build_unet (the layer names tell the streams apart); the
student has the teacher's number of levels and at most its widths and blocks.
"""

from __future__ import annotations

import keras
import numpy as np

from kd_tf.denoise.nets import _stream_layers, global_context_of, has_unet_streams, unet_levels, unshuffle_of
from kd_tf.errors import InputError


def _prefixes(levels: int):
    """(name prefix, level) of every chain of residual blocks."""
    return ([(f"enc{i}", i) for i in range(levels - 1)] + [("bottleneck", levels - 1)]
            + [(f"dec{i}", i) for i in range(levels - 1)])


def _block_count(model: keras.Model, prefix: str) -> int:
    names = {layer.name for layer in model.layers}
    count = 0
    while f"{prefix}_block{count}_conv1" in names:
        count += 1
    return count


def _width(model: keras.Model, level: int) -> int:
    return int(model.get_layer("head" if level == 0 else f"down{level - 1}").filters)


def _check_pair(teacher: keras.Model, student: keras.Model):
    for role, model in (("teacher", teacher), ("student", student)):
        if not has_unet_streams(model):
            raise InputError(f"the {role} is not a kd_tf.denoise.nets.build_unet network (layers head/down*/up*/skip*/"
                             f"tail); weight inheritance needs its layer names")
    if unshuffle_of(student) != unshuffle_of(teacher):
        raise InputError(f"the student pixel-unshuffles by {unshuffle_of(student)}, the teacher by "
                         f"{unshuffle_of(teacher)}; accepted: the same factor")
    if global_context_of(teacher):
        raise InputError("the teacher has a global context (context_from* / film* layers); inheritance copies stream "
                         "and residual-block channels only and would drop what the context does; accepted: a teacher "
                         "without one")
    levels = unet_levels(teacher)
    if unet_levels(student) != levels:
        raise InputError(f"the student has {unet_levels(student)} levels, the teacher {levels}; accepted: the same number")
    for level in range(levels):
        if _width(student, level) > _width(teacher, level):
            raise InputError(f"level {level}: the student is wider ({_width(student, level)} channels) than the "
                             f"teacher ({_width(teacher, level)}); accepted: at most the teacher's widths")
    for prefix, _ in _prefixes(levels):
        if _block_count(student, prefix) > _block_count(teacher, prefix):
            raise InputError(f"{prefix}: the student has {_block_count(student, prefix)} residual blocks, the "
                             f"teacher {_block_count(teacher, prefix)}; accepted: at most the teacher's")


def inheritance_problem(teacher: keras.Model, student: keras.Model) -> str | None:
    """Why `student` cannot inherit from `teacher`, or None when it can."""
    try:
        _check_pair(teacher, student)
    except ValueError as error:
        return str(error)
    return None


def _energies(teacher: keras.Model, names: list[str], batches) -> dict[str, np.ndarray]:
    """Mean squared activation per channel of each named layer's output, over `batches`."""
    taps = keras.Model(teacher.input, [teacher.get_layer(name).output for name in names])
    totals = {name: 0.0 for name in names}
    count = 0
    for batch in batches:
        outputs = taps(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, tensor in zip(names, outputs):
            totals[name] = totals[name] + np.mean(np.square(np.asarray(tensor, np.float32)), axis=(0, 1, 2))
        count += 1
    if count == 0:
        raise InputError("no batches to measure the teacher's activations on")
    return {name: total / count for name, total in totals.items()}


def _strongest(energy: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` largest entries, in their original order."""
    return np.sort(np.argsort(-energy, kind="stable")[:keep])


def inherit_from_teacher(teacher: keras.Model, student: keras.Model, batches) -> dict:
    """Sets `student`'s weights from `teacher`'s (both build_unet networks) and returns what was
    kept: per level the stream channels, per chain of residual blocks the blocks and their inner
    channels. `batches`: a few batches of training inputs (noisy patches), for the energies."""
    _check_pair(teacher, student)
    levels = unet_levels(teacher)
    streams = {level: _stream_layers(teacher, level, levels)[2] for level in range(levels)}
    chains = {prefix: _block_count(teacher, prefix) for prefix, _ in _prefixes(levels)}
    names = sorted({name for carriers in streams.values() for name in carriers}
                   | {f"{prefix}_block{j}_{part}" for prefix, count in chains.items()
                      for j in range(count) for part in ("conv1", "conv2")})
    energy = _energies(teacher, names, list(batches))

    channels = {level: _strongest(sum(energy[name] for name in carriers), _width(student, level))
                for level, carriers in streams.items()}
    kept = {"stream_channels": {level: c.tolist() for level, c in channels.items()}, "blocks": {}}

    def copy(student_name, teacher_name, inputs=None, outputs=None, transpose=False):
        kernel, bias = teacher.get_layer(teacher_name).get_weights()
        in_axis, out_axis = (3, 2) if transpose else (2, 3)     # Conv2DTranspose: (h, w, out, in)
        if inputs is not None:
            kernel = np.take(kernel, inputs, axis=in_axis)
        if outputs is not None:
            kernel, bias = np.take(kernel, outputs, axis=out_axis), bias[outputs]
        student.get_layer(student_name).set_weights([kernel, bias])

    copy("head", "head", outputs=channels[0])
    copy("tail", "tail", inputs=channels[0])
    for level in range(levels - 1):
        copy(f"down{level}", f"down{level}", inputs=channels[level], outputs=channels[level + 1])
        copy(f"up{level}", f"up{level}", inputs=channels[level + 1], outputs=channels[level], transpose=True)
    for prefix, level in _prefixes(levels):
        wanted = _block_count(student, prefix)
        # the blocks that add the most to the stream, in their order
        blocks = _strongest(np.array([energy[f"{prefix}_block{j}_conv2"][channels[level]].sum()
                                      for j in range(chains[prefix])]), wanted)
        kept["blocks"][prefix] = blocks.tolist()
        for j, source in enumerate(blocks):
            inner_width = int(student.get_layer(f"{prefix}_block{j}_conv1").filters)
            inner = _strongest(energy[f"{prefix}_block{source}_conv1"], inner_width)
            copy(f"{prefix}_block{j}_conv1", f"{prefix}_block{source}_conv1", inputs=channels[level], outputs=inner)
            copy(f"{prefix}_block{j}_conv2", f"{prefix}_block{source}_conv2", inputs=inner, outputs=channels[level])
    return kept
