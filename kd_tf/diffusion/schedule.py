"""The noise schedule and one DDIM step, shared by training, sampling and distillation.

Continuous time t in [0, 1] (keras.io's DDIM example): the signal rate falls along a cosine from
`MAX_SIGNAL` at t = 0 to `MIN_SIGNAL` at t = 1, and signal^2 + noise^2 = 1, so a noisy image is
z_t = signal(t) * x + noise(t) * eps. Images live in [-1, 1] inside the task (`to_model`,
`to_pixels` convert from and to [0, 1]).
"""

from __future__ import annotations

import math

import tensorflow as tf

from kd_tf.errors import InputError

MIN_SIGNAL = 0.02
MAX_SIGNAL = 0.95


def rates(times):
    """(noise rate, signal rate) at diffusion times `times` (any shape).

    >>> noise, signal = rates(tf.constant([0.0, 1.0]))
    >>> [round(float(v), 4) for v in signal], round(float(noise[0] ** 2 + signal[0] ** 2), 6)
    ([0.95, 0.02], 1.0)
    """
    start, end = math.acos(MAX_SIGNAL), math.acos(MIN_SIGNAL)
    angles = start + tf.cast(times, tf.float32) * (end - start)
    return tf.sin(angles), tf.cos(angles)


def to_model(images):
    """[0, 1] pixels -> the model's [-1, 1]."""
    return tf.cast(images, tf.float32) * 2.0 - 1.0


def to_pixels(images):
    """The model's [-1, 1] -> [0, 1] pixels (not clipped: gradients flow through a sampler)."""
    return (tf.cast(images, tf.float32) + 1.0) / 2.0


def predict(network, noisy, times):
    """(predicted noise, predicted clean image) of a velocity-predicting `network` at `times`
    (shape [batch, 1, 1, 1]).

    The network predicts v = signal * noise - noise_rate * image (Salimans & Ho, 2022), not the
    noise: image = signal * z - noise_rate * v stays well conditioned at t = 1, where the signal
    is 0.02 and an image derived from predicted noise would amplify its error 50x, which is what
    one- and two-step students are asked to do.

    >>> noise, signal = rates(tf.constant(0.3, shape=(1, 1, 1, 1)))
    >>> image, eps = tf.fill((1, 2, 2, 1), 0.5), tf.fill((1, 2, 2, 1), -1.0)
    >>> exact = lambda inputs: signal * eps - noise * image          # a network that knows v
    >>> predicted_noise, predicted_image = predict(exact, signal * image + noise * eps, tf.fill((1, 1, 1, 1), 0.3))
    >>> round(float(predicted_noise[0, 0, 0, 0]), 5), round(float(predicted_image[0, 0, 0, 0]), 5)
    (-1.0, 0.5)
    """
    noise_rate, signal_rate = rates(times)
    velocity = tf.cast(network([noisy, noise_rate ** 2]), tf.float32)
    return noise_rate * noisy + signal_rate * velocity, signal_rate * noisy - noise_rate * velocity


def velocity(images, noise, times):
    """The velocity target v = signal * noise - noise_rate * image of clean `images` at `times`."""
    noise_rate, signal_rate = rates(times)
    return signal_rate * noise - noise_rate * images


def ddim_step(network, noisy, times, next_times):
    """One deterministic DDIM step (eta = 0) from `times` to `next_times`:
    (next noisy image, predicted clean image at `times`)."""
    predicted_noise, predicted_image = predict(network, noisy, times)
    next_noise_rate, next_signal_rate = rates(next_times)
    return next_signal_rate * predicted_image + next_noise_rate * predicted_noise, predicted_image


def step_times(steps: int, batch):
    """The sampler's times for `steps` steps: 1, 1 - 1/steps, ..., 1/steps, each [batch, 1, 1, 1]."""
    if int(steps) < 1:
        raise InputError(f"steps={steps!r}; accepted: an int >= 1")
    return [tf.fill([batch, 1, 1, 1], 1.0 - k / steps) for k in range(int(steps))]
