"""The shipped diffusion samplers against their teacher's full sampler, timed in one process on
one machine (issue 20's "the few-step student at least 20x faster per image than the teacher's
sampler").

    python -m benchmarks.diffusion_speed        # writes benchmarks/diffusion_speed.json (~3 min)

The distillation reports time their rows as they score them, and a row taken from the score
cache keeps the time measured then, perhaps on another machine or beside another job; this file
times every sampler of a pair again, here, back to back: the teacher's network with its full step
count and each shipped few-step generator (Keras, and its int8 TFLite through LiteRT with 2
threads), a batch of 64 noise images per call, the median of `REPEATS` calls after 3 warm-up calls
(kd_tf.generators.ms_per_64). Run it on an otherwise idle machine: `cores_busy_at_start` is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path

from benchmarks.common import cores_busy_by_others, machine_info, write_results
from benchmarks.render_tables import diffusion_speed as render
from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
REPEATS = {"teacher": 5, "student": 15}
TARGET_SPEEDUP = 20.0
DIFFUSION = MODELS_DIR / "diffusion"
# (pair, teacher network, its sampler's steps, [(student, generator file)])
PAIRS = (
    ("unconditional", DIFFUSION / "teacher_denoiser.keras", 64,
     [("4 steps", DIFFUSION / "student_generator_4_steps.keras"),
      ("4 steps, int8", DIFFUSION / "student_generator_4_steps_int8.tflite"),
      ("2 steps", DIFFUSION / "student_generator_2_steps.keras"),
      ("1 step", DIFFUSION / "student_generator_1_steps.keras"),
      ("1 step, int8", DIFFUSION / "student_generator_1_steps_int8.tflite")]),
    ("class-conditional", DIFFUSION / "conditional" / "teacher_denoiser.keras", 64,
     [("4 steps", DIFFUSION / "conditional" / "student_generator_4_steps.keras"),
      ("4 steps, int8 (dynamic range)", DIFFUSION / "conditional" / "student_generator_4_steps_int8_dynamic.tflite"),
      ("2 steps", DIFFUSION / "conditional" / "student_generator_2_steps.keras"),
      ("2 steps, int8 (dynamic range)", DIFFUSION / "conditional" / "student_generator_2_steps_int8_dynamic.tflite"),
      ("1 step", DIFFUSION / "conditional" / "student_generator_1_steps.keras"),
      ("1 step, int8 (dynamic range)", DIFFUSION / "conditional" / "student_generator_1_steps_int8_dynamic.tflite")]),
)


def generate_function(path: Path):
    """(latent size, z -> images) of a shipped generator file, Keras or TFLite."""
    from kd_tf.generators import keras_generate, latent_dim_of, tflite_generate
    from kd_tf.model_io import load_model

    if path.suffix == ".tflite":
        runner, generate = tflite_generate(path, threads=2)
        return runner.input_signature[-1], generate
    model = load_model(path)
    return latent_dim_of(model), keras_generate(model)


def time_pair(name: str, teacher_path: Path, teacher_steps: int, students) -> dict:
    from kd_tf.diffusion.jobs import as_generator
    from kd_tf.generators import keras_generate, ms_per_64
    from kd_tf.model_io import load_model

    teacher = as_generator(load_model(teacher_path), teacher_steps)
    teacher_ms = ms_per_64(keras_generate(teacher), teacher.input_shape[-1], repeats=REPEATS["teacher"])
    print(f"{name}: teacher, {teacher_steps} steps: {teacher_ms:.0f} ms per 64", flush=True)
    rows = {f"teacher, {teacher_steps} steps": {"file": str(teacher_path.relative_to(MODELS_DIR.parent)),
                                                "ms_per_64": teacher_ms, "speedup": 1.0}}
    for label, path in students:
        if not path.is_file():
            print(f"{name}: {label}: {path} is not shipped, skipped", flush=True)
            continue
        latent, generate = generate_function(path)
        ms = ms_per_64(generate, latent, repeats=REPEATS["student"])
        rows[label] = {"file": str(path.relative_to(MODELS_DIR.parent)), "ms_per_64": ms, "speedup": teacher_ms / ms}
        print(f"{name}: {label}: {ms:.0f} ms per 64, {teacher_ms / ms:.1f}x", flush=True)
    return rows


def main() -> int:
    results = {"machine": machine_info(), "cores_busy_at_start": cores_busy_by_others(), "repeats": REPEATS,
               "batch": 64, "target_speedup_at_least": TARGET_SPEEDUP, "pairs": {}}
    for name, teacher_path, steps, students in PAIRS:
        results["pairs"][name] = time_pair(name, teacher_path, steps, students)
    return write_results(results, render, HERE / "diffusion_speed.json")


if __name__ == "__main__":
    raise SystemExit(main())
