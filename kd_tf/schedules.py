"""`student_loss_weight` as a function of the step: the weight of the student's own loss; the
output-matching term gets 1 minus it (Keras' `keras.distillation.Distiller(student_loss_weight=)`
and the keras.io distillation guide's meaning).

A schedule is any callable `step -> weight`; these are the ready-made ones. They work on
tensors, so `Distiller.train_step` evaluates them inside the compiled graph. Before the rename,
kd_tf called the other weight `alpha` (alpha = 1 - student_loss_weight): `alpha=` still works
with a DeprecationWarning.
"""

from __future__ import annotations

import math
import warnings

import keras
import tensorflow as tf

from kd_tf.errors import InputError


def _check_weight(name, value):
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name}={value!r}; accepted: a weight between 0 and 1")
    return float(value)


class Constant:
    """The same weight at every step (what a plain float means)."""

    def __init__(self, value: float):
        self.value = _check_weight("value", value)

    def __call__(self, step):
        return tf.constant(self.value, tf.float32)

    def get_config(self):
        return {"kind": "constant", "start": self.value}


class _Ramp:
    def __init__(self, start: float, end: float, steps: int, delay: int = 0):
        self.start = _check_weight("start", start)
        self.end = _check_weight("end", end)
        if int(steps) < 1 or int(delay) < 0:
            raise InputError(f"steps={steps!r}, delay={delay!r}; accepted: steps >= 1, delay >= 0")
        self.steps, self.delay = int(steps), int(delay)

    def _progress(self, step):
        step = tf.cast(step, tf.float32) - float(self.delay)
        return tf.clip_by_value(step / float(self.steps), 0.0, 1.0)

    def get_config(self):
        return {"kind": self.kind, "start": self.start, "end": self.end, "steps": self.steps, "delay": self.delay}


class LinearRamp(_Ramp):
    """The weight moves linearly from `start` to `end` over `steps` steps after `delay`, then stays."""

    kind = "linear"

    def __call__(self, step):
        return self.start + (self.end - self.start) * self._progress(step)


class CosineRamp(_Ramp):
    """Like LinearRamp but eased: half a cosine, flat at both ends."""

    kind = "cosine"

    def __call__(self, step):
        eased = 0.5 * (1.0 - tf.cos(math.pi * self._progress(step)))
        return self.start + (self.end - self.start) * eased


class LossRatio:
    """Adaptive weight from the training signal: student_loss_weight = distill / (distill + own),
    on bias-corrected moving averages of the two terms, so that both contribute equally to the
    loss whatever their scales. It is the stationary point of uncertainty weighting (Kendall et al., 2018), where each
    term's learned weight settles at 1 / its loss, without the extra trainable variables.

    It starts at `start` and is clipped to [minimum, maximum] so neither term is ever switched
    off. The Distiller calls `build()` (inside a tf.distribute scope, if any), tracks `variables`
    (so checkpoints carry the averages) and calls `observe(distill, own)` with every training
    step's means.
    """

    kind = "adaptive"

    def __init__(self, start: float = 0.5, momentum: float = 0.99, minimum: float = 0.05, maximum: float = 0.95):
        self.start = _check_weight("start", start)
        self.minimum, self.maximum = _check_weight("minimum", minimum), _check_weight("maximum", maximum)
        if not 0.0 <= float(momentum) < 1.0 or self.minimum > self.maximum:
            raise InputError(f"momentum={momentum!r}, minimum={minimum!r}, maximum={maximum!r}; accepted: "
                             f"0 <= momentum < 1 and minimum <= maximum")
        self.momentum = float(momentum)
        self.variables = []

    def build(self):
        if not self.variables:
            def state(name):   # every replica observes the same global means: any replica's copy will do
                return keras.Variable(0.0, dtype="float32", trainable=False, name=name,
                                      aggregation="only_first_replica")
            self.variables = [state("weight_distill_average"), state("weight_own_average"), state("weight_updates")]

    def _averages(self):
        distill, own, updates = self.variables
        correction = 1.0 - tf.pow(self.momentum, tf.maximum(updates, 1.0))
        return distill / correction, own / correction, updates

    def __call__(self, step):
        self.build()
        distill, own, updates = self._averages()
        ratio = tf.math.divide_no_nan(distill, distill + own)
        adaptive = tf.clip_by_value(ratio, self.minimum, self.maximum)
        return tf.where(updates > 0, adaptive, tf.constant(self.start, tf.float32))

    def observe(self, distill, own):
        self.build()
        values = tf.stack([tf.cast(distill, tf.float32), tf.cast(own, tf.float32)])
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            values = context.all_reduce("mean", values)
        distill_average, own_average, updates = self.variables
        distill_average.assign(self.momentum * distill_average + (1.0 - self.momentum) * values[0])
        own_average.assign(self.momentum * own_average + (1.0 - self.momentum) * values[1])
        updates.assign_add(1.0)

    def get_config(self):
        return {"kind": self.kind, "start": self.start, "momentum": self.momentum,
                "minimum": self.minimum, "maximum": self.maximum}


class Complement:
    """1 - another schedule: what an old `alpha` schedule means as a student_loss_weight."""

    def __init__(self, schedule):
        self.schedule = as_schedule(schedule)

    def __call__(self, step):
        return 1.0 - tf.cast(self.schedule(step), tf.float32)

    def get_config(self):
        return {"kind": "complement", "of": self.schedule.get_config()}


def as_schedule(weight):
    """A float becomes `Constant`; a callable is used as is."""
    if callable(weight):
        return weight
    return Constant(weight)


def complement(schedule):
    """1 - schedule, as the simplest schedule that says it: old alpha settings become weights.

    >>> complement(Constant(0.3)).get_config()
    {'kind': 'constant', 'start': 0.7}
    >>> complement(LinearRamp(0.9, 0.5, steps=10)).get_config()["start"]
    0.1
    """
    if isinstance(schedule, Constant):
        return Constant(round(1.0 - schedule.value, 12))
    if isinstance(schedule, _Ramp):
        return type(schedule)(round(1.0 - schedule.start, 12), round(1.0 - schedule.end, 12), schedule.steps,
                              schedule.delay)
    if isinstance(schedule, LossRatio):   # balances the two terms either way; only its bounds swap sides
        return LossRatio(round(1.0 - schedule.start, 12), schedule.momentum, round(1.0 - schedule.maximum, 12),
                         round(1.0 - schedule.minimum, 12))
    if isinstance(schedule, Complement):
        return schedule.schedule
    return Complement(schedule)


def as_student_loss_weight(student_loss_weight=None, alpha=None):
    """The Distiller's weight schedule from its arguments: `student_loss_weight` (a float or a
    schedule; default 0.5), or the deprecated `alpha` (1 - it), not both."""
    if alpha is not None:
        if student_loss_weight is not None:
            raise InputError(f"student_loss_weight={student_loss_weight!r} and alpha={alpha!r}: give one; alpha is "
                             f"the deprecated name of 1 - student_loss_weight")
        warnings.warn("alpha is deprecated: pass student_loss_weight = 1 - alpha (the weight of the student's own "
                      "loss, as in keras.distillation.Distiller)", DeprecationWarning, stacklevel=3)
        return complement(as_schedule(alpha))
    return as_schedule(0.5 if student_loss_weight is None else student_loss_weight)


def deserialize(config: dict):
    """The schedule a `get_config()` dict describes (what Distiller.from_config reads back).

    >>> round(float(deserialize(LinearRamp(0.9, 0.5, steps=100).get_config())(50)), 3)
    0.7
    """
    config = dict(config)
    kind = config.pop("kind", None)
    classes = {"constant": Constant, "linear": LinearRamp, "cosine": CosineRamp, "adaptive": LossRatio,
               "complement": Complement}
    if kind not in classes:
        raise InputError(f"weight schedule kind {kind!r}; accepted: {', '.join(classes)}")
    if kind == "constant":
        return Constant(config["start"])
    if kind == "complement":
        return Complement(deserialize(config["of"]))
    return classes[kind](**config)


def from_config(kind: str, start: float, end: float | None, steps: int):
    """The schedule a config names: constant, linear or cosine (ramping over `steps`), or
    adaptive (LossRatio, starting at `start`)."""
    if kind == "constant":
        return Constant(start)
    if kind == "linear":
        return LinearRamp(start, end, steps)
    if kind == "cosine":
        return CosineRamp(start, end, steps)
    if kind == "adaptive":
        return LossRatio(start)
    raise InputError(f"weight schedule kind {kind!r}; accepted: constant, linear, cosine, adaptive")
