"""Class-conditional GANs whose class rides in the latent itself: the argmax of z's first `classes` entries.

Why in z: every part of kd_tf that handles a generator (the Distiller giving teacher and student the
same z, the scorer, int8 export and its calibration, `generate`, benchmarks) takes one latent
vector, and keeps working unchanged. z ~ N(0, I) picks each class with probability 1/classes, so a
conditional generator is also an unconditional one with uniform classes; teacher and student fed
the same z draw the same class. To ask for a class, swap the largest of the first `classes`
entries with that class's entry (`with_class`, `latents_for_classes`): the result is exactly a
draw of N(0, I) given that argmax, so nothing else about z changes.

Training needs the real digits' labels: the data are (image, one-hot label) batches, the step
draws z with the batch's classes (`ClassLatentSampler`), and the discriminator is a projection
discriminator (Miyato & Koyama, 2018) that scores (image, label) pairs (`ConditionalAdversarial`).

>>> z = latents_for_classes(np.array([3, 0, 9]), latent_dim=12, classes=10, seed=0)
>>> [int(i) for i in np.argmax(z[:, :10], axis=1)]
[3, 0, 9]
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.digits import as_signed
from kd_tf.distiller import Distiller
from kd_tf.distribute import global_batch_size, mean_results
from kd_tf.errors import InputError
from kd_tf.generators import LatentSampler
from kd_tf.layers import ClassCode
from kd_tf.objectives import Adversarial, AdversarialTraining


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


def digit_latents(model_path, digit: int, classes: int = 10):
    """(num, latent_dim, seed) -> latents of class `digit` for `generate --digit`. A .keras generator
    must be class-conditional and says how many classes it has; a .tflite file or a SavedModel
    cannot say, so `classes` is taken as given."""
    from kd_tf.model_io import load_model

    if str(model_path).endswith((".keras", ".h5", ".hdf5")):
        classes = classes_of(load_model(model_path))
        if not classes:
            raise InputError(f"--digit {digit}: {str(model_path)!r} is not class-conditional (no ClassCode layer); "
                             f"drop --digit, or train one with generator.classes: 10")
    if not 0 <= int(digit) < classes:
        raise InputError(f"--digit {digit} is not accepted; expected 0..{classes - 1}")
    return lambda num, latent_dim, seed: latents_for_classes(np.full(num, int(digit)), latent_dim, classes, seed)


def classes_of(generator: keras.Model) -> int:
    """How many classes a generator is conditioned on (0: unconditional)."""
    codes = [layer.classes for layer in generator.layers if isinstance(layer, ClassCode)]
    return codes[0] if codes else 0


class ClassLatentSampler(LatentSampler):
    """LatentSampler whose z carry given classes: the step passes its real batch's one-hot labels."""

    def __init__(self, latent_dim: int, classes: int, seed: int = 0):
        super().__init__(latent_dim, seed)
        if not 2 <= int(classes) <= self.latent_dim:
            raise InputError(f"classes={classes!r} is not accepted; expected an int from 2 to latent_dim "
                             f"({self.latent_dim})")
        self.classes = int(classes)

    def __call__(self, local_batch, step, labels=None):
        z = super().__call__(local_batch, step)
        return z if labels is None else with_class(z, labels)


def labeled_real_dataset(images: np.ndarray, labels: np.ndarray, classes: int, batch_size: int, seed: int,
                         skip_batches: int = 0):
    """An endless stream of ([-1, 1] real batch, one-hot labels), reshuffled every pass with `seed`."""
    data = tf.data.Dataset.from_tensor_slices((as_signed(images), np.eye(classes, dtype=np.float32)[labels]))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    data = data.batch(batch_size, drop_remainder=True)
    return (data.skip(skip_batches) if skip_batches else data).prefetch(2)


class ConditionalAdversarial(Adversarial):
    """The adversarial objective with a discriminator of (image, one-hot label) pairs. Targets are
    (real images, their labels); the fakes of a step carry the same labels (ClassLatentSampler)."""

    def check_prediction_shape(self, shape):
        inputs = self.discriminator.inputs
        if len(inputs) != 2:
            raise InputError(f"a class-conditional GAN needs a discriminator of (image, label) pairs; "
                             f"{self.discriminator.name!r} takes {len(inputs)} input(s)")
        expected = tuple(inputs[0].shape[1:])
        if tuple(shape[1:]) != expected:
            raise InputError(f"the discriminator takes images of shape {expected}, but the generator makes "
                             f"{tuple(shape[1:])}; build the discriminator for the generator's output")

    def _logits(self, images):
        return tf.reshape(tf.cast(self.discriminator([images, self._labels], training=True), tf.float32), [-1])

    def __call__(self, inputs, targets, prediction):
        self._labels = targets[1]
        return super().__call__(inputs, targets[0], prediction)

    def discriminator_step(self, real, fake):
        self._labels = real[1]
        super().discriminator_step(real[0], fake)


class ConditionalDistiller(Distiller):
    """The Distiller on (real images, one-hot labels) batches: z is drawn with the batch's classes,
    so teacher and student draw the digits the discriminator is told about."""

    def _latents(self, inputs, targets):
        z = self.latent_sampler(tf.shape(inputs)[0], self.optimizer.iterations, labels=targets)
        return z, (inputs, targets)


class ConditionalAdversarialTraining(AdversarialTraining):
    """AdversarialTraining on (real images, one-hot labels) batches (the conditional teacher and
    the from-scratch student)."""

    def train_step(self, data):
        real, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        z = self.latent_sampler(tf.shape(real)[0], self.optimizer.iterations, labels=labels)
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            fake = tf.cast(self.generator(z, training=True), tf.float32)
            per_sample = self.objective(z, (real, labels), fake)
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size(tf.shape(real)[0]))
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        if self.ema_generator is not None:
            for weight, average in zip(self.generator.weights, self.ema_generator.weights):
                average.assign(self.ema * average + (1.0 - self.ema) * weight)
        self.objective.discriminator_step((real, labels), fake)
        self.loss_tracker.update_state(tf.reduce_mean(per_sample), sample_weight=tf.cast(tf.shape(real)[0], tf.float32))
        return mean_results(self.metrics)


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
