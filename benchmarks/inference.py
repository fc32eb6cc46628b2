"""Benchmark 4: ms per 512x512 photo and held-out PSNR (sigma 25) of every way to denoise.

The student's deployable formats (Keras, SavedModel, TFLite float32 and full int8) come from
kd_tf.denoise.export_job.export_student, the same parity report `python -m kd_tf export` prints: its PSNR is
on the held-out photos, its latency the median of 5 runs on one 512x512 image (TensorFlow with
every core; LiteRT with 1 and 2 threads). The teacher, OpenCV NL-means and CBM3D go through
kd_tf.denoise.evaluation, with the same noisy images (seed 2024 + image index).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import EVAL_SEED, EVAL_SIGMA, STUDENT_PATH, Bench
from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.denoise.evaluation import Method, evaluate
from kd_tf.denoise.export_job import export_student
from kd_tf.model_io import load_model, with_dtype_policy

STUDENT_FORMATS = ["keras", "savedmodel", "float32", "int8"]
TARGET_INT8_VS_CBM3D = 100.0      # int8 student >= 100x faster than CBM3D per photo


def classical_and_teacher(bench: Bench) -> dict:
    """Teacher (float32 and its bfloat16 clone), the student in bfloat16, NL-means and CBM3D."""
    teacher = bench.teacher("fp32")
    student_bf16 = with_dtype_policy(load_model(STUDENT_PATH), "mixed_bfloat16")
    methods = [Method("teacher (Keras fp32)", model=teacher), Method("teacher (Keras bf16)", model=bench.teacher("bf16")),
               Method("student (Keras bf16)", model=student_bf16),
               Method("nlmeans", classical="nlmeans"), Method("cbm3d", classical="cbm3d")]
    report = evaluate(methods, bench.heldout, sigmas=(EVAL_SIGMA,), seed=EVAL_SEED,
                      timing_size=bench.sizes.inference_size, progress=bench.log)
    size = bench.sizes.inference_size
    return {name: {"psnr": entry["scores"][str(EVAL_SIGMA)]["psnr"], "ssim": entry["scores"][str(EVAL_SIGMA)]["ssim"],
                   "ms_all_threads": entry[f"ms_per_{size}"]}
            for name, entry in report["methods"].items()}


def student_formats(bench: Bench) -> dict:
    """The shipped student exported to each format and measured by kd_tf's own parity report."""
    size = bench.sizes.inference_size
    with tempfile.TemporaryDirectory(prefix="kd_tf_bench_") as scratch:
        config = denoise_config.ExportJobConfig(
            model=STUDENT_PATH, out_dir=str(Path(scratch) / "export"), formats=STUDENT_FORMATS,
            calibration_batches=bench.sizes.calibration_batches, sigma=EVAL_SIGMA, latency_sizes=[size],
            threads=[1, 2], eval_seed=EVAL_SEED,
            output=cfg.OutputConfig(run_name="benchmark-export", runs_dir=scratch, log_dir=scratch))
        report = export_student(config)
    rows = {}
    for name, row in report["formats"].items():
        latency = row["latency_ms"]
        rows[f"student ({name})"] = {
            "psnr": row["psnr"], "ssim": row["ssim"], "mb": row["bytes"] / 2 ** 20,
            "ms_all_threads": latency.get(f"{size}px_all_threads"),
            "ms_1_thread": latency.get(f"{size}px_1_threads"), "ms_2_threads": latency.get(f"{size}px_2_threads")}
    return rows


def inference(bench: Bench) -> dict:
    """Every row: PSNR and ms per photo; and the int8-vs-CBM3D ratio of the target."""
    rows = {**classical_and_teacher(bench), **student_formats(bench)}
    int8 = rows.get("student (int8)", {})
    int8_ms = int8.get("ms_2_threads") or int8.get("ms_all_threads")
    cbm3d_ms = rows["cbm3d"]["ms_all_threads"]
    return {"size": bench.sizes.inference_size, "sigma": EVAL_SIGMA, "photos": sorted(bench.heldout),
            "rows": rows, "cbm3d_over_int8": cbm3d_ms / int8_ms if int8_ms else None,
            "targets": {"cbm3d_over_int8_min": TARGET_INT8_VS_CBM3D}}
