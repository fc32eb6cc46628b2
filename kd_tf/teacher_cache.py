"""Offline distillation: run the teacher once per training input, then reuse its output.

The teacher's forward pass costs more than the student's whole training step (about 60% of an
online distillation step here), and the patch stream is drawn from a handful of photos, so the
same content comes back again and again. Caching the teacher's outputs on a fixed bank of noisy
patches makes each distillation step cost a student step; the 8 flip/rot90 variants of every
cached (input, teacher output, target) triple are applied jointly, so the bank serves 8x its size
in distinct inputs. That moves the teacher's output instead of recomputing it, which is exact only
for an equivariant teacher: the shipped FFDNet is 44.0-44.4 dB from it (PSNR of T(g(x)) against
g(T(x)), its own output 30.5 dB from clean; benchmarks/teacher_equivariance.json), a target error
about 4.5 % of the teacher's own MSE. `augment=False` (distill.cache_augment: false) serves the
bank as cached.

The stream reads the bank in place by index: tf.data.Dataset.from_tensor_slices copied it into the
dataset (twice the bank at the peak: +1.09 GB for 500 batches of 16x64x64x3,
benchmarks/teacher_cache_memory.json).

Only the teacher's *output* is cached: intermediate features would cost tens of times more memory,
so feature and attention terms need the live teacher (the Distiller says so if asked).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf
from kd_tf.errors import InputError

log = logging.getLogger(__name__)

INPUTS_KEY = "inputs"
TEACHER_OUTPUTS_KEY = "teacher_outputs"
TEACHER_INPUTS_KEY = "teacher_inputs"


def is_cached_batch(inputs) -> bool:
    """Whether a Distiller input carries precomputed teacher outputs."""
    return isinstance(inputs, dict) and TEACHER_OUTPUTS_KEY in inputs


def split_inputs(inputs):
    """(student inputs, teacher inputs) of a batch's x.

    A teacher may need more than the student sees: FFDNet takes the noise level beside the image
    while the student stays blind. The data pipeline then yields x = {"inputs": images,
    "teacher_inputs": what the teacher takes}; plain x goes to both models.

    >>> split_inputs({"inputs": 1, "teacher_inputs": (1, 0.1)})
    (1, (1, 0.1))
    >>> split_inputs(2)
    (2, 2)
    """
    if isinstance(inputs, dict) and INPUTS_KEY in inputs:
        return inputs[INPUTS_KEY], inputs.get(TEACHER_INPUTS_KEY, inputs[INPUTS_KEY])
    return inputs, inputs


@dataclasses.dataclass
class TeacherCache:
    """A bank of noisy inputs, the teacher's outputs on them and (optionally) their clean targets."""

    inputs: np.ndarray
    teacher_outputs: np.ndarray
    targets: np.ndarray | None
    seconds: float                       # what building the bank cost (teacher forward passes)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.inputs, self.teacher_outputs, self.targets) if a is not None)

    def dataset(self, batch_size: int, seed: int = 0, augment: bool = True, skip_batches: int = 0) -> tf.data.Dataset:
        """An endless, seeded, reshuffled stream of ({inputs, teacher_outputs}, targets) batches;
        `skip_batches` continues it where a resumed run stopped."""
        if batch_size > len(self):
            raise InputError(f"batch_size={batch_size} exceeds the {len(self)} cached samples")
        arrays = [self.inputs, self.teacher_outputs] + ([self.targets] if self.targets is not None else [])

        def sample(index):             # read in place: from_tensor_slices would copy the whole bank
            parts = tf.numpy_function(lambda i: tuple(a[i] for a in arrays), [index],
                                      [tf.as_dtype(a.dtype) for a in arrays], stateful=False)
            for part, array in zip(parts, arrays):
                part.set_shape(array.shape[1:])
            return tuple(parts)

        def variant(element, element_seed):
            # each array gets the same flip and turns on its own: a super-resolution teacher's output
            # is larger than its input, and the dihedral moves commute with the scaling
            parts = [tf.cast(a, tf.float32) for a in element]
            if augment:
                seeds = tf.random.experimental.stateless_split(
                    tf.stack([element_seed, tf.constant(seed, tf.int64)]), 2)
                flip = tf.random.stateless_uniform([], seeds[0], 0, 2, dtype=tf.int32) > 0
                turns = tf.random.stateless_uniform([], seeds[1], 0, 4, dtype=tf.int32)
                parts = [tf.image.rot90(tf.cond(flip, lambda p=p: tf.image.flip_left_right(p), lambda p=p: p), turns)
                         for p in parts]
            inputs = {INPUTS_KEY: parts[0], TEACHER_OUTPUTS_KEY: parts[1]}
            return (inputs, parts[2]) if len(parts) == 3 else (inputs,)

        indices = tf.data.Dataset.range(len(self))      # the same order as shuffling the samples themselves
        return (tf.data.Dataset.zip((indices.shuffle(len(self), seed=seed, reshuffle_each_iteration=True).repeat(),
                                     tf.data.Dataset.random(seed=seed)))
                .skip(skip_batches * batch_size)
                .map(lambda index, element_seed: variant(sample(index), element_seed),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))


def cache_teacher_outputs(teacher, batches: tf.data.Dataset, num_batches: int,
                          dtype=np.float16, progress=None) -> TeacherCache:
    """Runs the frozen teacher once over `num_batches` batches of `batches` ((x, clean) or x, where
    x is the noisy images or {"inputs": noisy, "teacher_inputs": ...}, see `split_inputs`).

    float16 storage keeps 11 significant bits, an error below 0.1/255 on [0, 1] images, at half
    the memory of float32 (a 64x64 patch triple takes 74 kB).
    """
    if num_batches < 1:
        raise InputError(f"num_batches={num_batches!r}; accepted: an int >= 1")
    forward = tf.function(lambda x: tf.cast(teacher(x, training=False), tf.float32))
    banks = None                         # filled in place: a list of batches plus a concatenate would
    filled = 0                           # hold every sample twice at the peak
    started = time.time()
    stream = iter(batches)
    for index in range(num_batches):     # never asks past the last batch: on an endless stream that
        try:                             # has a sibling pipeline, take()'s end could wait ~40 s
            element = next(stream)
        except StopIteration:
            break
        x, clean = element if isinstance(element, tuple) else (element, None)
        noisy, teacher_inputs = split_inputs(x)          # the teacher may take more (a noise level)
        parts = [noisy, forward(teacher_inputs)] + ([clean] if clean is not None else [])
        if banks is None:
            samples = num_batches * int(noisy.shape[0])
            banks = [np.empty((samples, *part.shape[1:]), dtype) for part in parts]
        size = int(noisy.shape[0])
        if filled + size > len(banks[0]):
            raise InputError(f"batch {index} has {size} samples, more than the first batch's "
                             f"{len(banks[0]) // num_batches}; cache batches of one size")
        for bank, part in zip(banks, parts):
            bank[filled:filled + size] = np.asarray(part, dtype)
        filled += size
        if progress and (index + 1) % 250 == 0:
            progress(f"teacher cache: {index + 1}/{num_batches} batches")
    if banks is None:
        raise InputError("the batch stream is empty: nothing to cache")
    if filled < len(banks[0]):
        log.warning("the batch stream ended after %d of %d samples", filled, len(banks[0]))
        banks = [bank[:filled] for bank in banks]
    cache = TeacherCache(banks[0], banks[1], banks[2] if len(banks) == 3 else None, time.time() - started)
    log.info("cached the teacher's outputs on %d samples in %.0f s (%.0f MB)",
             len(cache), cache.seconds, cache.nbytes / 2**20)
    return cache
