"""Distillation terms: how far the student is from the teacher, per sample.

Every function returns one value per sample (shape [batch]); the Distiller weights and
averages them, so `sample_weight` works the same way for every term.
"""

from __future__ import annotations

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


def output_loss(kind: str):
    """The distance between student and teacher outputs (or student and clean image)."""
    if kind == "mse":
        return squared_error
    if kind == "l1":
        return absolute_error
    raise ValueError(f"output loss {kind!r}; accepted: {', '.join(OUTPUT_LOSSES)}")


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
