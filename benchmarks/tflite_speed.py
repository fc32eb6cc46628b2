"""Shipped int8 TFLite models (full integer, and dynamic-range and mixed where shipped) against their float32
TFLite twins, same LiteRT threads (issue 17's "int8 at least 2x faster than float32, at most 1/3.5
of its size").

    python -m benchmarks.tflite_speed            # writes benchmarks/tflite_speed.json (~2 min)
    python -m benchmarks.tflite_speed --out benchmarks/tflite_speed_intel_amx.json   # another CPU's file

Each float32 flatbuffer is converted here from the shipped Keras model the way `python -m kd_tf
export` writes its float32 format (SavedModel, then `kd_tf.export.to_tflite`); the int8 one is the
shipped file. Both run through `kd_tf.export.LiteRTModel` (LiteRT's default CPU path, XNNPACK) on
the same random input; a figure is the median of `REPEATS` (`--repeats`) invocations after one warm-up, float32
and int8 invoked in turn (`alternating_median_ms`: on a shared machine a neighbour's load then
slows both alike; timed one after the other, the ratio moved by 0.3x from run to run). Whether
int8 pays depends on the CPU's integer dot-product instructions (AVX512-VNNI / AVX-VNNI on x86,
SDOT on Arm), so the CPU flags go into the file, and each CPU kind keeps its own file (`--out`):
the same files run 3x faster in int8 on an AMD EPYC with AVX512-VNNI and 1.6x on an Intel Xeon with
AMX (benchmarks/int8_width_speed.py says why). Run it on an otherwise idle machine:
`cores_busy_at_start` is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_results
from benchmarks.render_tables import tflite_speed as render
from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
REPEATS = 15
THREADS = (1, 2)
TARGET_SPEEDUP, TARGET_SIZE_RATIO = 2.0, 3.5
# (name, Keras model, shipped int8 flatbuffer, input shapes to time)
MODELS = (
    ("denoise student", MODELS_DIR / "denoise" / "student.keras", MODELS_DIR / "denoise" / "student_int8.tflite",
     [(1, 256, 256, 3), (1, 512, 512, 3)]),
    ("sr student (x2)", MODELS_DIR / "sr" / "student_x2.keras", MODELS_DIR / "sr" / "student_x2_int8.tflite",
     [(1, 128, 128, 3), (1, 256, 256, 3)]),
    ("gan student generator", MODELS_DIR / "gan" / "student_generator.keras",
     MODELS_DIR / "gan" / "student_generator_int8.tflite", [(64, 64)]),
    # dynamic-range int8 (int8 weights; each activation quantized to int8 over its range in that call)
    ("denoise student, dynamic-range int8", MODELS_DIR / "denoise" / "student.keras",
     MODELS_DIR / "denoise" / "student_int8_dynamic.tflite", [(1, 256, 256, 3), (1, 512, 512, 3)]),
    ("sr student (x2), dynamic-range int8", MODELS_DIR / "sr" / "student_x2.keras",
     MODELS_DIR / "sr" / "student_x2_int8_dynamic.tflite", [(1, 128, 128, 3), (1, 256, 256, 3)]),
    # mixed int8: the deeper levels full integer, the full- and half-resolution decoder levels float
    ("denoise student, mixed int8", MODELS_DIR / "denoise" / "student.keras",
     MODELS_DIR / "denoise" / "student_int8_mixed.tflite", [(1, 256, 256, 3), (1, 512, 512, 3)]),
)


def alternating_median_ms(models: dict, batch: np.ndarray, repeats: int = REPEATS) -> dict:
    """{name: median ms of one invocation} for callables invoked in turn on `batch`, after one
    warm-up each (which also resizes an interpreter): drift on the machine hits every model alike."""
    import time

    times = {name: [] for name in models}
    for model in models.values():
        model(batch)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(batch)
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in times.items()}


def float32_flatbuffer(keras_path: Path, workdir: Path) -> bytes:
    """The float32 TFLite `python -m kd_tf export` would write for this model."""
    from kd_tf import export
    from kd_tf.model_io import load_model

    saved = export.export_saved_model(load_model(keras_path), workdir / keras_path.stem)
    return export.to_tflite(saved, "float32")


def compare(name: str, keras_path: Path, int8_path: Path, shapes, workdir: Path, repeats: int = REPEATS) -> dict:
    """ms per input for float32 and int8 at each thread count, their ratio, and both sizes."""
    from kd_tf.export import LiteRTModel, op_names

    flat32, flat8 = float32_flatbuffer(keras_path, workdir), int8_path.read_bytes()
    rng = np.random.default_rng(0)
    row = {"keras_model": str(keras_path.relative_to(MODELS_DIR.parent)),
           "int8_model": str(int8_path.relative_to(MODELS_DIR.parent)),
           "bytes": {"float32": len(flat32), "int8": len(flat8)},
           "size_ratio_float32_over_int8": len(flat32) / len(flat8),
           "ops": {"float32": sorted(set(op_names(flat32))), "int8": sorted(set(op_names(flat8)))},
           "timings": []}
    for shape in shapes:
        batch = (rng.random(shape) if len(shape) == 4 else rng.standard_normal(shape)).astype(np.float32)
        for threads in THREADS:
            ms = alternating_median_ms({"float32": LiteRTModel(flat32, num_threads=threads),
                                        "int8": LiteRTModel(flat8, num_threads=threads)}, batch, repeats)
            float_ms, int8_ms = ms["float32"], ms["int8"]
            row["timings"].append({"input_shape": list(shape), "threads": threads, "float32_ms": float_ms,
                                   "int8_ms": int8_ms, "speedup_int8": float_ms / int8_ms})
            print(f"{name} {shape} {threads} thread(s): float32 {float_ms:.1f} ms, int8 {int8_ms:.1f} ms, "
                  f"{float_ms / int8_ms:.2f}x", flush=True)
    speedups = [t["speedup_int8"] for t in row["timings"]]
    row["min_speedup_int8"] = min(speedups)
    row["speedup_target_met"] = min(speedups) >= TARGET_SPEEDUP
    row["size_target_met"] = row["size_ratio_float32_over_int8"] >= TARGET_SIZE_RATIO
    return row


def main(argv=None, models=MODELS, default_out: Path = HERE / "tflite_speed.json", description: str = __doc__) -> int:
    """Times `models` ((name, Keras model, int8 flatbuffer, input shapes) each) and writes `--out`; other
    benchmarks of int8 speed call it with their own models."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out, help="results file (one per CPU kind)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="invocations per model and setting (more on a machine whose neighbours' load varies)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: accepted: 1 or more")
    results = {"machine": machine_info(), "repeats": args.repeats,
               "targets": {"int8_speedup_at_least": TARGET_SPEEDUP, "size_ratio_at_least": TARGET_SIZE_RATIO},
               "models": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for name, keras_path, int8_path, shapes in models:
            results["models"][name] = compare(name, keras_path, int8_path, shapes, Path(workdir), args.repeats)
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
