"""What the float convolutions of the dynamic-range denoising file cost in speed: the shipped student
converted to dynamic-range int8 with none, one or both of the two convolutions the export keeps in float
(`configs/export_dynamic.yaml`'s `dynamic_float_layers`), each against the float32 TFLite twin, same threads.

    python -m benchmarks.dynamic_float_layers_speed     # writes benchmarks/dynamic_float_layers_speed.json (~4 min)

Why: the shipped dynamic-range file keeps the colours (issue 17's accuracy) but is under 2x faster than
float32 on the Intel CPUs it was timed on, while the full-integer file is 3.5x on a CPU with AVX512-VNNI.
The two float convolutions are 11 % of the MACs; the converter has no per-layer switch, so each is
computed as two convolutions of fewer than 1,024 weights, concatenated (`kd_tf.float_layers`), and
XNNPACK runs them in float32. Weights do not change the speed, so the converter's own rounding is used
(no GPTQ, no tuning). Run it on an otherwise idle machine; the CPU flags go into the file.

Each set of float layers is timed twice: split into groups for the converter, as the export wrote
them until session 35, and one op per layer, written by ai-edge-quantizer from the float32 file
(`kd_tf.export.dynamic_range_int8`, the export's way since session 36): the split, not the float
arithmetic, was most of the cost.
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
from benchmarks.tflite_speed import REPEATS, THREADS, alternating_median_ms, float32_flatbuffer
from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
STUDENT = MODELS_DIR / "denoise" / "student.keras"
SIDES = (256, 512)                  # square inputs, 1 x side x side x 3
FLOAT_LAYERS = {                      # variant name -> (convolutions kept in float, one op each)
    "dynamic, no float convolution": ([], False),
    "dynamic, enc0_block0_conv1 in float": (["enc0_block0_conv1"], False),
    "dynamic, dec0_block0_conv1 in float": (["dec0_block0_conv1"], False),
    "dynamic, both in float, split (shipped until session 35)": (["enc0_block0_conv1", "dec0_block0_conv1"], False),
    "dynamic, enc0_block0_conv1 in float, one op": (["enc0_block0_conv1"], True),
    "dynamic, dec0_block0_conv1 in float, one op": (["dec0_block0_conv1"], True),
    "dynamic, both in float, one op each (export since session 36)": (["enc0_block0_conv1", "dec0_block0_conv1"], True),
}


def dynamic_flatbuffer(student, float_layers: list[str], workdir: Path, joined: bool = False,
                       float32: bytes | None = None) -> bytes:
    """The dynamic-range flatbuffer of `student` with `float_layers` kept in float: split into
    groups for the converter (kd_tf.float_layers.keep_float, SavedModel, converter), or with
    `joined` one op each by ai-edge-quantizer from `float32`, the student's float32 file."""
    from kd_tf import export
    from kd_tf.float_layers import keep_float

    if joined:
        return export.dynamic_range_int8(float32, float_layers)
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
    batches = {side: rng.random((1, side, side, 3)).astype(np.float32) for side in SIDES}
    with tempfile.TemporaryDirectory() as workdir:
        flat32 = float32_flatbuffer(STUDENT, Path(workdir))
        for name, (layers, joined) in FLOAT_LAYERS.items():
            flat = dynamic_flatbuffer(student, layers, Path(workdir), joined, flat32)
            row = {"float_layers": layers, "float_layers_one_op_each": joined,
                   "bytes": {"float32": len(flat32), "int8": len(flat)}, "size_ratio_float32_over_int8": len(flat32) / len(flat), "ops": sorted(set(op_names(flat))),
                   "timings": []}
            for side in SIDES:
                for threads in THREADS:
                    # float32 and int8 invoked in turn, so that a neighbour's load slows both alike
                    ms = alternating_median_ms({"float32": LiteRTModel(flat32, num_threads=threads),
                                                "int8": LiteRTModel(flat, num_threads=threads)}, batches[side])
                    reference, int8_ms = ms["float32"], ms["int8"]
                    row["timings"].append({"input_shape": [1, side, side, 3], "threads": threads,
                                           "float32_ms": reference, "int8_ms": int8_ms,
                                           "speedup_int8": reference / int8_ms})
                    print(f"{name} {side} px {threads} thread(s): float32 {reference:.1f} ms, int8 {int8_ms:.1f} ms, "
                          f"{reference / int8_ms:.2f}x", flush=True)
            row["min_speedup_int8"] = min(t["speedup_int8"] for t in row["timings"])
            results["models"][name] = row
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
