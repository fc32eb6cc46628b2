"""`Distiller`: a keras.Model whose fit() trains a student to match a frozen teacher.

Per step the teacher runs once (training=False) and the student runs once, through a single
multi-output "tap" model that returns its output and every distilled intermediate feature.
Keras' own `keras.distillation.Distiller` runs the student twice when features are distilled;
this one does not.

    loss = (1 - w) * distill(student, teacher) + w * own(student, target) + sum_i lambda_i * term_i

with w = `student_loss_weight`, Keras' name and meaning (keras.distillation.Distiller), and each
term_i a kd_tf.losses.DistillationTerm (features through adapters, attention maps, softened
logits, input-gradients, or a user's own subclass).

Nothing here is task-specific: the student's own objective is passed in (kd_tf.objectives).
Generators fit the same step: with a `latent_sampler` (kd_tf.generators.LatentSampler) the batch holds
real images, which become the objective's targets, and the teacher and the student both get the
same latent z drawn inside the step; an objective that trains a model of its own (a GAN
discriminator) gets its update after the student's, with that step's student outputs.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from kd_tf.distribute import global_batch_size, mean_results
from kd_tf.errors import InputError
from kd_tf.model_io import require_trainable
from kd_tf.losses import AttentionTerm, FeatureTerm, JacobianTerm, OutputTerm, from_keras, projected_input_gradient
from kd_tf.losses import deserialize_loss, serialize_loss
from kd_tf.objectives import Reconstruction
from kd_tf.precision import with_loss_scaling
from kd_tf.schedules import Complement, as_student_loss_weight, complement
from kd_tf.schedules import deserialize as schedule_from_config
from kd_tf.tiling import Tiled, fixed_size
from kd_tf.teacher_cache import INPUTS_KEY, TEACHER_OUTPUTS_KEY, is_cached_batch, split_inputs


def _tap_model(model: keras.Model, layer_names, role: str) -> keras.Model:
    """model's output plus the outputs of `layer_names`, from one forward pass."""
    if not layer_names:
        return model                     # output-only: any model works, subclassed ones too
    available = [layer.name for layer in model.layers]
    missing = [name for name in layer_names if name not in available]
    if missing:
        raise InputError(f"{role} has no layer named {missing}; available layers: {available}")
    if layer_names and not hasattr(model, "inputs"):
        raise InputError(f"{role} is not a functional model, so its features cannot be tapped")
    outputs = [model.outputs[0]] + [model.get_layer(name).output for name in layer_names]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_taps")


def _probe_inputs(model, probe_size: int, fallback):
    """Zeros shaped like each of a multi-input model's inputs (unknown sizes -> probe_size, batch
    1), so that a teacher that takes more than the student (a noise level), or two models of
    (image, time) (kd_tf.diffusion.progressive), can be checked up front."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) < 2:
        return fallback
    return [tf.zeros([1] + [probe_size if d is None else d for d in tuple(t.shape)[1:]], t.dtype) for t in inputs]


def _input_channels(model):
    """Channels of a built model's image input (the size of a latent vector input); None for a
    subclassed model never called. A multi-input model's first input is its image."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    return shape[0][-1] if isinstance(shape, list) else shape[-1]


def _takes_vectors(model) -> bool:
    """Whether the model's input is a (batch, size) vector: a generator's latent z."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, TypeError):
        return False
    return len(shape) == 2 and not isinstance(shape[0], (tuple, list))   # not a two-input model's shapes


def _as_metric(metric):
    """A Keras metric object from what compile(metrics=...) takes: a name, a function or a Metric."""
    if isinstance(metric, keras.metrics.Metric):
        return metric
    function = keras.metrics.get(metric)
    if isinstance(function, keras.metrics.Metric):     # logged under the name asked for ("mse", not
        return type(function)(name=metric) if isinstance(metric, str) else function   # "mean_squared_error")
    name = metric if isinstance(metric, str) else getattr(function, "__name__", "metric")
    return keras.metrics.MeanMetricWrapper(function, name=name)


def _with_weight(pair):
    if len(pair) not in (2, 3):
        raise InputError(f"layer pair {pair!r}; expected (teacher layer, student layer[, weight])")
    return (pair[0], pair[1], float(pair[2]) if len(pair) == 3 else 1.0)


@keras.saving.register_keras_serializable(package="kd_tf")
class Distiller(keras.Model):
    """Trains `student` to imitate `teacher` with `fit()`; `call()` runs the student.

    Args:
      teacher: any Keras model; it is frozen here even if the caller forgot.
      student: a Keras model with the teacher's input and output shapes.
      student_loss_weight: weight w of the student's own loss, a float in [0, 1] or a schedule of the
        optimizer step (kd_tf.schedules); the output-matching term gets 1 - w. Default 0.5.
      output_loss: the distance between student and teacher outputs: "mse", "l1", any Keras loss
        by name or object (keras.losses.Huber(0.1)), or a callable (kd_tf.losses.output_loss).
      features: (teacher layer, student layer[, weight]) pairs; features of different channel
        counts go through a trainable 1x1 adapter owned by the Distiller. Spatial sizes must
        agree (a clear error otherwise: resizing would silently change what is being taught).
      attention: (teacher layer, student layer[, weight]) pairs matched by attention transfer
        (normalised channel-pooled energy maps; channel counts may differ, no adapter).
      objective: the student's own loss against the targets (default: MSE reconstruction).
        With unlabeled data (no targets) this term is dropped and w is taken as 0.
      probe_size: side of the zero image used once to check shapes up front.
      jacobian: weight of Jacobian matching (Srinivas & Fleuret, 2018; kd_tf.losses.JacobianTerm),
        0 for none: the input-gradients of a random projection of both outputs should agree. It
        costs a backward pass through the teacher and a second-order pass through the student.
      jacobian_seed: seed of the random projections (one per step, shared by both models).
      terms: more kd_tf.losses.DistillationTerm instances (a user's own subclass), or
        keras.distillation FeatureDistillation / LogitsDistillation objects (kd_tf.losses.from_keras).
      alpha: deprecated, 1 - student_loss_weight (kd_tf's name before it followed Keras).
      latent_sampler: for generators: a callable (local batch size, step) -> z that the step calls
        to draw the latents that teacher and student share (kd_tf.generators.LatentSampler); the
        batches then hold real images, passed to the objective as targets.

    A teacher with a fixed input size (and no feature pairs) is wrapped in kd_tf.tiling.Tiled, so
    it teaches patches of any size on overlapping tiles of its own.

    Inputs are images, or {"inputs": images, "teacher_outputs": outputs} batches from
    kd_tf.teacher_cache, in which case the teacher's forward pass is skipped (output terms only),
    or {"inputs": images, "teacher_inputs": x} when the teacher takes more than the student (a
    non-blind denoiser's noise level beside the image: kd_tf.images.patch_dataset(noise_level_for_teacher=True)).

    Under tf.distribute (build and compile it in `strategy.scope()`, see kd_tf.distribute) the
    loss is the mean over the global batch and the logged terms are global means, so R replicas
    with a global batch B take the steps of one device with batch B.

    >>> import numpy as np
    >>> from kd_tf.denoise.nets import build_unet
    >>> teacher, student = build_unet((8, 16), 1, name="t"), build_unet((4, 8), 1, name="s")
    >>> distiller = Distiller(teacher, student, student_loss_weight=0.5, features=[("dec0", "dec0", 0.1)])
    >>> distiller.compile(optimizer="adam", metrics=["mae"])
    >>> x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    >>> sorted(distiller.fit(x, x, epochs=1, verbose=0).history)
    ['distill', 'feature_dec0', 'loss', 'mae', 'own', 'psnr', 'student_loss_weight']
    """

    def __init__(self, teacher: keras.Model, student: keras.Model, student_loss_weight=None, output_loss="mse",
                 features=(), attention=(), objective=None, probe_size: int = 64, latent_sampler=None,
                 jacobian: float = 0.0, jacobian_seed: int = 0, terms=(), name: str = "distiller",
                 alpha=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._init_args = {"features": [list(_with_weight(p)) for p in features],
                           "attention": [list(_with_weight(p)) for p in attention], "probe_size": int(probe_size),
                           "jacobian": float(jacobian), "jacobian_seed": int(jacobian_seed)}
        teacher_layers = [p[0] for p in list(features) + list(attention)] + [
            getattr(t, "teacher_layer", getattr(t, "teacher_layer_name", None)) for t in terms]
        if fixed_size(teacher) is not None and fixed_size(student) is None and not any(teacher_layers):
            # a teacher exported for one input size teaches patches of any size tile by tile
            teacher = Tiled(teacher)
        require_trainable(student, "student")
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.student_loss_weight = as_student_loss_weight(student_loss_weight, alpha)
        if hasattr(self.student_loss_weight, "build"):   # adaptive: its state is checkpointed with the student
            self.student_loss_weight.build()
            self.weight_state = list(self.student_loss_weight.variables)
        self.jacobian_seed = int(jacobian_seed)
        self.output_loss_kind = output_loss
        self.output_term = OutputTerm(distance=output_loss, name="distill")
        self.objective = objective if objective is not None else Reconstruction("mse")
        self.latent_sampler = latent_sampler
        # a model the objective trains (a discriminator) and its optimizer become attributes, so that
        # save_weights / BackupAndRestore checkpoint and restore them with the student
        for key, value in (objective.trackables() if hasattr(objective, "trackables") else {}).items():
            setattr(self, f"objective_{key}", value)

        user_terms = [from_keras(term) for term in terms]
        self._init_args["terms"] = user_terms
        layer_terms = ([FeatureTerm(*_with_weight(p)) for p in features] + [AttentionTerm(*_with_weight(p)) for p in attention]
                       + [term for term in user_terms if not getattr(term, "input_gradient", False)])
        gradient_terms = [term for term in user_terms if getattr(term, "input_gradient", False)]
        if jacobian:
            gradient_terms.append(JacobianTerm(jacobian))
        if len(gradient_terms) > 1:
            raise InputError(f"one input-gradient term at most; got {gradient_terms}")
        self.jacobian_term = gradient_terms[0] if gradient_terms else None
        names = [term.name for term in layer_terms + gradient_terms]
        if len(set(names)) != len(names) or {"distill", "own", "loss"} & set(names):
            raise InputError(f"distillation terms need distinct names other than loss/distill/own; got {names}")
        teacher_layers = list(dict.fromkeys(t.teacher_layer for t in layer_terms if t.teacher_layer))
        student_layers = list(dict.fromkeys(t.student_layer for t in layer_terms if t.student_layer))
        self.teacher_taps = _tap_model(teacher, teacher_layers, "teacher")
        self.student_taps = _tap_model(student, student_layers, "student")
        # where each term's tensors are in the taps' outputs (0: the output itself)
        self._tap_index = [(teacher_layers.index(t.teacher_layer) + 1 if t.teacher_layer else 0,
                            student_layers.index(t.student_layer) + 1 if t.student_layer else 0) for t in layer_terms]
        self.layer_terms = layer_terms
        self._check_shapes_and_build_terms(probe_size)
        self.adapters = [term.adapter for term in self.layer_terms if term.adapter is not None]

        self.total_tracker = keras.metrics.Mean(name="loss")
        self.distill_tracker = keras.metrics.Mean(name="distill")
        self.own_tracker = keras.metrics.Mean(name="own")
        self.layer_trackers = [keras.metrics.Mean(name=term.name) for term in self.matched_terms]
        self.weight_tracker = keras.metrics.Mean(name="student_loss_weight")
        metric_name = getattr(self.objective, "metric_name", None)
        self.quality_tracker = keras.metrics.Mean(name=metric_name) if metric_name else None
        self.objective_trackers = list(getattr(self.objective, "metrics", []))
        self.student_metrics = []           # compile(metrics=...): on the student's predictions
        self.built = True                   # every sub-model is built; lets BackupAndRestore save at once

    @property
    def alpha(self):
        """Deprecated: the weight of the output-matching term, 1 - student_loss_weight."""
        warnings.warn("Distiller.alpha is deprecated: use Distiller.student_loss_weight (alpha = 1 - it)",
                      DeprecationWarning, stacklevel=2)
        return Complement(self.student_loss_weight)

    def _check_shapes_and_build_terms(self, probe_size):
        channels, teacher_channels = _input_channels(self.student), _input_channels(self.teacher)
        if channels is None:
            raise InputError("the student has no known input shape; build it on a keras.Input first")
        vectors = _takes_vectors(self.student)
        if teacher_channels is not None and teacher_channels != channels:
            if vectors:
                raise InputError(f"latent size differs: teacher takes z of size {teacher_channels}, "
                                 f"student takes z of size {channels}")
            raise InputError(f"teacher takes {teacher_channels} input channels, student takes {channels}")
        sampled = getattr(self.latent_sampler, "latent_dim", channels)
        if self.latent_sampler is not None and (not vectors or sampled != channels):
            raise InputError(f"the latent sampler draws z of size {sampled}, but the student takes inputs of "
                             f"shape {tuple(self.student.input_shape)}; expected (None, {sampled})")
        probe = tf.zeros((1, channels) if vectors else (1, probe_size, probe_size, channels))
        teacher_out = tf.nest.flatten(self.teacher_taps(_probe_inputs(self.teacher, probe_size, probe),
                                                        training=False))
        student_out = tf.nest.flatten(self.student_taps(_probe_inputs(self.student, probe_size, probe),
                                                        training=False))
        where = "one latent vector" if vectors else f"a {probe_size}x{probe_size} input"
        if tuple(teacher_out[0].shape) != tuple(student_out[0].shape):
            raise InputError(f"teacher output shape {tuple(teacher_out[0].shape)} differs from student "
                             f"output shape {tuple(student_out[0].shape)} on {where}")
        if hasattr(self.objective, "check_prediction_shape"):
            self.objective.check_prediction_shape(tuple(student_out[0].shape))
        for term, (t, s) in zip(self.layer_terms, self._tap_index):
            term.build(tuple(teacher_out[t].shape), tuple(student_out[s].shape))

    # -- Keras API -------------------------------------------------------------------------

    def get_config(self):
        """Everything to rebuild this Distiller: `distiller.save("d.keras")` stores the teacher and
        the student (architecture and weights, the teacher's frozen), the adapters' weights, the
        weight's schedule (with an adaptive weight's state) and the terms; `keras.saving.load_model` gives it
        back, ready to `compile()` and continue. The student alone still saves as `student.save()`.

        A generator's latent sampler and an adversarial objective (which trains a discriminator with
        its own optimizer) are not serialized: save the student and the discriminator instead.
        """
        if self.latent_sampler is not None or not hasattr(self.objective, "get_config") \
                or getattr(self.objective, "name", None) != "reconstruction":
            raise NotImplementedError(
                f"this Distiller cannot be saved whole: its objective ({type(self.objective).__name__}) or latent "
                f"sampler is not serializable; save the student (distiller.student.save(...)) and, for a GAN, "
                f"the discriminator")
        if not hasattr(self.student_loss_weight, "get_config"):
            raise NotImplementedError(f"student_loss_weight {self.student_loss_weight!r} is a plain callable; use a "
                                      f"kd_tf.schedules schedule (Constant, LinearRamp, CosineRamp, LossRatio) to "
                                      f"save the Distiller")
        config = super().get_config()
        config.update(self._init_args, output_loss=serialize_loss(self.output_loss_kind),
                      metrics_to_compile=[keras.saving.serialize_keras_object(m) for m in self.student_metrics])
        config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                      student=keras.saving.serialize_keras_object(self.student),
                      terms=[keras.saving.serialize_keras_object(t) for t in self._init_args["terms"]],
                      student_loss_weight=self.student_loss_weight.get_config(), objective=self.objective.get_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if "alpha" in config:              # saved before the rename: alpha weighed the output term
            config["student_loss_weight"] = complement(schedule_from_config(config.pop("alpha")))
        else:
            config["student_loss_weight"] = schedule_from_config(config["student_loss_weight"])
        config["terms"] = [keras.saving.deserialize_keras_object(t) for t in config.get("terms", [])]
        objective = config.pop("objective")
        config["objective"] = Reconstruction(deserialize_loss(objective.get("kind", "mse")))
        config["output_loss"] = deserialize_loss(config["output_loss"])
        metrics = [keras.saving.deserialize_keras_object(m) for m in config.pop("metrics_to_compile", [])]
        config.pop("trainable", None)
        config.pop("dtype", None)
        distiller = cls(**config)
        distiller.student_metrics = metrics
        return distiller

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Like keras.Model.compile, with a Distiller's meaning for `loss` and `metrics`:

        - `loss`: the student's own reconstruction loss against the targets ("mae", "huber", a
          keras.losses.Loss, a callable), replacing the default MSE; refused for a Distiller whose
          objective is not reconstruction (a GAN's adversarial objective).
        - `metrics`: Keras metrics computed on the student's predictions against the targets, logged
          by name beside the loss terms (`val_` ones on validation data); none on unlabeled batches.
        - `optimizer`: wrapped in a LossScaleOptimizer when the student computes in float16.
        """
        if loss is not None:
            if getattr(self.objective, "name", None) != "reconstruction":
                raise InputError(f"compile(loss={loss!r}) sets the student's reconstruction loss, but this "
                                 f"Distiller's objective is {type(self.objective).__name__}; configure that "
                                 f"objective instead")
            if isinstance(loss, (list, dict)):
                raise InputError(f"compile(loss={loss!r}): the student has one output; give one loss")
            self.objective = Reconstruction(loss)
        self.student_metrics = [_as_metric(m) for m in (metrics or [])]
        # a student computing in float16 needs its loss scaled (kd_tf.precision)
        super().compile(optimizer=with_loss_scaling(optimizer, self.student), **kwargs)

    def call(self, inputs, training=False):
        return self.student(split_inputs(inputs)[0], training=training)

    @property
    def metrics(self):
        return ([self.total_tracker, self.distill_tracker, self.own_tracker, *self.layer_trackers,
                 self.weight_tracker] + ([self.quality_tracker] if self.quality_tracker else [])
                + self.objective_trackers + list(getattr(self, "student_metrics", [])))

    @property
    def matched_terms(self):
        """The terms beside the output term: feature, attention and user terms, then Jacobian
        matching (kd_tf.losses.DistillationTerm instances)."""
        return self.layer_terms + ([self.jacobian_term] if self.jacobian_term else [])

    @property
    def trained_variables(self):
        """What the optimizer updates: the student and the adapters, never the teacher."""
        variables = list(self.student.trainable_variables)
        for adapter in self.adapters:
            variables.extend(adapter.trainable_variables)
        return variables

    def panels(self, inputs) -> dict:
        """Teacher and student outputs for image grids (kd_tf.callbacks)."""
        student_inputs, teacher_inputs = split_inputs(inputs)
        return {"teacher": self.teacher(teacher_inputs, training=False),
                "student": self.student(student_inputs, training=False)}

    # -- the step --------------------------------------------------------------------------

    def _teacher_outputs(self, inputs):
        """(student inputs, [teacher output, *teacher features]): cached, or one teacher pass."""
        if is_cached_batch(inputs):
            if any(t.teacher_layer for t in self.layer_terms) or self.jacobian_term:
                raise InputError("cached teacher outputs hold only the teacher's output; feature, "
                                 "attention and Jacobian terms need the live teacher (pass plain images)")
            return inputs[INPUTS_KEY], [tf.cast(inputs[TEACHER_OUTPUTS_KEY], tf.float32)]
        inputs, teacher_inputs = split_inputs(inputs)
        if self.jacobian_term is not None:
            if teacher_inputs is not inputs:
                raise InputError("Jacobian matching needs a teacher that takes the student's inputs; this "
                                 "batch gives the teacher inputs of its own ('teacher_inputs')")
            gradient, outputs = projected_input_gradient(
                lambda x: self.teacher_taps(x, training=False), inputs, self._projection)
            outputs = tf.nest.flatten(outputs) + [gradient]
        else:
            outputs = tf.nest.flatten(self.teacher_taps(teacher_inputs, training=False))
        return inputs, [tf.stop_gradient(tf.cast(t, tf.float32)) for t in outputs]

    def _projection(self, shape):
        """This step's random output direction for Jacobian matching, the same for both models."""
        step = tf.cast(self.optimizer.iterations, tf.int32)
        return tf.random.stateless_normal(shape, seed=tf.stack([tf.constant(self.jacobian_seed), step]))

    def _student_outputs(self, inputs, training):
        """[student output, *student features(, input-gradient for Jacobian matching)]: one pass."""
        if self.jacobian_term is None:
            return tf.nest.flatten(self.student_taps(inputs, training=training))
        gradient, outputs = projected_input_gradient(
            lambda x: self.student_taps(x, training=training), inputs, self._projection)
        return tf.nest.flatten(outputs) + [gradient]

    def _terms(self, inputs, targets, sample_weight, training):
        inputs, teacher_out = self._teacher_outputs(inputs)
        student_out = self._student_outputs(inputs, training)
        prediction = tf.cast(student_out[0], tf.float32)
        if sample_weight is not None:
            sample_weight = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)

        def reduce(per_sample):
            """This replica's mean; the trackers weight it by the replica's batch (see _track)."""
            if sample_weight is not None:
                per_sample = per_sample * sample_weight
            return tf.reduce_mean(per_sample)

        weight = tf.cast(self.student_loss_weight(self.optimizer.iterations), tf.float32)
        distill = self.output_term(teacher_out[0], prediction)
        if targets is None:
            weight, own = tf.constant(0.0), tf.zeros_like(distill)
        else:
            own = self.objective(inputs, targets, prediction)
        values = [term(teacher_out[t], student_out[s]) for term, (t, s) in zip(self.layer_terms, self._tap_index)]
        if self.jacobian_term is not None:          # the input-gradients come last in both lists
            values.append(self.jacobian_term(teacher_out[-1], student_out[-1]))
        per_sample = (1.0 - weight) * distill + weight * own
        for term, value in zip(self.matched_terms, values):
            per_sample = per_sample + term.weight * value
        return {"loss": reduce(per_sample), "distill": reduce(distill), "own": reduce(own),
                "features": [reduce(value) for value in values], "weight": weight, "inputs": inputs,
                "prediction": prediction, "per_sample": per_sample, "sample_weight": sample_weight}

    def _track(self, terms, targets):
        """Each tracker sums value x samples and samples; under tf.distribute these sums are added
        over the replicas when read, so the logs are means over the global batch (and over the
        epoch so far), whatever the number of replicas or the size of the last batch."""
        samples = tf.cast(tf.shape(terms["per_sample"])[0], tf.float32)
        self.total_tracker.update_state(terms["loss"], sample_weight=samples)
        self.distill_tracker.update_state(terms["distill"], sample_weight=samples)
        self.own_tracker.update_state(terms["own"], sample_weight=samples)
        for tracker, value in zip(self.layer_trackers, terms["features"]):
            tracker.update_state(value, sample_weight=samples)
        self.weight_tracker.update_state(terms["weight"])
        if targets is not None and self.quality_tracker is not None:
            self.quality_tracker.update_state(self.objective.metric(terms["inputs"], targets, terms["prediction"]),
                                              sample_weight=samples)
        if targets is not None:
            for metric in getattr(self, "student_metrics", []):
                metric.update_state(tf.cast(targets, tf.float32), terms["prediction"],
                                    sample_weight=terms["sample_weight"])
        return mean_results(self.metrics)

    def _latents(self, inputs, targets):
        """(inputs, targets) of the step: as given, or (z drawn for this step, the real images)."""
        if self.latent_sampler is None:
            return inputs, targets
        return self.latent_sampler(tf.shape(inputs)[0], self.optimizer.iterations), inputs

    def train_step(self, data):
        inputs, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, targets = self._latents(inputs, targets)
        variables = self.trained_variables
        with tf.GradientTape() as tape:
            terms = self._terms(inputs, targets, sample_weight, training=True)
            # optimizer.apply() sums gradients over tf.distribute replicas: each replica takes its
            # share of the global-batch mean (its loss / replicas for equal batches; 1 replica: the mean)
            loss = tf.nn.compute_average_loss(terms["per_sample"], sample_weight=terms["sample_weight"],
                                              global_batch_size=global_batch_size(tf.shape(terms["per_sample"])[0]))
            # float16 mixed precision: a LossScaleOptimizer (which compile() makes under a
            # mixed_float16 policy) scales the loss up so small gradients do not flush to zero in
            # float16, and apply() scales them back down; other optimizers leave the loss as it is
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        if hasattr(self.student_loss_weight, "observe") and targets is not None:   # adaptive: learns from the terms
            self.student_loss_weight.observe(terms["distill"], terms["own"])
        if hasattr(self.objective, "discriminator_step"):    # its own model's phase, on this step's outputs
            self.objective.discriminator_step(targets, terms["prediction"])
        return self._track(terms, targets)

    def test_step(self, data):
        inputs, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, targets = self._latents(inputs, targets)
        return self._track(self._terms(inputs, targets, sample_weight, training=False), targets)
