"""One thread setting, in a process of its own (TensorFlow fixes its thread pools at start-up).

`python -m benchmarks.thread_probe INTRA INTER [--quick]`, with TF_ENABLE_ONEDNN_OPTS set by the
caller (benchmarks.levers.thread_settings). Prints one JSON line: the main job's distill step
time, and the shipped student's held-out PSNR and ms per photo under this setting.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("intra", type=int, help="intra-op threads (0: TensorFlow's default)")
    parser.add_argument("inter", type=int, help="inter-op threads (0: TensorFlow's default)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)

    from benchmarks.common import DEFAULT_PRECISION, FULL, QUICK, STUDENT_PATH, Bench, distill_step
    from benchmarks.levers import heldout_score
    from kd_tf.denoise.evaluation import Method, timing_ms
    from kd_tf.model_io import load_model

    bench = Bench(QUICK if args.quick else FULL, args.quick, log=lambda *_: None)
    step = distill_step(bench, DEFAULT_PRECISION, features=False)
    student = load_model(STUDENT_PATH)
    result = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
              "inter": tf.config.threading.get_inter_op_parallelism_threads(),
              "step_s": step.median_s, "step_mean_s": step.mean_s,
              "student_ms_per_photo": timing_ms(Method("student", model=student), bench.sizes.inference_size),
              **heldout_score(bench, student)}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
