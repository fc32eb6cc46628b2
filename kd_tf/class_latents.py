"""Latents that carry a class: the argmax of z's first `classes` entries (kd_tf.layers.ClassCode).

Why in z: every part of kd_tf that handles a generator (the Distiller giving teacher and student the
same z, the scorer, int8 export and its calibration, `generate`, benchmarks) takes one latent
vector, and keeps working unchanged. z ~ N(0, I) picks each class with probability 1/classes, so a
conditional generator is also an unconditional one with uniform classes; teacher and student fed
the same z draw the same class. To ask for a class, swap the largest of the first `classes`
entries with that class's entry (`with_class`, `latents_for_classes`): the result is exactly a
draw of N(0, I) given that argmax, so nothing else about z changes. Conditional GANs
(kd_tf.conditional_gan) and conditional diffusion samplers (kd_tf.diffusion, whose latent is the
noise image) read their class this way.

>>> z = latents_for_classes(np.array([3, 0, 9]), latent_dim=12, classes=10, seed=0)
>>> [int(i) for i in np.argmax(z[:, :10], axis=1)]
[3, 0, 9]
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.errors import InputError
from kd_tf.layers import ClassCode


def with_class(z, one_hot):
    """z with its first `classes` entries permuted so that their argmax is the class of `one_hot`:
    the largest entry and the class's entry trade places (nothing changes where they coincide)."""
    classes = one_hot.shape[-1]
    head, tail = z[:, :classes], z[:, classes:]
    asked = tf.cast(one_hot, tf.bool)
    top = tf.reduce_max(head, axis=-1, keepdims=True)
    at_class = tf.reduce_sum(tf.where(asked, head, tf.zeros_like(head)), axis=-1, keepdims=True)
    largest = tf.equal(head, top)
    head = tf.where(asked, top, tf.where(largest, at_class, head))
    return tf.concat([head, tail], axis=-1)


def latents_for_classes(labels, latent_dim: int, classes: int, seed: int = 0) -> np.ndarray:
    """N(0, I) latents, one per label, whose class code is that label (numpy, for sampling a digit)."""
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise InputError(f"class labels {sorted(set(labels.tolist()))} are not accepted; expected 0..{classes - 1}")
    z = np.random.default_rng(seed).standard_normal((len(labels), int(latent_dim))).astype(np.float32)
    rows = np.arange(len(labels))
    top = np.argmax(z[:, :classes], axis=1)
    z[rows, top], z[rows, labels] = z[rows, labels], z[rows, top].copy()
    return z


def digit_latents(model_path, digit: int, classes: int = 10, steps: int | None = None, sampler=None):
    """(num, latent_dim, seed) -> latents of class `digit` for `generate --digit`. A .keras generator
    (or diffusion network, sampled by `sampler(network, steps)`) must be class-conditional and says
    how many classes it has; a .tflite file or a SavedModel cannot say, so `classes` is taken as given."""
    from kd_tf.generators import load_keras_generator

    if str(model_path).endswith((".keras", ".h5", ".hdf5")):
        classes = classes_of(load_keras_generator(model_path, steps, sampler))
        if not classes:
            raise InputError(f"--digit {digit}: {str(model_path)!r} is not class-conditional (no ClassCode layer); "
                             f"drop --digit, or train one with classes: 10")
    if not 0 <= int(digit) < classes:
        raise InputError(f"--digit {digit} is not accepted; expected 0..{classes - 1}")
    return lambda num, latent_dim, seed: latents_for_classes(np.full(num, int(digit)), latent_dim, classes, seed)


def classes_of(generator: keras.Model) -> int:
    """How many classes a generator is conditioned on (0: unconditional): those of the first
    ClassCode layer it holds, nested ones included (a diffusion sampler's)."""
    codes = [layer.classes for layer in generator._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, ClassCode)]
    return codes[0] if codes else 0


def class_accuracy(generate, logits, latent_dim: int, classes: int, per_class: int = 1000, confidence: float = 0.9,
                   seed: int = 0) -> dict:
    """How often the classifier names the class that was asked for: `per_class` samples of each
    class; `accuracy` counts its argmax, `confident_accuracy` only answers at >= `confidence`."""
    labels = np.repeat(np.arange(classes), per_class)
    z = latents_for_classes(labels, latent_dim, classes, seed)
    images = np.concatenate([np.asarray(generate(z[i:i + 500])) for i in range(0, len(z), 500)])
    probabilities = np.concatenate([tf.nn.softmax(logits(tf.constant(np.clip((images[i:i + 500] + 1) / 2, 0, 1),
                                                                        tf.float32))).numpy()
                                    for i in range(0, len(images), 500)])
    right = np.argmax(probabilities, axis=1) == labels
    per = [float(np.mean(right[labels == c])) for c in range(classes)]
    return {"accuracy": float(np.mean(right)),
            "confident_accuracy": float(np.mean(right & (probabilities.max(axis=1) >= confidence))),
            "per_class": per, "worst_class": int(np.argmin(per)), "samples": int(len(labels))}
