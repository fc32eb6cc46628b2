"""alpha, the weight of teacher-matching against the student's own objective, as a function of step.

A schedule is any callable `step -> alpha`; these are the ready-made ones. They work on
tensors, so `Distiller.train_step` evaluates them inside the compiled graph.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _check_alpha(name, value):
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value!r}; accepted: 0 <= alpha <= 1")
    return float(value)


class Constant:
    """The same alpha at every step (what a plain float means)."""

    def __init__(self, value: float):
        self.value = _check_alpha("alpha", value)

    def __call__(self, step):
        return tf.constant(self.value, tf.float32)

    def get_config(self):
        return {"kind": "constant", "start": self.value}


class _Ramp:
    def __init__(self, start: float, end: float, steps: int, delay: int = 0):
        self.start = _check_alpha("start", start)
        self.end = _check_alpha("end", end)
        if int(steps) < 1 or int(delay) < 0:
            raise ValueError(f"steps={steps!r}, delay={delay!r}; accepted: steps >= 1, delay >= 0")
        self.steps, self.delay = int(steps), int(delay)

    def _progress(self, step):
        step = tf.cast(step, tf.float32) - float(self.delay)
        return tf.clip_by_value(step / float(self.steps), 0.0, 1.0)

    def get_config(self):
        return {"kind": self.kind, "start": self.start, "end": self.end, "steps": self.steps, "delay": self.delay}


class LinearRamp(_Ramp):
    """alpha moves linearly from `start` to `end` over `steps` steps after `delay`, then stays."""

    kind = "linear"

    def __call__(self, step):
        return self.start + (self.end - self.start) * self._progress(step)


class CosineRamp(_Ramp):
    """Like LinearRamp but eased: half a cosine, flat at both ends."""

    kind = "cosine"

    def __call__(self, step):
        eased = 0.5 * (1.0 - tf.cos(math.pi * self._progress(step)))
        return self.start + (self.end - self.start) * eased


def as_schedule(alpha):
    """A float becomes `Constant`; a callable is used as is."""
    if callable(alpha):
        return alpha
    return Constant(alpha)


def from_config(kind: str, start: float, end: float | None, steps: int):
    """The schedule a config names: constant, linear or cosine (ramping over `steps`)."""
    if kind == "constant":
        return Constant(start)
    if kind == "linear":
        return LinearRamp(start, end, steps)
    if kind == "cosine":
        return CosineRamp(start, end, steps)
    raise ValueError(f"alpha kind {kind!r}; accepted: constant, linear, cosine")
