"""`DiffusionModel`: trains a velocity-predicting network with `fit()` on clean images.

Each step draws a diffusion time per image, mixes image and noise at that time and regresses
the velocity v = signal * noise - noise_rate * image (keras.io's DDIM example regresses the noise;
v keeps the image prediction sound at the noisiest times, which few-step students rely on); an exponential moving average
of the weights (`ema_network`) is what samples and teaches, as is usual for diffusion models.
A class-conditional network (`nets.build_denoiser(classes=...)`) trains on (images, int labels)
batches and is told each image's label.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kd_tf.diffusion.nets import denoiser_classes, with_class_input
from kd_tf.diffusion.schedule import predict, rates, to_model, velocity
from kd_tf.errors import InputError
from kd_tf.model_io import frozen_copy, rebuild_wrapper


@keras.saving.register_keras_serializable(package="kd_tf")
class DiffusionModel(keras.Model):
    """`fit(images in [0, 1])` trains `network`; `ema_network` follows it with `ema` momentum."""

    def __init__(self, network: keras.Model, ema: float = 0.999, seed: int = 0, name: str = "diffusion", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(ema) < 1.0:
            raise InputError(f"ema={ema!r}; accepted: 0 <= ema < 1")
        self.network = network
        self.classes = denoiser_classes(network)
        self.ema_network = frozen_copy(network)
        self.ema = float(ema)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.velocity_loss_tracker = keras.metrics.Mean(name="velocity_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        self.built = True                   # both networks are built; lets BackupAndRestore save at once

    @property
    def metrics(self):
        return [self.velocity_loss_tracker, self.image_loss_tracker]

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def _noised(self, images):
        images = to_model(images)
        batch = tf.shape(images)[0]
        noise = keras.random.normal(tf.shape(images), seed=self.seed_generator)
        times = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator)
        noise_rate, signal_rate = rates(times)
        return images, noise, times, signal_rate * images + noise_rate * noise

    def _batch(self, data):
        """(images, labels or None) of a batch; a conditional network needs the labels."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not self.classes:
            return images, None
        if labels is None:
            raise InputError(f"network {self.network.name!r} is conditioned on {self.classes} classes; "
                             "accepted: (images, int labels) batches")
        return images, tf.cast(labels, tf.int32)

    def _diffusion_losses(self, network, data, training):
        images, labels = self._batch(data)
        images, noise, times, noisy = self._noised(images)
        noise_rate, _ = rates(times)
        call = with_class_input(lambda x: network(x, training=training), labels)
        predicted = tf.cast(call([noisy, noise_rate ** 2]), tf.float32)
        _, predicted_images = predict(lambda x: predicted, noisy, times)
        return (tf.reduce_mean(tf.square(velocity(images, noise, times) - predicted)),
                tf.reduce_mean(tf.abs(images - predicted_images)))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            velocity_loss, image_loss = self._diffusion_losses(self.network, data, training=True)
            scaled = self.optimizer.scale_loss(velocity_loss)
        variables = self.network.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(self.ema * ema_weight + (1.0 - self.ema) * weight)
        self.velocity_loss_tracker.update_state(velocity_loss)
        self.image_loss_tracker.update_state(image_loss)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        velocity_loss, image_loss = self._diffusion_losses(self.ema_network, data, training=False)
        self.velocity_loss_tracker.update_state(velocity_loss)
        self.image_loss_tracker.update_state(image_loss)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                "ema": self.ema}

    @classmethod
    def from_config(cls, config):
        return rebuild_wrapper(cls, config, "network")
