"""kd_tf's Distiller against Keras' own `keras.distillation.Distiller`, in one run on the same models.

What each supports is checked by trying it (each row runs code on both; nothing is asserted from
memory), and the step time of output + feature distillation (the shipped U-Net teacher, the main
job's student, a 1x1 adapter for the feature pair, 0.5 own MSE + 0.5 output MSE + 0.1 feature) is
measured in alternating rounds, so a machine that slows down mid-run slows both alike.

    python -m benchmarks.keras_comparison            # ~5 minutes on 2 CPU cores
    python -m benchmarks.keras_comparison --quick    # a smoke run, figures not for the README

Writes benchmarks/keras_comparison.json and benchmarks/KERAS_COMPARISON.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import FEATURES, Bench, Sizes, time_fit
from benchmarks.step_cost import keras_distiller
from kd_tf import Distiller
from kd_tf.losses import DistillationTerm
from kd_tf.denoise.nets import build_unet

HERE = Path(__file__).parent
PRECISION = "fp32"


def _tiny():
    keras.utils.set_random_seed(0)
    return build_unet((8, 16), 1, name="teacher"), build_unet((4, 8), 1, name="student")


def _tries(function) -> tuple[bool, str]:
    """(worked, what happened): each capability is tried, not claimed."""
    try:
        return True, function() or "works"
    except Exception as error:                     # noqa: BLE001 - any failure is the finding
        return False, f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"


def _save_and_load(make, **compile_args) -> str:
    distiller = make()
    distiller.compile(optimizer="adam", **compile_args)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    distiller.fit(x, x, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        distiller.save(Path(folder) / "d.keras")
        loaded = keras.saving.load_model(Path(folder) / "d.keras", compile=False)
    same = np.array_equal(np.asarray(loaded.student(x)), np.asarray(distiller.student(x)))
    if not same:
        raise AssertionError("the reloaded student predicts differently")
    return "save/load round trip predicts identically"


class EnergyTerm(DistillationTerm):
    """Where the activity is: each position's mean squared activation (any channel counts)."""

    def call(self, teacher, student):
        def energy(f):
            return tf.reduce_mean(tf.square(tf.cast(f, tf.float32)), axis=-1)
        return tf.reduce_mean(tf.square(energy(teacher) - energy(student)), axis=[1, 2])


def capabilities() -> list[dict]:
    """Each row: what is tried, and whether kd_tf and keras.distillation do it."""
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    kd = keras.distillation

    def keras_feature_channels():
        teacher, student = _tiny()
        distiller = kd.Distiller(teacher, student, [kd.FeatureDistillation("mse", "enc0", "enc0")])
        distiller.compile(optimizer="adam", loss="mse")
        distiller.fit(x, x, epochs=1, verbose=0)

    def ours_feature_channels():
        teacher, student = _tiny()
        distiller = Distiller(teacher, student, features=[("enc0", "enc0")])
        distiller.compile(optimizer="adam")
        distiller.fit(x, x, epochs=1, verbose=0)
        return f"1x1 adapter {tuple(distiller.adapters[0].kernel.shape)}, trained, never exported"

    def keras_unlabeled():
        teacher, student = _tiny()
        distiller = kd.Distiller(teacher, student, [kd.FeatureDistillation("mse")])
        distiller.compile(optimizer="adam", loss="mse")
        distiller.fit(x, epochs=1, verbose=0)

    def ours_unlabeled():
        teacher, student = _tiny()
        distiller = Distiller(teacher, student)
        distiller.compile(optimizer="adam")
        distiller.fit(x, epochs=1, verbose=0)

    def keras_cached():
        teacher, student = _tiny()
        distiller = kd.Distiller(teacher, student, [kd.FeatureDistillation("mse")])
        distiller.compile(optimizer="adam", loss="mse")
        distiller.fit({"inputs": x, "teacher_outputs": teacher.predict(x, verbose=0)}, x, epochs=1, verbose=0)

    def ours_cached():
        teacher, student = _tiny()
        distiller = Distiller(teacher, student)
        distiller.compile(optimizer="adam")
        distiller.fit({"inputs": x, "teacher_outputs": teacher.predict(x, verbose=0)}, x, epochs=1, verbose=0)

    def keras_teacher_inputs():
        teacher, student = _two_input_teacher(), _tiny()[1]
        kd.Distiller(teacher, student, [kd.FeatureDistillation("mse")])

    def ours_teacher_inputs():
        teacher, student = _two_input_teacher(), _tiny()[1]
        distiller = Distiller(teacher, student)
        distiller.compile(optimizer="adam")
        distiller.fit({"inputs": x, "teacher_inputs": (x, np.full((2, 1), 0.1, np.float32))}, x, epochs=1, verbose=0)

    def keras_custom_term():
        class Energy(kd.DistillationLoss):
            def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
                return keras.ops.mean(keras.ops.square(teacher_outputs - student_outputs))
        teacher, student = _tiny()
        distiller = kd.Distiller(teacher, student, [Energy()])
        distiller.compile(optimizer="adam", loss="mse")
        distiller.fit(x, x, epochs=1, verbose=0)
        return "subclass DistillationLoss (outputs only, one scalar per batch)"

    def ours_custom_term():
        teacher, student = _tiny()
        distiller = Distiller(teacher, student, terms=[EnergyTerm("enc0", "enc0", weight=0.1)])
        distiller.compile(optimizer="adam")
        logs = distiller.fit(x, x, epochs=1, verbose=0).history
        logged = [name for name in logs if "energy" in name]
        return f"subclass DistillationTerm (any layer pair, per sample, logged as {logged})"

    def keras_schedule():
        teacher, student = _tiny()
        kd.Distiller(teacher, student, [kd.FeatureDistillation("mse")],
                     student_loss_weight=lambda step: 0.5)

    def ours_schedule():
        from kd_tf.schedules import LossRatio
        teacher, student = _tiny()
        Distiller(teacher, student, student_loss_weight=LossRatio())
        return "ramps, cosine, adaptive (LossRatio), any callable of the step"

    rows = [
        ("feature pair with different channel counts", keras_feature_channels, ours_feature_channels),
        ("unlabeled batches (no targets)", keras_unlabeled, ours_unlabeled),
        ("teacher outputs cached offline", keras_cached, ours_cached),
        ("teacher with inputs of its own (noise level)", keras_teacher_inputs, ours_teacher_inputs),
        ("user-defined term", keras_custom_term, ours_custom_term),
        ("weight schedule over the steps", keras_schedule, ours_schedule),
        ("save / load the whole distiller",
         lambda: _save_and_load(lambda: kd.Distiller(*_tiny(), [kd.FeatureDistillation("mse")]), loss="mse"),
         lambda: _save_and_load(lambda: Distiller(*_tiny(), features=[("enc0", "enc0")]))),
    ]
    table = []
    for what, theirs, ours in rows:
        keras_ok, keras_note = _tries(theirs)
        ours_ok, ours_note = _tries(ours)
        table.append({"capability": what, "keras": keras_ok, "keras_note": keras_note,
                      "kd_tf": ours_ok, "kd_tf_note": ours_note})
    return table


def _two_input_teacher():
    image, level = keras.Input((None, None, 3)), keras.Input((1,))
    scaled = keras.layers.Conv2D(3, 3, padding="same")(image)
    return keras.Model([image, level], scaled + keras.ops.reshape(level, (-1, 1, 1, 1)), name="non_blind")


def step_times(bench: Bench, rounds: int) -> dict:
    """Median step time of kd_tf (one student pass) and Keras (the student runs twice when a
    feature is distilled), output + feature distillation, alternating rounds."""
    sizes = bench.sizes
    times = {"kd_tf": [], "keras": []}
    for _ in range(rounds):
        ours = bench.distiller(PRECISION, features=True)
        ours.compile(optimizer=keras.optimizers.Adam(1e-3))
        times["kd_tf"].append(time_fit(ours, bench.patches(), sizes.warmup, sizes.steps).median_s)
        theirs, _ = keras_distiller(bench, PRECISION)
        times["keras"].append(time_fit(theirs, bench.patches(), sizes.warmup, sizes.steps).median_s)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"rounds_s": times, "median_s": median, "keras_over_kd_tf": median["keras"] / median["kd_tf"],
            "batch": sizes.batch, "patch": sizes.patch, "steps_per_round": sizes.steps, "features": FEATURES,
            "precision": PRECISION}


def render(result: dict) -> str:
    steps = result["steps"]
    lines = ["# kd_tf's Distiller vs keras.distillation.Distiller", "",
             f"Keras {keras.__version__}, TensorFlow {tf.__version__}, {result['machine']}. "
             f"Reproduce: `python -m benchmarks.keras_comparison`.", "",
             "| capability (tried on both) | keras.distillation | kd_tf |", "|---|---|---|"]
    for row in result["capabilities"]:
        mark = lambda ok, note: ("yes" if ok else "no") + f" ({note})"   # noqa: E731
        lines.append(f"| {row['capability']} | {mark(row['keras'], row['keras_note'])} | "
                     f"{mark(row['kd_tf'], row['kd_tf_note'])} |")
    lines += ["", f"Step time, output + feature distillation ({steps['features'][0][0]} -> "
              f"{steps['features'][0][1]} through a 1x1 adapter), batch {steps['batch']} x {steps['patch']}^2, "
              f"{steps['precision']}, median of {len(steps['rounds_s']['kd_tf'])} alternating rounds of "
              f"{steps['steps_per_round']} steps:", "",
              "| | ms per step |", "|---|---|",
              f"| keras.distillation.Distiller | {1000 * steps['median_s']['keras']:.0f} |",
              f"| kd_tf Distiller | {1000 * steps['median_s']['kd_tf']:.0f} |",
              f"| Keras / kd_tf | {steps['keras_over_kd_tf']:.2f}x |", ""]
    if "load_average_1min" in result:
        lines += [f"Load average (1 min) before and after: {result['load_average_1min'][0]:.1f} / "
                  f"{result['load_average_1min'][1]:.1f}; above the core count, other work shared the CPU "
                  f"(both arms alike: they alternate).", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE), help="folder of keras_comparison.json and KERAS_COMPARISON.md")
    args = parser.parse_args(argv)
    sizes = Sizes(warmup=2, steps=3) if args.quick else Sizes(steps=20)
    bench = Bench(sizes, quick=args.quick)
    load_before = os.getloadavg()[0]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "quick": args.quick, "capabilities": capabilities(),
              "steps": step_times(bench, 1 if args.quick else args.rounds)}
    result["load_average_1min"] = [load_before, os.getloadavg()[0]]     # > cores: the timings were shared
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "keras_comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "KERAS_COMPARISON.md").write_text(render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
