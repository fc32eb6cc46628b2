"""Class-conditional adversarial training whose class rides in the latent itself: the argmax of z's
first `classes` entries (kd_tf.class_latents says why, and holds what asks a latent for a class).
In the core because two tasks train against a class-conditional discriminator: the GAN task's
teacher and student, and the diffusion task's adversarial fine-tune of a few-step sampler.

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

from kd_tf.class_latents import class_accuracy, classes_of, digit_latents, latents_for_classes, with_class
from kd_tf.digits import as_signed
from kd_tf.distiller import Distiller
from kd_tf.distribute import global_batch_size, mean_results
from kd_tf.errors import InputError
from kd_tf.generators import LatentSampler
from kd_tf.objectives import Adversarial, AdversarialTraining

__all__ = ["ClassLatentSampler", "ConditionalAdversarial", "ConditionalAdversarialTraining", "ConditionalDistiller",
           "class_accuracy", "classes_of", "digit_latents", "labeled_real_dataset", "latents_for_classes",
           "with_class"]


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
