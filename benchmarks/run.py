"""Runs the benchmarks of issue 6 and writes RESULTS.md and results.json.

    python -m benchmarks.run                  # everything, full sizes (~25 min on 2 cores)
    python -m benchmarks.run --quick          # tiny sizes, ~2 min: checks the code, not a result
    python -m benchmarks.run --only levers    # one or more of: step_cost flops levers inference scaling profile

Full runs write benchmarks/RESULTS.md and benchmarks/results.json; quick runs write to
benchmarks/quick/ (ignored by git) unless --out says otherwise. With --only, the sections run
now replace theirs in an existing results.json and the others are kept (each says when it was
measured).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import dataclasses
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.common import FULL, QUICK, Bench, children_peak_rss_mb, machine_info, peak_rss_mb
from benchmarks.flops import flops
from benchmarks.inference import inference
from benchmarks.levers import levers
from benchmarks.profiling import profile
from benchmarks.scaling import scaling
from benchmarks.step_cost import step_cost

BENCHMARKS = {"step_cost": step_cost, "flops": flops, "levers": levers, "inference": inference, "scaling": scaling,
              "profile": profile}
HERE = Path(__file__).resolve().parent


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs (~2 min)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", help="folder for RESULTS.md and results.json "
                                      "(default: benchmarks/, or benchmarks/quick/ with --quick)")
    parser.add_argument("--lever-steps", type=int, help="steps of each lever training (default: 600)")
    parser.add_argument("--train-all-levers", action="store_true",
                        help="also train levers that make the step slower (their PSNR cost decides nothing)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = QUICK if args.quick else FULL
    if args.lever_steps:
        sizes = dataclasses.replace(sizes, lever_train_steps=args.lever_steps,
                                    cache_bank_batches=max(1, args.lever_steps // 10))
    out = Path(args.out) if args.out else (HERE / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    machine = machine_info()
    results = {"machine": machine, "quick": args.quick, "sizes": dataclasses.asdict(sizes), "sections": {}}
    previous = out / "results.json"
    if args.only and previous.is_file():
        kept = json.loads(previous.read_text())
        if kept.get("quick") == args.quick:
            results["sections"] = {k: v for k, v in kept.get("sections", {}).items() if k not in names}

    bench = Bench(sizes, args.quick, log=log, train_all_levers=args.train_all_levers)
    failed = []
    for name in names:
        log(f"== {name}")
        section_started = time.perf_counter()
        try:
            section = BENCHMARKS[name](bench)
        except Exception as error:                   # noqa: BLE001 - the other benchmarks still run
            traceback.print_exc()
            section = {"error": f"{type(error).__name__}: {error}"}
            failed.append(name)
        section.update(measured_at=machine["date_utc"], wall_s=time.perf_counter() - section_started,
                       peak_rss_mb_after=peak_rss_mb())
        results["sections"][name] = section
        _write(out, results, started)                # partial results survive an interrupted run
    _write(out, results, started)
    log(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _write(out: Path, results: dict, started: float) -> None:
    results.update(wall_s=time.perf_counter() - started, peak_rss_mb=peak_rss_mb(),
                   children_peak_rss_mb=children_peak_rss_mb(), load_average_at_end=list(os.getloadavg()))
    temporary = out / "results.json.partial"
    temporary.write_text(json.dumps(results, indent=2, default=_jsonable))
    os.replace(temporary, out / "results.json")
    (out / "RESULTS.md").write_text(report.render(results))


if __name__ == "__main__":
    sys.exit(main())
