"""Progressive distillation (Salimans & Ho, 2022) as multi-stage distillation with the `Distiller`.

A stage halves the sampler's steps: the student (a copy of the teacher's network) learns to do in
one DDIM step what the teacher does in two. Both are wrapped as models of the same inputs, a noisy
image z_t at a time t of the student's grid (drawn from real images):

- teacher `TwoStepTarget`: two teacher DDIM steps t -> t - 1/N -> t - 2/N, then the clean image
  x~ that one DDIM step from z_t must predict to land where they did:
  x~ = (z'' - (s''/s) z_t) / (a'' - (s''/s) a)  (a, s: signal and noise rates at t and t'');
  on the last student step, the teacher's final image itself;
- student `XPrediction`: its network's predicted clean image at (z_t, t).

The Distiller's output term (MSE in image space; the paper weighs it by max(SNR, 1), kd_tf by 1)
then trains only the student; the next stage's teacher is this stage's student, N -> N/2 -> ... -> 1.
A class-conditional network's stages take the real image's label as a third input, so each step
learns the teacher's steps for that class.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf.diffusion.nets import denoiser_classes, with_class_input
from kd_tf.diffusion.schedule import ddim_step, predict, rates, to_model
from kd_tf.errors import InputError

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="kd_tf")
class _Wrapped(keras.layers.Layer):
    """A network as a layer of a (noisy image, time[, class]) model."""

    def __init__(self, network: keras.Model, teacher_steps: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.teacher_steps = teacher_steps

    def call(self, inputs, training=False):
        noisy, times, *labels = inputs
        noisy, times = tf.cast(noisy, tf.float32), tf.cast(times, tf.float32)
        network = with_class_input(lambda x: self.network(x, training=training), labels[0] if labels else None)
        if self.teacher_steps is None:
            return predict(network, noisy, times)[1]
        return two_step_target(network, noisy, times, self.teacher_steps)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def two_step_target(network, noisy, times, teacher_steps: int):
    """The clean-image target of one student step from `times`, from two teacher steps."""
    half = 1.0 / teacher_steps
    middle, end = times - half, times - 2.0 * half
    middle_noisy, _ = ddim_step(network, noisy, times, middle)
    end_noisy, middle_image = ddim_step(network, middle_noisy, middle, tf.maximum(end, 0.0))
    noise_rate, signal_rate = rates(times)
    end_noise, end_signal = rates(tf.maximum(end, 0.0))
    ratio = end_noise / noise_rate
    folded = (end_noisy - ratio * noisy) / (end_signal - ratio * signal_rate)
    return tf.where(end > 1e-6, folded, middle_image)        # the last student step: the teacher's image


def _stage_model(network, teacher_steps, name):
    inputs = [keras.Input(network.input_shape[0][1:], name="noisy"), keras.Input((1, 1, 1), name="time")]
    if denoiser_classes(network):
        inputs.append(keras.Input((), dtype="int32", name="class"))
    output = _Wrapped(network, teacher_steps, name=f"{name}_step")(inputs)
    return keras.Model(inputs, output, name=name)


def XPrediction(network: keras.Model, name: str = "student") -> keras.Model:   # noqa: N802 - a model, named as one
    """[noisy image, time(, class)] -> the network's predicted clean image (the stage's student)."""
    return _stage_model(network, None, name)


def TwoStepTarget(network: keras.Model, teacher_steps: int, name: str = "teacher") -> keras.Model:   # noqa: N802
    """[noisy image, time(, class)] -> the target folding two of `teacher_steps` DDIM steps into one."""
    if int(teacher_steps) < 2 or int(teacher_steps) % 2:
        raise InputError(f"teacher_steps={teacher_steps!r}; accepted: an even int >= 2")
    return _stage_model(network, int(teacher_steps), name)


def stage_dataset(images: np.ndarray, student_steps: int, batch_size: int, seed: int = 0,
                  labels: np.ndarray | None = None) -> tf.data.Dataset:
    """Endless unlabeled batches ((z_t, t),) for a stage: real images noised at a time of the
    student's grid (1, 1 - 1/S, ..., 1/S), one time per image; with `labels` (a conditional
    network's stages), ((z_t, t, label),)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    steps = int(student_steps)

    def noised(batch, seed_pair):
        clean = to_model(batch[0])
        size = tf.shape(clean)[0]
        k = tf.random.stateless_uniform([size, 1, 1, 1], seed_pair, 0, steps, dtype=tf.int32)
        times = 1.0 - tf.cast(k, tf.float32) / steps
        noise = tf.random.stateless_normal(tf.shape(clean), seed_pair + 1)
        noise_rate, signal_rate = rates(times)
        return ((signal_rate * clean + noise_rate * noise, times, *batch[1:]),)

    columns = (images,) if labels is None else (images, np.asarray(labels, np.int32))
    batches = tf.data.Dataset.from_tensor_slices(columns).shuffle(min(len(images), 10000), seed=seed).repeat()
    batches = batches.batch(batch_size, drop_remainder=True)
    seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
    return tf.data.Dataset.zip((batches, seeds)).map(noised, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def stage_path(folder, steps: int) -> Path:
    """Where a stage's student network is kept: `folder`/student_denoiser_{steps}_steps.keras."""
    return Path(folder) / f"student_denoiser_{int(steps)}_steps.keras"


def stage_record(folder, steps: int) -> dict | None:
    """What the stage that made the `steps`-step student cost (seconds, optimizer steps, rate),
    kept beside it, so a resumed run still reports every stage's time; None where not kept."""
    path = stage_path(folder, steps).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def progressive_distillation(network: keras.Model, images: np.ndarray, start_steps: int, end_steps: int = 1,
                             steps_per_stage: int | list[int] = 1000, batch_size: int = 64,
                             learning_rate: float | list[float] = 1e-4,
                             seed: int = 0, callbacks=None, stages_dir=None,
                             final_learning_rate_fraction: float | list[float] = 1.0,
                             labels: np.ndarray | None = None) -> list[tuple[int, keras.Model]]:
    """Distils `network`'s `start_steps`-step sampler stage by stage down to `end_steps` steps.

    Returns [(steps, network)] per stage, the first the teacher itself. Each stage's student is a
    copy of the stage's teacher, trained `steps_per_stage` optimizer steps (one int for every stage,
    or a list with one per stage: the last halvings are the hardest) with Adam at `learning_rate`
    (one for every stage, or one per stage); the teacher is frozen. `final_learning_rate_fraction`
    (one, or one per stage) below 1 decays a stage's rate along a cosine to that fraction of it by
    the stage's last step: a student whose loss has flattened at a constant rate still gains as the
    rate falls (1: constant, as before).
    `callbacks(teacher_network, teacher_steps, student_network)` may return Keras callbacks for a
    stage (TensorBoard grids). With `stages_dir`, each finished stage's student is saved there
    (atomically) with its cost (`stage_record`) and a rerun loads the finished stages instead of
    training them again, so a long distillation killed mid-way resumes at the stage it was in.
    A class-conditional `network` needs the images' int `labels`.
    """
    from kd_tf.distiller import Distiller
    from kd_tf.atomic import write_text_atomically
    from kd_tf.model_io import frozen_copy, load_model, save_model, trainable_copy

    if start_steps < 2 or start_steps & (start_steps - 1) or end_steps < 1 or start_steps % end_steps:
        raise InputError(f"start_steps={start_steps}, end_steps={end_steps}; accepted: powers of two, "
                         f"start_steps >= 2 and a multiple of end_steps")
    if denoiser_classes(network) and labels is None:
        raise InputError(f"network {network.name!r} is conditioned on {denoiser_classes(network)} classes; "
                         "accepted: the images' int labels as `labels`")
    labels = labels if denoiser_classes(network) else None
    count = (start_steps // end_steps).bit_length() - 1
    def per_stage(name, value, cast, valid, accepted):
        values = [cast(value)] * count if np.ndim(value) == 0 else [cast(v) for v in value]
        if len(values) != count or not all(valid(v) for v in values):
            raise InputError(f"{name}={value!r}; accepted: {accepted} or {count} of them, "
                             f"one per stage of {start_steps} -> {end_steps} steps")
        return values

    budgets = per_stage("steps_per_stage", steps_per_stage, int, lambda b: b >= 1, "an int >= 1")
    rates = per_stage("learning_rate", learning_rate, float, lambda r: r > 0, "a float > 0")
    fractions = per_stage("final_learning_rate_fraction", final_learning_rate_fraction, float,
                          lambda f: 0 < f <= 1, "a float in (0, 1]")
    stages, teacher, steps = [(start_steps, network)], network, start_steps
    while steps > end_steps:
        budget, rate, fraction = budgets[len(stages) - 1], rates[len(stages) - 1], fractions[len(stages) - 1]
        saved = stage_path(stages_dir, steps // 2) if stages_dir is not None else None
        if saved is not None and saved.is_file():
            log.info("progressive distillation: %d -> %d steps already done, loaded %s", steps, steps // 2, saved)
            teacher, steps = load_model(saved), steps // 2
            stages.append((steps, teacher))
            continue
        student = trainable_copy(teacher)            # the teacher may be frozen (a loaded one is)
        frozen = frozen_copy(teacher)                # the stage's teacher does not move while its copy trains
        distiller = Distiller(TwoStepTarget(frozen, steps), XPrediction(student), student_loss_weight=0.0)
        schedule = rate if fraction == 1 else keras.optimizers.schedules.CosineDecay(rate, budget, alpha=fraction)
        distiller.compile(optimizer=keras.optimizers.Adam(schedule))
        log.info("progressive distillation: %d -> %d steps, %d optimizer steps at %g%s", steps, steps // 2, budget,
                 rate, " (constant)" if fraction == 1 else f" (decaying to {fraction:g} of it)")
        started = time.time()
        distiller.fit(stage_dataset(images, steps // 2, batch_size, seed + steps, labels), epochs=1,
                      steps_per_epoch=budget, verbose=0, shuffle=False,
                      callbacks=list(callbacks(frozen, steps, student)) if callbacks else None)
        if saved is not None:
            save_model(student, saved)
            write_text_atomically(saved.with_suffix(".json"), json.dumps(
                {"from_steps": steps, "to_steps": steps // 2, "seconds": time.time() - started,
                 "optimizer_steps": budget, "learning_rate": rate, "final_learning_rate_fraction": fraction}))
        teacher, steps = student, steps // 2
        stages.append((steps, student))
    return stages
