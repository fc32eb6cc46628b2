"""Peak memory of the teacher cache's tf.data stream: the bank copied into the graph by
from_tensor_slices (before) against the bank read in place by index (kd_tf.teacher_cache now).

    python -m benchmarks.teacher_cache_memory [--batches 500] [--out benchmarks/teacher_cache_memory.json]

Each variant runs in a fresh process (ru_maxrss is a process's peak): build a float16 bank of
`batches` x 16 patches of 64x64x3 (inputs, teacher outputs, targets), then draw 50 batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return float(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0       # kB on Linux


def run_variant(variant: str, batches: int) -> dict:
    import tensorflow as tf

    from kd_tf.teacher_cache import TeacherCache

    samples = batches * 16
    rng = np.random.default_rng(0)
    bank = [np.empty((samples, 64, 64, 3), np.float16) for _ in range(3)]
    for array in bank:                                # touch every page, as a real cache does
        for start in range(0, samples, 1024):
            array[start:start + 1024] = rng.random((min(1024, samples - start), 64, 64, 3), np.float32)
    cache = TeacherCache(*bank, seconds=0.0)
    before = {"rss_mb": _rss_mb(), "peak_mb": _peak_mb()}
    if variant == "from_tensor_slices":               # what kd_tf.teacher_cache did before
        stream = tf.data.Dataset.from_tensor_slices(tuple(bank)).shuffle(samples, seed=0).repeat().batch(16)
    else:
        stream = cache.dataset(16, seed=0)
    started = time.perf_counter()
    for _ in stream.take(50):
        pass
    return {"variant": variant, "batches": batches, "bank_mb": cache.nbytes / 2**20, "after_bank": before,
            "peak_rss_mb": _peak_mb(), "extra_peak_mb": _peak_mb() - before["rss_mb"],
            "seconds_for_50_batches": time.perf_counter() - started}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/teacher_cache_memory.json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batches)))
        return {}
    results = {}
    for variant in ("from_tensor_slices", "indexed"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.teacher_cache_memory", "--variant", variant,
                               "--batches", str(args.batches)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    report = {"what": "peak RSS of a teacher-cache stream, bank of float16 64x64x3 patches x 3 arrays",
              "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
              "batches_of_16": args.batches, "results": results,
              "peak_saved_mb": results["from_tensor_slices"]["peak_rss_mb"] - results["indexed"]["peak_rss_mb"]}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
