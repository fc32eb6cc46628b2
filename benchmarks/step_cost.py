"""Benchmark 1: what one distillation step costs, against its parts and two other ways to write it.

(a) kd_tf.Distiller.fit, output + feature distillation   (one teacher pass, one student pass)
(b) the student alone trained with fit                   (what the step would cost with no teacher)
(c) the teacher's forward pass alone                     (what the teacher adds at least)
(d) keras.distillation.Distiller + FeatureDistillation, the same losses (runs the student twice)
(e) a naive loop: teacher.predict + student.predict per batch, then a separate GradientTape
plus, to explain the ratios: (a0) kd_tf output-only distillation, (f) the student's forward pass.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (DEFAULT_PRECISION, FEATURES, STUDENT_LOSS_WEIGHT, Bench, distill_step, forward_pass,
                               student_step, time_fit, time_loop)

TARGET_VS_PARTS = 1.1          # (a) <= 1.1 x ((b) + (c))
TARGET_VS_KERAS = 1.3          # (a) >= 1.3x faster than (d)
TARGET_VS_NAIVE = 5.0          # (a) >= 5x faster than (e)


class AdapterMSE:
    """Keras FeatureDistillation's loss for channel counts that differ: MSE through a trainable
    1x1 adapter, exactly kd_tf's FeatureTerm (the adapter is attached to the Keras distiller so
    that its optimizer trains it)."""

    def __init__(self, teacher_channels: int, student_channels: int):
        self.adapter = keras.layers.Conv2D(teacher_channels, 1, name="adapter_dec0", dtype="float32")
        self.adapter.build((None, None, None, student_channels))

    def __call__(self, teacher_features, student_features):
        adapted = self.adapter(tf.cast(student_features, tf.float32))
        return tf.reduce_mean(tf.square(tf.cast(teacher_features, tf.float32) - adapted))


def _float32_output(teacher: keras.Model) -> keras.Model:
    """The teacher with its output cast to float32: Keras' Distiller insists on equal output dtypes,
    and kd_tf's bf16 teacher clone (kd_tf.model_io.load_teacher) ends in bfloat16, unlike the student.
    kd_tf's Distiller does the same cast inside its step."""
    if teacher.output.dtype == "float32":
        return teacher
    output = keras.layers.Activation("linear", dtype="float32", name="output_float32")(teacher.output)
    return keras.Model(teacher.inputs, output, name=teacher.name)


def keras_distiller(bench: Bench, precision: str, student: keras.Model | None = None,
                    teacher: keras.Model | None = None):
    """(d): Keras' own distiller set up with kd_tf's losses: 0.5 own MSE + 0.5 output MSE + 0.1 feature.

    Keras weighs the student loss by w and the sum of distillation losses by 1 - w, so w = 0.5
    and distillation weights (1, 0.2) give kd_tf's 0.5 / 0.5 / 0.1.
    """
    teacher = _float32_output(teacher or bench.teacher(precision))
    student = student or bench.student(precision, name="student_keras")
    (teacher_layer, student_layer, weight), = FEATURES
    feature_loss = AdapterMSE(teacher.get_layer(teacher_layer).output.shape[-1],
                              student.get_layer(student_layer).output.shape[-1])
    distiller = keras.distillation.Distiller(
        teacher, student,
        distillation_losses=[keras.distillation.FeatureDistillation("mse"),
                             keras.distillation.FeatureDistillation(feature_loss, teacher_layer, student_layer)],
        distillation_loss_weights=[1.0, weight / (1.0 - STUDENT_LOSS_WEIGHT)], student_loss_weight=STUDENT_LOSS_WEIGHT)
    distiller.feature_adapter = feature_loss.adapter          # tracked: its weights are trained
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return distiller, feature_loss


def same_losses(bench: Bench, precision: str) -> dict:
    """Checks that (a) and (d) optimise the same objective: both losses on one batch, same weights."""
    ours = bench.distiller(precision, features=True)
    ours.compile(optimizer=keras.optimizers.Adam(1e-3))
    theirs, feature_loss = keras_distiller(bench, precision)
    theirs.student.set_weights(ours.student.get_weights())
    feature_loss.adapter.set_weights(ours.adapters[0].get_weights())
    noisy, clean = next(iter(bench.patches()))
    loss_ours = float(ours.test_on_batch(noisy, clean, return_dict=True)["loss"])
    loss_theirs = float(theirs.test_on_batch(noisy, clean, return_dict=True)["total_loss"])
    return {"kd_tf_loss": loss_ours, "keras_loss": loss_theirs,
            "relative_difference": abs(loss_ours - loss_theirs) / max(abs(loss_ours), 1e-12)}


def naive_loop_step(bench: Bench, precision: str, annotate: bool = False):
    """(e) as the seed scripts write distillation: predict() the teacher (output and feature),
    predict() the student (to log its PSNR), then an eager GradientTape step on the same losses.
    `annotate`: mark each part for the profiler (benchmarks.profiling); no cost otherwise."""
    teacher = bench.teacher(precision)
    student = bench.student(precision, name="student_naive")
    (teacher_layer, student_layer, weight), = FEATURES
    teacher_taps = keras.Model(teacher.inputs, [teacher.output, teacher.get_layer(teacher_layer).output])
    student_taps = keras.Model(student.inputs, [student.output, student.get_layer(student_layer).output])
    feature_loss = AdapterMSE(teacher_taps.outputs[1].shape[-1], student_taps.outputs[1].shape[-1])
    variables = student.trainable_variables + feature_loss.adapter.trainable_variables
    optimizer = keras.optimizers.Adam(1e-3)
    mse = keras.losses.MeanSquaredError()

    part = tf.profiler.experimental.Trace if annotate else (lambda name: contextlib.nullcontext())

    def step(batch):
        noisy, clean = batch
        with part("teacher.predict"):
            teacher_out, teacher_feature = teacher_taps.predict(noisy, verbose=0)
        with part("student.predict"):
            logged = student.predict(noisy, verbose=0)
        with part("PSNR on the host"):
            psnr = float(np.mean(tf.image.psnr(clean, np.clip(logged, 0, 1), 1.0)))
        with part("eager tape step"):
            with tf.GradientTape() as tape:
                out, feature = student_taps(noisy, training=True)
                out = tf.cast(out, tf.float32)
                loss = ((1 - STUDENT_LOSS_WEIGHT) * mse(teacher_out, out) + STUDENT_LOSS_WEIGHT * mse(clean, out)
                        + weight * feature_loss(teacher_feature, feature))
            optimizer.apply(tape.gradient(loss, variables), variables)
            loss = float(loss)
        return loss, psnr

    return step


def step_cost(bench: Bench) -> dict:
    """Steps/s of (a)-(e) and the three target ratios, at the project's default precision."""
    precision, sizes = DEFAULT_PRECISION, bench.sizes
    check = same_losses(bench, precision)
    a = distill_step(bench, precision, features=True)
    a0 = distill_step(bench, precision, features=False)
    b = student_step(bench, precision)
    c = forward_pass(bench, precision, "teacher")
    f = forward_pass(bench, precision, "student")
    d = bench.measure(("keras distiller", precision, f"b{sizes.batch}p{sizes.patch}"),
                      lambda: time_fit(keras_distiller(bench, precision)[0], bench.patches(), sizes.warmup, sizes.steps))
    e = bench.measure(("naive loop", precision, f"b{sizes.batch}p{sizes.patch}"),
                      lambda: time_loop(naive_loop_step(bench, precision), iter(bench.patches()),
                                        max(2, sizes.warmup // 2), sizes.naive_steps))
    rows = {"a": ("kd_tf Distiller.fit, output + feature", a), "a0": ("kd_tf Distiller.fit, output only", a0),
            "b": ("student alone, fit", b), "c": ("teacher forward alone", c),
            "d": ("keras.distillation.Distiller + FeatureDistillation", d),
            "e": ("naive loop (predict x2 + eager tape)", e), "f": ("student forward alone (training=True)", f)}
    t = {key: stats.median_s for key, (_, stats) in rows.items()}
    return {
        "precision": precision, "batch": sizes.batch, "patch": sizes.patch, "features": FEATURES,
        "same_losses_check": check,
        "rows": {key: {"what": what, **stats.as_dict()} for key, (what, stats) in rows.items()},
        "ratios": {
            "a_over_b_plus_c": t["a"] / (t["b"] + t["c"]),
            "d_over_a": t["d"] / t["a"],
            "e_over_a": t["e"] / t["a"],
            # what bounds each ratio, for the results file's explanations
            "d_over_a_bound_one_student_forward": t["d"] / max(t["d"] - t["f"], 1e-9),
            "e_over_c_bound_teacher_forward": t["e"] / t["c"],
            "feature_term_s": t["a"] - t["a0"],
            "a_minus_b_minus_c_s": t["a"] - t["b"] - t["c"],
        },
        "targets": {"a_over_b_plus_c_max": TARGET_VS_PARTS, "d_over_a_min": TARGET_VS_KERAS,
                    "e_over_a_min": TARGET_VS_NAIVE},
    }
