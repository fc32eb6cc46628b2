"""Distillation terms: how far the student is from the teacher, per sample.

Every function returns one value per sample (shape [batch]); the Distiller weights and
averages them, so `sample_weight` works the same way for every term.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

OUTPUT_LOSSES = ("mse", "l1")


def _per_sample_mean(values):
    values = tf.cast(values, tf.float32)
    return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)


def squared_error(target, prediction):
    """Per-sample mean squared error."""
    return _per_sample_mean(tf.square(tf.cast(prediction, tf.float32) - tf.cast(target, tf.float32)))


def absolute_error(target, prediction):
    """Per-sample mean absolute error."""
    return _per_sample_mean(tf.abs(tf.cast(prediction, tf.float32) - tf.cast(target, tf.float32)))


def output_loss(kind):
    """The per-sample distance between student and teacher outputs (or student and clean image).

    `kind`: "mse" or "l1"; any Keras loss by name ("huber", "log_cosh", "mae"...) or as an object
    (`keras.losses.Huber(delta=0.1)`); or a callable (target, prediction) -> per-element or
    per-sample values. Whatever it returns is averaged per sample, so sample weights and the
    Distiller's weighting work the same for every distance.

    >>> import numpy as np
    >>> target, prediction = np.zeros((2, 4, 4, 3), np.float32), np.full((2, 4, 4, 3), 0.5, np.float32)
    >>> [round(float(output_loss(k)(target, prediction)[0]), 4) for k in ("mse", "l1", "huber")]
    [0.25, 0.5, 0.125]
    """
    if isinstance(kind, str):
        if kind == "mse":
            return squared_error
        if kind == "l1":
            return absolute_error
        try:
            kind = keras.losses.get(kind)
        except ValueError:
            raise ValueError(f"output loss {kind!r}; accepted: {', '.join(OUTPUT_LOSSES)}, any Keras loss name "
                             f"(e.g. 'huber', 'log_cosh'), a keras.losses.Loss or a callable") from None
    if isinstance(kind, keras.losses.Loss):
        loss = kind
        return lambda target, prediction: _per_sample_mean(
            loss.call(tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)))
    if callable(kind):
        return lambda target, prediction: _per_sample_mean(
            kind(tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)))
    raise ValueError(f"output loss {kind!r}; accepted: {', '.join(OUTPUT_LOSSES)}, any Keras loss name, "
                     f"a keras.losses.Loss or a callable")


def serialize_loss(kind):
    """A saveable description of an output loss (what `output_loss` takes back)."""
    if isinstance(kind, str):
        return kind
    if isinstance(kind, keras.losses.Loss) or getattr(kind, "__module__", "").startswith("keras"):
        config = keras.saving.serialize_keras_object(kind)
        # Keras 3.15's wrapped losses leave their arguments out of get_config (Huber(delta=0.05)
        # reloads as delta=1.0): put them back
        if isinstance(config, dict) and isinstance(config.get("config"), dict):
            config["config"].update(getattr(kind, "_fn_kwargs", {}) or {})
        return config
    raise NotImplementedError(f"output loss {kind!r} is a plain callable and cannot be saved; register it "
                              f"with @keras.saving.register_keras_serializable or pass a keras.losses.Loss")


def deserialize_loss(config):
    return config if isinstance(config, str) else keras.saving.deserialize_keras_object(config)


class FeatureTerm:
    """One (teacher layer, student layer) pair matched with MSE, through a 1x1 adapter if needed.

    The adapter maps the student's channels to the teacher's; it is trained with the student
    but owned by the Distiller, so it never reaches the exported student.
    """

    def __init__(self, teacher_layer: str, student_layer: str, weight: float,
                 teacher_channels: int, student_channels: int):
        self.teacher_layer, self.student_layer, self.weight = teacher_layer, student_layer, float(weight)
        self.name = f"feature_{teacher_layer}" if teacher_layer == student_layer else f"feature_{teacher_layer}__{student_layer}"
        self.adapter = None
        if teacher_channels != student_channels:
            self.adapter = layers.Conv2D(teacher_channels, 1, name=f"adapter_{self.name}", dtype="float32")
            self.adapter.build((None, None, None, student_channels))

    def __call__(self, teacher_feature, student_feature):
        student_feature = tf.cast(student_feature, tf.float32)
        if self.adapter is not None:
            student_feature = self.adapter(student_feature)
        return squared_error(tf.stop_gradient(teacher_feature), student_feature)


def attention_map(features):
    """Spatial attention of a feature map (Zagoruyko & Komodakis, 2017): the channel mean of
    squared activations, flattened and L2-normalised per sample, so teacher and student maps
    compare whatever their channel counts and scales."""
    features = tf.cast(features, tf.float32)
    energy = tf.reduce_mean(tf.square(features), axis=-1)
    flat = tf.reshape(energy, [tf.shape(energy)[0], -1])
    return tf.math.l2_normalize(flat, axis=1)


class AttentionTerm:
    """Attention transfer between one teacher layer and one student layer; no adapter needed.

    The per-sample loss is the mean squared difference of the normalised maps, times the
    number of positions, so that its size does not shrink with the image size.
    """

    adapter = None

    def __init__(self, teacher_layer: str, student_layer: str, weight: float):
        self.teacher_layer, self.student_layer, self.weight = teacher_layer, student_layer, float(weight)
        self.name = (f"attention_{teacher_layer}" if teacher_layer == student_layer
                     else f"attention_{teacher_layer}__{student_layer}")

    def __call__(self, teacher_feature, student_feature):
        teacher_map = tf.stop_gradient(attention_map(teacher_feature))
        student_map = attention_map(student_feature)
        return tf.reduce_sum(tf.square(teacher_map - student_map), axis=1)


def projected_input_gradient(forward, inputs, projection):
    """d<projection, forward(inputs)>/d inputs, and forward(inputs), from one forward and one
    backward pass. `projection`: a tensor shaped like the output, or a callable of the output's
    shape that draws one; `forward` may return several outputs (feature taps): the first is
    projected. A random projection of the output stands for the whole Jacobian (an image
    model's Jacobian has (H x W x C)^2 entries): matching it for random directions matches the
    Jacobian in expectation. Called under an outer GradientTape, the gradient stays
    differentiable with respect to the model's weights (double backpropagation)."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = forward(inputs)
        first = tf.cast(tf.nest.flatten(outputs)[0], tf.float32)
        direction = projection(tf.shape(first)) if callable(projection) else projection
        scalar = tf.reduce_sum(first * tf.stop_gradient(direction))
    return tape.gradient(scalar, inputs), outputs


class JacobianTerm:
    """Jacobian matching (Srinivas & Fleuret, 2018): the student's input-gradient of a random
    projection of its output should point where the teacher's does. Per sample: the squared
    distance of the two L2-normalised gradients (between 0 and 4), so the term does not depend on
    how large either model's gradients are.

    Cost: one extra backward pass through the teacher and a second-order pass through the
    student, per step (measured in the ablation, benchmarks/ablation.py)."""

    adapter = None
    name = "jacobian"

    def __init__(self, weight: float):
        if not float(weight) > 0.0:
            raise ValueError(f"jacobian weight={weight!r}; accepted: a number > 0")
        self.weight = float(weight)

    def __call__(self, teacher_gradient, student_gradient):
        def unit(gradient):
            flat = tf.reshape(tf.cast(gradient, tf.float32), [tf.shape(gradient)[0], -1])
            return tf.math.l2_normalize(flat, axis=1)
        return tf.reduce_sum(tf.square(unit(student_gradient) - tf.stop_gradient(unit(teacher_gradient))), axis=1)
