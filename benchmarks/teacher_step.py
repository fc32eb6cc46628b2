"""The denoising teacher's training step (FFDNet fine-tuning) in FLOP/s against this CPU's measured
3x3-convolution peak, in float32 and bfloat16, and its forward pass (what the teacher cache costs).

    python -m benchmarks.teacher_step          # writes benchmarks/teacher_step.json

A training step counts 3x the forward MACs (kd_tf.complexity: convolutions only); FLOPs = 2 x MACs.
Run it on an otherwise idle machine: `cores_busy_by_others` is recorded beside the figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import Bench, Sizes, cores_busy_by_others, machine_info, median_seconds
from benchmarks.flops import measured_peak
from kd_tf.denoise import config as denoise_config
from kd_tf.complexity import count_macs
from kd_tf.model_io import load_model, with_dtype_policy

HERE = Path(__file__).resolve().parent
BATCH, PATCH, TIMED = 16, 64, 6


def main() -> int:
    teacher = load_model(denoise_config.DEFAULT_TEACHER)
    macs = count_macs(teacher, [(PATCH, PATCH, 3), (1,)]) * BATCH
    rng = np.random.default_rng(0)
    x = [rng.random((BATCH, PATCH, PATCH, 3), np.float32), np.full((BATCH, 1), 25 / 255, np.float32)]
    y = rng.random((BATCH, PATCH, PATCH, 3), np.float32)
    busy = cores_busy_by_others()
    results = {"teacher": denoise_config.DEFAULT_TEACHER, "batch": BATCH, "patch": PATCH, "forward_macs": macs,
               "cores_busy_by_others_at_start": busy, "machine": machine_info(), "precisions": {}}
    bench = Bench(Sizes(), quick=False, log=lambda _: None)
    for precision, policy in (("fp32", "float32"), ("bf16", "mixed_bfloat16")):
        model = with_dtype_policy(teacher, policy)
        model.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="mse")
        train_s = median_seconds(lambda: model.train_on_batch(x, y), 3 if precision == "bf16" else TIMED)
        forward = tf.function(lambda batch: model(batch, training=False))
        forward_s = median_seconds(lambda: forward(x).numpy(), TIMED)
        peak = measured_peak(bench, precision)["conv3x3_gflops"]
        train_gflops = 3 * 2 * macs / train_s / 1e9
        forward_gflops = 2 * macs / forward_s / 1e9
        results["precisions"][precision] = {
            "train_step_s": train_s, "train_gflops": train_gflops, "train_share_of_conv_peak": train_gflops / peak,
            "forward_s": forward_s, "forward_gflops": forward_gflops, "forward_share_of_conv_peak": forward_gflops / peak,
            "conv3x3_peak_gflops": peak}
        print(precision, json.dumps(results["precisions"][precision]))
    (HERE / "teacher_step.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
