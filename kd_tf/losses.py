"""Distillation terms: how far the student is from the teacher, per sample.

Every term is a `DistillationTerm` (outputs, features through an adapter, attention maps,
softened logits, input-gradients) and returns one value per sample (shape [batch]); the
Distiller weights and averages them, so `sample_weight` works the same way for every term.
`from_keras` turns keras.distillation's loss objects into the matching terms.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from kd_tf.errors import InputError

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
            raise InputError(f"output loss {kind!r}; accepted: {', '.join(OUTPUT_LOSSES)}, any Keras loss name "
                             f"(e.g. 'huber', 'log_cosh'), a keras.losses.Loss or a callable") from None
    if isinstance(kind, keras.losses.Loss):
        loss = kind
        return lambda target, prediction: _per_sample_mean(
            loss.call(tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)))
    if callable(kind):
        return lambda target, prediction: _per_sample_mean(
            kind(tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)))
    raise InputError(f"output loss {kind!r}; accepted: {', '.join(OUTPUT_LOSSES)}, any Keras loss name, "
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


@keras.saving.register_keras_serializable(package="kd_tf")
class DistillationTerm:
    """One term of the distillation loss: a per-sample distance between a teacher tensor and a
    student tensor, times `weight`. The base class of every term the Distiller adds.

    `teacher_layer` and `student_layer` name the layers whose outputs are compared; None means
    the model's output. The Distiller taps every named layer from its single forward pass of each
    model, calls `build(teacher_shape, student_shape)` once with the tapped shapes (check them
    there, create trainable state such as an adapter there) and `call(teacher, student)` every
    step; `call` returns one value per sample (shape [batch]). The teacher tensor is already
    detached from the graph and cast to float32; the student tensor is as the student computed it.

    A new term is a short subclass (Gram matrices of a feature map, style-transfer style):

    >>> import numpy as np, tensorflow as tf
    >>> class GramTerm(DistillationTerm):
    ...     def call(self, teacher, student):
    ...         def gram(f):
    ...             f = tf.reshape(tf.cast(f, tf.float32), [tf.shape(f)[0], -1, f.shape[-1]])
    ...             return tf.matmul(f, f, transpose_a=True) / tf.cast(tf.shape(f)[1], tf.float32)
    ...         return tf.reduce_mean(tf.square(gram(teacher) - gram(student)), axis=[1, 2])
    >>> term = GramTerm("enc0", "enc0", weight=0.1)
    >>> term.build((None, 8, 8, 4), (None, 8, 8, 4))
    >>> features = np.ones((2, 8, 8, 4), np.float32)
    >>> term(features, features).numpy().tolist()
    [0.0, 0.0]

    Pass it as `Distiller(..., terms=[GramTerm("enc0", "enc0", weight=0.1)])`; its per-step
    mean is logged under `term.name` ("gramterm_enc0" here). Register the subclass with
    `@keras.saving.register_keras_serializable()` to save a Distiller that uses it.
    """

    adapter = None                 # a trainable layer the Distiller owns and trains (never exported)

    def __init__(self, teacher_layer: str | None = None, student_layer: str | None = None, weight: float = 1.0,
                 name: str | None = None):
        if not float(weight) >= 0.0:
            raise InputError(f"{type(self).__name__} weight={weight!r}; accepted: a number >= 0")
        self.teacher_layer, self.student_layer, self.weight = teacher_layer, student_layer, float(weight)
        self.name = name or self._default_name()

    def _default_name(self):
        prefix = type(self).__name__.lower().removesuffix("term") or "term"
        if self.teacher_layer is None and self.student_layer is None:
            return f"{prefix}_output"
        if self.teacher_layer == self.student_layer:
            return f"{prefix}_{self.teacher_layer}"
        return f"{prefix}_{self.teacher_layer or 'output'}__{self.student_layer or 'output'}"

    def build(self, teacher_shape, student_shape):
        """Called once with both tensors' shapes (batch 1 probe): validate, make state."""

    def call(self, teacher, student):
        raise NotImplementedError(f"{type(self).__name__}.call(teacher, student) must return one value per sample")

    def __call__(self, teacher, student):
        return self.call(teacher, student)

    def get_config(self):
        return {"teacher_layer": self.teacher_layer, "student_layer": self.student_layer, "weight": self.weight,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.teacher_layer!r}, {self.student_layer!r}, weight={self.weight})"


def _check_same_positions(term, teacher_shape, student_shape):
    if tuple(teacher_shape[1:-1]) != tuple(student_shape[1:-1]):
        raise InputError(f"{term.name} ({term.teacher_layer!r}, {term.student_layer!r}): spatial sizes differ, "
                         f"teacher {tuple(teacher_shape[1:-1])} vs student {tuple(student_shape[1:-1])}; "
                         f"pair layers at the same resolution")


@keras.saving.register_keras_serializable(package="kd_tf")
class OutputTerm(DistillationTerm):
    """Any distance (kd_tf.losses.output_loss: "mse", "l1", a Keras loss, a callable) between two
    tensors of the same shape; by default the two models' outputs.

    >>> import numpy as np
    >>> OutputTerm(distance="l1")(np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2, 3))).numpy().tolist()
    [1.0]
    """

    def __init__(self, teacher_layer=None, student_layer=None, weight: float = 1.0, distance="mse", name=None):
        self.distance_kind = distance
        self._distance = output_loss(distance)
        super().__init__(teacher_layer, student_layer, weight, name)

    def _default_name(self):
        return "output" if self.teacher_layer is None and self.student_layer is None else super()._default_name()

    def build(self, teacher_shape, student_shape):
        if tuple(teacher_shape) != tuple(student_shape):
            raise InputError(f"{self.name}: teacher shape {tuple(teacher_shape)} differs from student shape "
                             f"{tuple(student_shape)}; a FeatureTerm adapts channel counts")

    def call(self, teacher, student):
        return self._distance(teacher, student)

    def get_config(self):
        return {**super().get_config(), "distance": serialize_loss(self.distance_kind)}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "distance": deserialize_loss(config["distance"])})


@keras.saving.register_keras_serializable(package="kd_tf")
class FeatureTerm(OutputTerm):
    """One (teacher layer, student layer) pair matched with a distance (MSE by default), through
    a 1x1 adapter when the channel counts differ.

    The adapter maps the student's channels to the teacher's; it is trained with the student
    but owned by the Distiller, so it never reaches the exported student.
    """

    def build(self, teacher_shape, student_shape):
        _check_same_positions(self, teacher_shape, student_shape)
        if teacher_shape[-1] != student_shape[-1] and self.adapter is None:
            self.adapter = layers.Conv2D(teacher_shape[-1], 1, name=f"adapter_{self.name}", dtype="float32")
            self.adapter.build((None, None, None, student_shape[-1]))

    def call(self, teacher_feature, student_feature):
        student_feature = tf.cast(student_feature, tf.float32)
        if self.adapter is not None:
            student_feature = self.adapter(student_feature)
        return self._distance(tf.stop_gradient(teacher_feature), student_feature)


def attention_map(features):
    """Spatial attention of a feature map (Zagoruyko & Komodakis, 2017): the channel mean of
    squared activations, flattened and L2-normalised per sample, so teacher and student maps
    compare whatever their channel counts and scales."""
    features = tf.cast(features, tf.float32)
    energy = tf.reduce_mean(tf.square(features), axis=-1)
    flat = tf.reshape(energy, [tf.shape(energy)[0], -1])
    return tf.math.l2_normalize(flat, axis=1)


@keras.saving.register_keras_serializable(package="kd_tf")
class AttentionTerm(DistillationTerm):
    """Attention transfer between one teacher layer and one student layer; no adapter needed.

    The per-sample loss is the mean squared difference of the normalised maps, times the
    number of positions, so that its size does not shrink with the image size.
    """

    def build(self, teacher_shape, student_shape):
        _check_same_positions(self, teacher_shape, student_shape)

    def call(self, teacher_feature, student_feature):
        teacher_map = tf.stop_gradient(attention_map(teacher_feature))
        student_map = attention_map(student_feature)
        return tf.reduce_sum(tf.square(teacher_map - student_map), axis=1)


@keras.saving.register_keras_serializable(package="kd_tf")
class LogitsTerm(DistillationTerm):
    """Hinton et al.'s (2015) softened-logits term: KL(softmax(t / T) || softmax(s / T)) x T^2 over
    the last axis, averaged over any other positions (per-pixel class logits of a segmentation
    model work too). Outputs by default. What `keras.distillation.LogitsDistillation` computes
    with its default KL loss, per sample.

    >>> import numpy as np
    >>> logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    >>> LogitsTerm(temperature=2.0)(logits, logits).numpy().round(6).tolist()
    [0.0]
    """

    def __init__(self, teacher_layer=None, student_layer=None, weight: float = 1.0, temperature: float = 3.0,
                 name=None):
        if not float(temperature) > 0:
            raise InputError(f"LogitsTerm temperature={temperature!r}; accepted: a number > 0")
        self.temperature = float(temperature)
        super().__init__(teacher_layer, student_layer, weight, name)

    def build(self, teacher_shape, student_shape):
        if tuple(teacher_shape) != tuple(student_shape):
            raise InputError(f"{self.name}: teacher logits {tuple(teacher_shape)} vs student logits "
                             f"{tuple(student_shape)}; they must have the same shape")

    def call(self, teacher, student):
        teacher = tf.nn.log_softmax(tf.cast(teacher, tf.float32) / self.temperature, axis=-1)
        student = tf.nn.log_softmax(tf.cast(student, tf.float32) / self.temperature, axis=-1)
        kl = tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)
        return _per_sample_mean(kl[..., None]) * self.temperature ** 2

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


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


@keras.saving.register_keras_serializable(package="kd_tf")
class JacobianTerm(DistillationTerm):
    """Jacobian matching (Srinivas & Fleuret, 2018): the student's input-gradient of a random
    projection of its output should point where the teacher's does. Per sample: the squared
    distance of the two L2-normalised gradients (between 0 and 4), so the term does not depend on
    how large either model's gradients are.

    Cost: one extra backward pass through the teacher and a second-order pass through the
    student, per step (measured in the ablation, benchmarks/ablation.py)."""

    input_gradient = True          # compares input-gradients, not layer outputs (the Distiller computes them)

    def __init__(self, weight: float, name: str = "jacobian"):
        if not float(weight) > 0.0:
            raise InputError(f"jacobian weight={weight!r}; accepted: a number > 0")
        super().__init__(None, None, weight, name)

    def get_config(self):
        return {"weight": self.weight, "name": self.name}

    def call(self, teacher_gradient, student_gradient):
        def unit(gradient):
            flat = tf.reshape(tf.cast(gradient, tf.float32), [tf.shape(gradient)[0], -1])
            return tf.math.l2_normalize(flat, axis=1)
        return tf.reduce_sum(tf.square(unit(student_gradient) - tf.stop_gradient(unit(teacher_gradient))), axis=1)


def from_keras(loss, weight: float = 1.0) -> DistillationTerm:
    """The kd_tf term for one of keras.distillation's loss objects, where the meaning matches:
    FeatureDistillation(loss, teacher_layer_name, student_layer_name) -> FeatureTerm (outputs when
    no layer is named; an adapter when channel counts differ, where Keras would fail) and
    LogitsDistillation(temperature, "kl_divergence") -> LogitsTerm. kd_tf terms pass through.

    >>> import keras
    >>> from_keras(keras.distillation.FeatureDistillation("mae", "enc1", "enc1"), weight=0.5)
    FeatureTerm('enc1', 'enc1', weight=0.5)
    """
    if isinstance(loss, DistillationTerm):
        return loss
    from keras.distillation import FeatureDistillation, LogitsDistillation

    if isinstance(loss, (FeatureDistillation, LogitsDistillation)):
        if isinstance(loss.loss, (list, tuple, dict)):
            raise InputError(f"{type(loss).__name__} with one loss per output ({loss.loss!r}): kd_tf students have one "
                             f"output; give one loss")
    if isinstance(loss, FeatureDistillation):
        return FeatureTerm(loss.teacher_layer_name, loss.student_layer_name, weight, distance=loss.loss)
    if isinstance(loss, LogitsDistillation):
        # its default, "kl_divergence", arrives as the plain function, which Keras 3.15 then applies to
        # the tempered logits themselves, not to their softmax: kd_tf takes the documented meaning
        if not (isinstance(loss.loss, keras.losses.KLDivergence) or loss.loss is keras.losses.kl_divergence):
            raise InputError(f"LogitsDistillation(loss={loss.loss!r}): kd_tf takes it with its KL divergence (a "
                             f"LogitsTerm); for another distance between logits use FeatureTerm(distance=...)")
        return LogitsTerm(weight=weight, temperature=loss.temperature)
    raise InputError(f"distillation term {loss!r}; accepted: a kd_tf.losses.DistillationTerm, or "
                     f"keras.distillation.FeatureDistillation / LogitsDistillation")
