"""Benchmark 2: achieved FLOP/s of the teacher and student steps against this machine's measured peak.

MACs come from kd_tf.complexity (convolutions only, as papers count them). A training step is
counted as 3x the forward MACs (forward, gradient w.r.t. activations, gradient w.r.t. weights);
the teacher step of distillation is its forward pass. FLOPs = 2 x MACs. The peak is what
TensorFlow itself reaches on this CPU at the same dtype, on a large square matmul and on a
3x3 convolution: utilisation below it is lost to small layers, memory traffic and overheads,
not to the hardware.
"""

from __future__ import annotations

import tensorflow as tf

from benchmarks.common import FEATURES, Bench, best_seconds, distill_step, forward_pass, student_step
from kd_tf.complexity import count_macs

DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16}


def measured_peak(bench: Bench, precision: str) -> dict:
    """GFLOP/s of an n x n x n matmul and of a 3x3 'same' convolution (C -> C channels)."""
    sizes, dtype = bench.sizes, DTYPES[precision]

    def run():
        n = sizes.peak_matmul
        a = tf.cast(tf.random.uniform((n, n)), dtype)
        b = tf.cast(tf.random.uniform((n, n)), dtype)
        matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
        matmul_s = best_seconds(lambda: matmul().numpy(), sizes.peak_repeats)

        batch, height, width, channels = sizes.peak_conv
        x = tf.cast(tf.random.uniform(sizes.peak_conv), dtype)
        kernel = tf.cast(tf.random.uniform((3, 3, channels, channels)) * 0.01, dtype)
        conv = tf.function(lambda: tf.reduce_sum(tf.cast(tf.nn.conv2d(x, kernel, 1, "SAME"), tf.float32)))
        conv_s = best_seconds(lambda: conv().numpy(), sizes.peak_repeats)
        conv_flops = 2 * batch * height * width * channels * channels * 9
        return {"matmul_gflops": 2 * n ** 3 / matmul_s / 1e9, "matmul_n": n,
                "conv3x3_gflops": conv_flops / conv_s / 1e9, "conv3x3_input": list(sizes.peak_conv)}

    return bench.measure(("peak", precision), run)


def step_macs(bench: Bench) -> dict:
    """MACs per step (whole batch) of the teacher forward, the student forward and the adapter."""
    sizes = bench.sizes
    shape = (sizes.patch, sizes.patch, 3)
    teacher = bench.teacher("fp32")
    student = bench.student("fp32")
    (teacher_layer, student_layer, _), = FEATURES
    adapter = (sizes.patch ** 2 * student.get_layer(student_layer).output.shape[-1]
               * teacher.get_layer(teacher_layer).output.shape[-1])          # 1x1 conv at full resolution
    return {"teacher_forward": count_macs(teacher, shape) * sizes.batch,
            "student_forward": count_macs(student, shape) * sizes.batch,
            "adapter_forward": adapter * sizes.batch}


def flops(bench: Bench) -> dict:
    """Achieved GFLOP/s and utilisation of the peak, per step kind and precision."""
    macs = step_macs(bench)
    steps = {
        "teacher forward": (lambda p: forward_pass(bench, p, "teacher"), macs["teacher_forward"]),
        "student train step": (lambda p: student_step(bench, p), 3 * macs["student_forward"]),
        "distill step (a)": (lambda p: distill_step(bench, p, features=True),
                             macs["teacher_forward"] + 3 * (macs["student_forward"] + macs["adapter_forward"])),
    }
    rows = []
    for precision in ("fp32", "bf16"):
        peak = measured_peak(bench, precision)
        best_peak = max(peak["matmul_gflops"], peak["conv3x3_gflops"])
        for name, (measure, step_mac) in steps.items():
            if name == "distill step (a)" and precision == "fp32":
                continue                                    # the default-precision step is enough here
            stats = measure(precision)
            achieved = 2 * step_mac / stats.median_s / 1e9
            rows.append({"step": name, "precision": precision, "gmacs_per_step": step_mac / 1e9,
                         "step_s": stats.median_s, "achieved_gflops": achieved,
                         "utilisation_of_conv_peak": achieved / peak["conv3x3_gflops"],
                         "utilisation_of_best_peak": achieved / best_peak})
    return {"batch": bench.sizes.batch, "patch": bench.sizes.patch, "macs": macs,
            "peak": {p: measured_peak(bench, p) for p in ("fp32", "bf16")}, "rows": rows}
