"""What distillation adds to the denoising student, paired by seed, on both held-out sets.

    python -m benchmarks.distillation_gain                 # seeds 0 1 2, the main job's steps
    python -m benchmarks.distillation_gain --seeds 3 4     # more seeds; runs already done are read back

Each seed is one main job (`kd_tf.denoise.jobs.distill` with the default config: the FFDNet teacher, the
11-22-44-88 student, the main job's steps), changed only by `train.seed`, with no classical baselines and no
export. Its report holds the arms that share seed, initial weights and patch stream:

- (a) scratch: the student on its own objective alone (student_loss_weight 1) from random weights;
- (c) distilled: the same student from the same random weights, student_loss_weight 0.5, offline teacher.

(b) the teacher's weights without distillation and (d) both need a student of the teacher's family
(weight inheritance copies a kd_tf U-Net's channels); FFDNet is not one, so with the shipped teacher
they do not exist and the table says so.

Gap closure per seed and held-out set: (distilled - scratch) / (teacher - scratch). Time to the
scratch student's final PSNR: the wall clock at which the distilled student's validation PSNR first
reaches the scratch student's last (teacher cache included, epochs linearly interpolated in time).
Results: benchmarks/distillation_gain/GAIN.md and gain.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info

HERE = Path(__file__).resolve().parent
SIGMA = "25.0"
ARMS = {"teacher": "teacher", "distilled": "student (distilled)", "scratch": "student (scratch)"}


def run_seed(seed: int, steps: int, runs_dir: str) -> dict:
    """One main job for `seed` (read back when its report exists: a killed benchmark continues)."""
    name = f"gain-{steps}-s{seed}"
    path = Path(runs_dir) / name / "report.json"
    if path.is_file():
        report = json.loads(path.read_text())
        if "methods" in report:
            return report
    from kd_tf import config as cfg
    from kd_tf.denoise import config as denoise_config
    from kd_tf.denoise import jobs

    overrides = {"train.seed": seed, "train.steps": steps, "distill.compare_scratch": True, "output.run_name": name, "output.runs_dir": runs_dir,
                 "eval.sigmas": [float(SIGMA)], "eval.baselines": [], "export_formats": []}
    return jobs.distill(cfg.load(denoise_config.DistillJobConfig, None, overrides))


def psnr_of(scores: dict, arm: str) -> float:
    return scores["methods"][ARMS[arm]]["scores"][SIGMA]["psnr"]


def time_to_scratch_final(report: dict) -> dict:
    """Seconds the distilled student needs to reach the scratch student's final validation PSNR."""
    distill = report["history"]["distill"]["val_psnr"]
    target = report["history"]["scratch"]["val_psnr"][-1]
    timings = report["timings"]
    cache = timings.get("teacher_cache_seconds", 0.0)
    per_epoch = (timings["distill_seconds"] - cache) / len(distill)
    reached = next((index for index, value in enumerate(distill) if value >= target), None)
    return {"scratch_final_val_psnr": target, "scratch_seconds": timings["scratch_seconds"],
            "teacher_cache_seconds": cache, "distill_seconds_with_cache": timings["distill_seconds"],
            "distilled_epochs_to_reach": None if reached is None else reached + 1, "epochs": len(distill),
            "distilled_seconds_to_reach": None if reached is None else cache + per_epoch * (reached + 1)}


def summarise(reports: dict[int, dict]) -> dict:
    sets = {"heldout1": lambda r: r, "heldout2": lambda r: r.get("heldout2")}
    summary = {"sigma": float(SIGMA), "seeds": sorted(reports), "sets": {}}
    for set_name, pick in sets.items():
        rows = {}
        for seed, report in sorted(reports.items()):
            scores = pick(report)
            if scores is None:
                continue
            teacher, distilled, scratch = (psnr_of(scores, arm) for arm in ("teacher", "distilled", "scratch"))
            rows[seed] = {"teacher": teacher, "distilled": distilled, "scratch": scratch,
                          "distilled_minus_scratch": distilled - scratch,
                          "teacher_minus_distilled": teacher - distilled,
                          "gap_closure": (distilled - scratch) / (teacher - scratch)}
        if not rows:
            continue
        columns = next(iter(rows.values())).keys()
        summary["sets"][set_name] = {
            "images": sorted(pick(next(iter(reports.values())))["images"]),
            "per_seed": rows,
            "mean": {key: float(np.mean([row[key] for row in rows.values()])) for key in columns},
            "sd": {key: float(np.std([row[key] for row in rows.values()], ddof=1)) if len(rows) > 1 else None
                   for key in columns},
            "distilled_above_scratch_on_every_seed": all(row["distilled_minus_scratch"] > 0 for row in rows.values()),
        }
    summary["time_to_scratch_final"] = {seed: time_to_scratch_final(r) for seed, r in sorted(reports.items())}
    first = next(iter(reports.values()))
    summary["teacher_path"] = first.get("teacher_path")
    summary["student"] = first["config"]["student"]
    summary["macs_512"] = {arm: first["methods"][ARMS[arm]]["macs_512"] for arm in ("teacher", "distilled")}
    return summary


def _relative(path: str | None) -> str | None:
    """A path inside the repository as the README writes it (models/...), others as given."""
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except (TypeError, ValueError):
        return path


def render(summary: dict) -> str:
    lines = [f"# What distillation adds (sigma {summary['sigma']:g}, seeds {summary['seeds']}, paired by seed)", "",
             f"Teacher `{_relative(summary['teacher_path'])}`; student widths {summary['student']['widths']}, "
             f"{summary['student']['blocks']} block(s); MACs at 512x512: teacher "
             f"{summary['macs_512']['teacher'] / 1e9:.2f} G, student {summary['macs_512']['distilled'] / 1e9:.2f} G "
             f"(1/{summary['macs_512']['teacher'] / summary['macs_512']['distilled']:.1f}). "
             f"Reproduce: `python -m benchmarks.distillation_gain --seeds {' '.join(map(str, summary['seeds']))}`.", ""]
    for set_name, data in summary["sets"].items():
        lines += [f"## {set_name} ({len(data['images'])} photos)", "",
                  "| seed | teacher | (c) distilled | (a) scratch | (c) - (a) | teacher - (c) | gap closure |",
                  "|---|---|---|---|---|---|---|"]
        for seed, row in data["per_seed"].items():
            lines.append(f"| {seed} | {row['teacher']:.3f} | {row['distilled']:.3f} | {row['scratch']:.3f} | "
                         f"{row['distilled_minus_scratch']:+.3f} | {row['teacher_minus_distilled']:.3f} | "
                         f"{row['gap_closure']:.1%} |")
        mean, sd = data["mean"], data["sd"]
        spread = lambda key, fmt: "" if sd[key] is None else f" ± {format(sd[key], fmt)}"
        lines.append(f"| mean ± sd | {mean['teacher']:.3f} | {mean['distilled']:.3f}{spread('distilled', '.3f')} | "
                     f"{mean['scratch']:.3f}{spread('scratch', '.3f')} | "
                     f"{mean['distilled_minus_scratch']:+.3f}{spread('distilled_minus_scratch', '.3f')} | "
                     f"{mean['teacher_minus_distilled']:.3f}{spread('teacher_minus_distilled', '.3f')} | "
                     f"{mean['gap_closure']:.1%}{spread('gap_closure', '.1%')} |")
        lines += ["", f"Distilled above scratch on every seed: {data['distilled_above_scratch_on_every_seed']}.",
                  "(b) teacher's weights only and (d) weights + distillation: not applicable, FFDNet is not a "
                  "kd_tf U-Net whose channels a student can inherit.", ""]
    lines += ["## Time to the scratch student's final PSNR (validation crops of held-out set 1)", "",
              "| seed | scratch final val PSNR | scratch train s | teacher cache s | distilled reaches it after |",
              "|---|---|---|---|---|"]
    for seed, row in summary["time_to_scratch_final"].items():
        reach = ("never" if row["distilled_seconds_to_reach"] is None else
                 f"{row['distilled_seconds_to_reach']:.0f} s (epoch {row['distilled_epochs_to_reach']} of {row['epochs']})")
        lines.append(f"| {seed} | {row['scratch_final_val_psnr']:.3f} | {row['scratch_seconds']:.0f} | "
                     f"{row['teacher_cache_seconds']:.0f} | {reach} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="student steps (default: the main job's)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default=str(HERE / "distillation_gain"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from kd_tf.denoise import config as denoise_config

    steps = args.steps or denoise_config.DistillJobConfig().train.steps
    reports = {}
    for seed in args.seeds:
        reports[seed] = run_seed(seed, steps, args.runs_dir)
    summary = summarise(reports)
    summary["machine"] = machine_info()
    (out / "gain.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "GAIN.md").write_text(render(summary))
    print(render(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
