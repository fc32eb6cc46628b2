"""What the float convolutions of the dynamic-range denoising file cost in speed: the shipped student
converted to dynamic-range int8 with none, one or both of the two convolutions the export keeps in float
(`configs/export_dynamic.yaml`'s `dynamic_float_layers`), each against the float32 TFLite twin, same threads.

    python -m benchmarks.dynamic_float_layers_speed     # writes benchmarks/dynamic_float_layers_speed.json (~2 min)

Why: the shipped dynamic-range file keeps the colours (issue 17's accuracy) but is under 2x faster than
float32 on the Intel CPUs it was timed on, while the full-integer file is 3.5x on a CPU with AVX512-VNNI.
The two float convolutions are 11 % of the MACs; the converter has no per-layer switch, so each is
computed as two convolutions of fewer than 1,024 weights, concatenated (`kd_tf.float_layers`), and
XNNPACK runs them in float32. Weights do not change the speed, so the converter's own rounding is used
(no GPTQ, no tuning). Run it on an otherwise idle machine; the CPU flags go into the file.
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
from benchmarks.tflite_speed import REPEATS, THREADS, float32_flatbuffer, median_ms
from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
STUDENT = MODELS_DIR / "denoise" / "student.keras"
SHAPES = ((1, 256, 256, 3), (1, 512, 512, 3))
FLOAT_LAYERS = {                      # variant name -> convolutions kept in float
    "dynamic, no float convolution": [],
    "dynamic, enc0_block0_conv1 in float": ["enc0_block0_conv1"],
    "dynamic, dec0_block0_conv1 in float": ["dec0_block0_conv1"],
    "dynamic, both in float (shipped recipe)": ["enc0_block0_conv1", "dec0_block0_conv1"],
}


def dynamic_flatbuffer(student, float_layers: list[str], workdir: Path) -> bytes:
    """The dynamic-range flatbuffer of `student` with `float_layers` kept in float, as the export
    builds it (kd_tf.float_layers.keep_float, then SavedModel, then the converter)."""
    from kd_tf import export
    from kd_tf.float_layers import keep_float

    model = keep_float(student, float_layers) if float_layers else student
    saved = export.export_saved_model(model, workdir / ("dynamic_" + "_".join(float_layers or ["none"])))
    return export.to_tflite(saved, "dynamic")


def main(argv=None) -> int:
    from kd_tf.export import LiteRTModel, op_names
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "dynamic_float_layers_speed.json", help="results file")
    args = parser.parse_args(argv)
    student = load_model(STUDENT)
    results = {"machine": machine_info(), "repeats": REPEATS, "keras_model": str(STUDENT.relative_to(MODELS_DIR.parent)),
               "models": {}}
    rng = np.random.default_rng(0)
    batches = {shape: rng.random(shape).astype(np.float32) for shape in SHAPES}
    with tempfile.TemporaryDirectory() as workdir:
        flat32 = float32_flatbuffer(STUDENT, Path(workdir))
        float_ms = {(shape, threads): median_ms(LiteRTModel(flat32, num_threads=threads), batches[shape])
                    for shape in SHAPES for threads in THREADS}
        for name, layers in FLOAT_LAYERS.items():
            flat = dynamic_flatbuffer(student, layers, Path(workdir))
            row = {"float_layers": layers, "bytes": {"float32": len(flat32), "int8": len(flat)},
                   "size_ratio_float32_over_int8": len(flat32) / len(flat), "ops": sorted(set(op_names(flat))),
                   "timings": []}
            for shape in SHAPES:
                for threads in THREADS:
                    int8_ms = median_ms(LiteRTModel(flat, num_threads=threads), batches[shape])
                    reference = float_ms[(shape, threads)]
                    row["timings"].append({"input_shape": list(shape), "threads": threads, "float32_ms": reference,
                                           "int8_ms": int8_ms, "speedup_int8": reference / int8_ms})
                    print(f"{name} {shape} {threads} thread(s): float32 {reference:.1f} ms, int8 {int8_ms:.1f} ms, "
                          f"{reference / int8_ms:.2f}x", flush=True)
            row["min_speedup_int8"] = min(t["speedup_int8"] for t in row["timings"])
            results["models"][name] = row
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
