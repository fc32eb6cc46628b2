"""What distillation adds to the denoising student, paired by seed, on both held-out sets.

    python -m benchmarks.distillation_gain                 # seeds 0 1 2, the main job's steps
    python -m benchmarks.distillation_gain --seeds 3 4     # more seeds; runs already done are read back
    python -m benchmarks.distillation_gain --set student.family=unet --out /tmp/gain-unet   # another student

Each arm is one main job (`kd_tf.denoise.jobs.distill` with the default config: the shipped teacher,
the default student, the main job's steps, plus any `--set`), changed only by `train.seed` and the arm's
settings, with no classical baselines and no export. The arms of one seed share the student's random
weights and the patch stream:

- (a) scratch: the student on its own objective alone (student_loss_weight 1) from random weights,
  on the live patch stream (a fresh batch every step);
- (a2) scratch on the teacher bank: (a) on the batches (c) trains on (the offline teacher's bank,
  distill.cache_batches, served with its flips and turns), own objective alone: the control that
  separates what the teacher's term adds, (c) - (a2), from what training on a bank costs, (a2) - (a);
- (b) inherited: the student starts from the teacher's weights (distill.student_init=teacher), then
  trains on its own objective alone (student_loss_weight 1) on the same teacher-bank batches as (d);
- (c) distilled: from the same random weights as (a), student_loss_weight 0.5, offline teacher;
- (d) inherited + distilled: the teacher's weights, then (c)'s distillation.

(b) and (d) need a student that can inherit from the teacher (a blind FFDNet-shaped student of an
FFDNet teacher, kd_tf.denoise.ffdnet_student, or a U-Net of a U-Net); otherwise they are skipped and
the table says why.

Gap closure per seed and held-out set: (arm - scratch) / (teacher - scratch). Time to the scratch
student's final PSNR: the wall clock at which an arm's validation PSNR first reaches the scratch
student's last (teacher cache and inheritance included, epochs linearly interpolated in time).
Results: benchmarks/distillation_gain/GAIN.md and gain.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info

HERE = Path(__file__).resolve().parent
SIGMA = "25.0"
ARMS = {"a": "(a) scratch", "a2": "(a2) scratch on the teacher bank", "b0": "(b0) inherited, before training",
        "b": "(b) inherited", "c": "(c) distilled", "d": "(d) inherited + distilled"}
# each job's settings: which arms its report holds, as (arm, method row of the report)
JOBS = {
    "ac": ({"distill.student_init": "random", "distill.compare_scratch": True},
           [("c", "student (distilled)"), ("a", "student (scratch)")]),
    "a2": ({"distill.student_init": "random", "distill.student_loss_weight": {"kind": "constant", "start": 1.0}},
           [("a2", "student (distilled)")]),
    "d": ({"distill.student_init": "teacher"}, [("d", "student (distilled)")]),
    "b": ({"distill.student_init": "teacher", "distill.student_loss_weight": {"kind": "constant", "start": 1.0}},
          [("b", "student (distilled)")]),
}


def _tag(overrides: dict) -> str:
    """A short name for the --set overrides, so that runs of other settings are never read back."""
    if not overrides:
        return "default"
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def job_config(seed: int, steps: int, runs_dir: str, overrides: dict, job: str):
    from kd_tf import config as cfg
    from kd_tf.denoise import config as denoise_config

    settings = {**overrides, "train.seed": seed, "train.steps": steps, "distill.compare_scratch": False,
                "output.run_name": f"gain-{steps}-{_tag(overrides)}-s{seed}-{job}", "output.runs_dir": runs_dir,
                "eval.sigmas": [float(SIGMA)], "eval.baselines": [], "export_formats": [], **JOBS[job][0]}
    return cfg.load(denoise_config.DistillJobConfig, None, settings)


def run_job(seed: int, steps: int, runs_dir: str, overrides: dict, job: str) -> dict:
    """One main job (read back when its report exists: a killed benchmark continues)."""
    config = job_config(seed, steps, runs_dir, overrides, job)
    path = Path(runs_dir) / config.output.run_name / "report.json"
    if path.is_file():
        report = json.loads(path.read_text())
        if "methods" in report:
            return report
    from kd_tf.denoise import jobs

    return jobs.distill(config)


def inheritance_problem(overrides: dict) -> str | None:
    """Why the configured student cannot start from the configured teacher's weights, or None."""
    from kd_tf.denoise import jobs
    from kd_tf.model_io import load_float_teacher

    config = job_config(0, 1, "runs", overrides, "d")
    return jobs.student_inheritance_problem(load_float_teacher(config.distill.teacher),
                                            jobs.build_net(config.student, "probe"))


def untrained_inherited(seed: int, steps: int, runs_dir: str, overrides: dict) -> dict:
    """The held-out report of (d)'s student as inheritance leaves it, before any training step:
    what the refit alone carries over (the same patches as (d)'s inheritance)."""
    config = job_config(seed, steps, runs_dir, overrides, "d")
    config.output.run_name += "-untrained"
    path = Path(runs_dir) / config.output.run_name / "report.json"
    if path.is_file():
        return json.loads(path.read_text())
    import keras
    from kd_tf.denoise import jobs
    from kd_tf.model_io import load_float_teacher, save_model

    keras.utils.set_random_seed(seed)
    _, stream, _, _ = jobs.training_data(config.data, seed)
    student = jobs.build_net(config.student, "student")
    jobs.start_from_teacher("teacher", load_float_teacher(config.distill.teacher), student,
                            stream(0, noise_level_for_teacher=True))
    model_path = save_model(student, Path(runs_dir) / config.output.run_name / "student_untrained.keras")
    return jobs.evaluate_saved(config, None, {UNTRAINED: str(model_path)})


UNTRAINED = "inherited, before training"


def run_seed(seed: int, steps: int, runs_dir: str, overrides: dict, with_inheritance: bool,
             jobs: tuple = tuple(JOBS)) -> dict:
    """{arm: {"report": report, "method": row name}} for one seed ("b0": (d)'s start, untrained), from
    the `jobs` asked for ("ac" always: (a) is every comparison's reference)."""
    arms = {}
    wanted = ["ac"] + [job for job in jobs if job != "ac" and (with_inheritance or job in ("a2",))]
    for job in wanted:
        report = run_job(seed, steps, runs_dir, overrides, job)
        for arm, method in JOBS[job][1]:
            arms[arm] = {"report": report, "method": method}
    if with_inheritance and "d" in wanted:
        arms["b0"] = {"report": untrained_inherited(seed, steps, runs_dir, overrides), "method": UNTRAINED}
    return arms


def psnr_of(scores: dict, method: str) -> float:
    return scores["methods"][method]["scores"][SIGMA]["psnr"]


def time_to_scratch_final(arms: dict, arm: str) -> dict:
    """Seconds `arm` needs to reach the scratch student's final validation PSNR."""
    scratch = arms["a"]["report"]
    report = arms[arm]["report"]
    history = report["history"]["distill"]["val_psnr"]
    target = scratch["history"]["scratch"]["val_psnr"][-1]
    timings = report["timings"]
    overhead = timings.get("teacher_cache_seconds", 0.0) + timings.get("inherit_seconds", 0.0)
    per_epoch = (timings["distill_seconds"] - timings.get("teacher_cache_seconds", 0.0)) / len(history)
    reached = next((index for index, value in enumerate(history) if value >= target), None)
    return {"scratch_final_val_psnr": target, "scratch_seconds": scratch["timings"]["scratch_seconds"],
            "teacher_cache_seconds": timings.get("teacher_cache_seconds", 0.0),
            "inherit_seconds": timings.get("inherit_seconds", 0.0),
            "epochs_to_reach": None if reached is None else reached + 1, "epochs": len(history),
            "seconds_to_reach": None if reached is None else overhead + per_epoch * (reached + 1)}


def summarise(per_seed: dict[int, dict], why_no_inheritance: str | None) -> dict:
    sets = {"heldout1": lambda r: r, "heldout2": lambda r: r.get("heldout2")}
    summary = {"sigma": float(SIGMA), "seeds": sorted(per_seed), "sets": {}, "arms": ARMS,
               "inheritance": why_no_inheritance or "yes"}
    for set_name, pick in sets.items():
        rows = {}
        for seed, arms in sorted(per_seed.items()):
            scores = {arm: pick(entry["report"]) for arm, entry in arms.items()}
            if any(value is None for value in scores.values()):
                continue
            row = {"teacher": psnr_of(scores["a"], "teacher")}
            row.update({arm: psnr_of(scores[arm], entry["method"]) for arm, entry in arms.items()})
            for arm in [arm for arm in ("a2", "b0", "b", "c", "d") if arm in arms]:
                row[f"{arm}_minus_a"] = row[arm] - row["a"]
                row[f"gap_closure_{arm}"] = (row[arm] - row["a"]) / (row["teacher"] - row["a"])
            if "a2" in arms:
                row["c_minus_a2"] = row["c"] - row["a2"]
            if "d" in arms:
                row["d_minus_b"] = row["d"] - row["b"]
                row["d_minus_b0"] = row["d"] - row["b0"]
                row["teacher_minus_d"] = row["teacher"] - row["d"]
            rows[seed] = row
        if not rows:
            continue
        columns = next(iter(rows.values())).keys()
        summary["sets"][set_name] = {
            "images": sorted(pick(next(iter(per_seed.values()))["a"]["report"])["images"]),
            "per_seed": rows,
            "mean": {key: float(np.mean([row[key] for row in rows.values()])) for key in columns},
            "sd": {key: float(np.std([row[key] for row in rows.values()], ddof=1)) if len(rows) > 1 else None
                   for key in columns},
            "above_scratch_on_every_seed": {arm: all(row[f"{arm}_minus_a"] > 0 for row in rows.values())
                                            for arm in ("a2", "b0", "b", "c", "d") if f"{arm}_minus_a" in columns},
        }
    summary["time_to_scratch_final"] = {
        seed: {arm: time_to_scratch_final(arms, arm) for arm in ("c", "d") if arm in arms}
        for seed, arms in sorted(per_seed.items())}
    first = per_seed[min(per_seed)]["a"]["report"]
    summary["teacher_path"] = first.get("teacher_path")
    summary["student"] = first["config"]["student"]
    summary["macs_512"] = {"teacher": first["methods"]["teacher"]["macs_512"],
                           "student": first["methods"]["student (scratch)"]["macs_512"]}
    summary["runs"] = {seed: {arm: entry["report"]["run"] for arm, entry in arms.items()}
                       for seed, arms in sorted(per_seed.items())}
    return summary


def _relative(path: str | None) -> str | None:
    """A path inside the repository as the README writes it (models/...), others as given."""
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except (TypeError, ValueError):
        return path


def _student_text(student: dict) -> str:
    if student.get("family") == "ffdnet":
        return f"blind FFDNet-shaped student, {student['features']} channels, {student['depth']} convolutions"
    return f"U-Net student, widths {student['widths']}, {student['blocks']} block(s)"


def render(summary: dict, command: str) -> str:
    arms = [arm for arm in ("a", "a2", "b0", "b", "c", "d") if any(arm in row for data in summary["sets"].values()
                                                                 for row in data["per_seed"].values())]
    trained = [arm for arm in arms if arm != "a"]
    lines = [f"# What distillation adds (sigma {summary['sigma']:g}, seeds {summary['seeds']}, paired by seed)", "",
             f"Teacher `{_relative(summary['teacher_path'])}`; {_student_text(summary['student'])}; MACs at 512x512: "
             f"teacher {summary['macs_512']['teacher'] / 1e9:.2f} G, "
             f"student {summary['macs_512']['student'] / 1e9:.2f} G "
             f"(1/{summary['macs_512']['teacher'] / summary['macs_512']['student']:.1f}). Reproduce: `{command}`.", "",
             "Arms: " + "; ".join(summary["arms"][arm] for arm in arms) + "."
             + ("" if summary["inheritance"] == "yes" else f" (b) and (d) skipped: {summary['inheritance']}."), ""]
    for set_name, data in summary["sets"].items():
        gains = ([f"{arm}_minus_a" for arm in trained] + (["c_minus_a2"] if "a2" in arms else [])
                 + (["d_minus_b", "d_minus_b0"] if "d" in arms else []))
        closures = [f"gap_closure_{arm}" for arm in trained]
        headers = (["seed", "teacher"] + [summary["arms"][arm] for arm in arms]
                   + ["({}) - ({})".format(*key.split("_minus_")) for key in gains]
                   + [f"gap closure ({key.split('_')[-1]})" for key in closures])
        lines += [f"## {set_name} ({len(data['images'])} photos)", "", "| " + " | ".join(headers) + " |",
                  "|" + "---|" * len(headers)]
        keys = ["teacher"] + arms + gains + closures

        def cell(key, value, sd=None):
            if key.startswith("gap_closure"):
                return f"{value:.1%}" + ("" if sd is None else f" ± {sd:.1%}")
            text = f"{value:+.3f}" if "minus" in key else f"{value:.3f}"
            return text + ("" if sd is None else f" ± {sd:.3f}")
        for seed, row in data["per_seed"].items():
            lines.append(f"| {seed} | " + " | ".join(cell(key, row[key]) for key in keys) + " |")
        spreads = {key: None if key == "teacher" else data["sd"][key] for key in keys}
        lines.append("| mean ± sd | " + " | ".join(cell(key, data["mean"][key], spreads[key]) for key in keys) + " |")
        above = data["above_scratch_on_every_seed"]
        lines += ["", "Above scratch on every seed: " + ", ".join(f"({arm}) {value}" for arm, value in above.items())
                  + ".", ""]
    lines += ["## Time to the scratch student's final PSNR (validation crops of held-out set 1)", "",
              "| seed | arm | scratch final val PSNR | scratch train s | teacher cache s | inheritance s "
              "| reaches it after |",
              "|---|---|---|---|---|---|---|"]
    for seed, per_arm in summary["time_to_scratch_final"].items():
        for arm, row in per_arm.items():
            reach = ("never" if row["seconds_to_reach"] is None else
                     f"{row['seconds_to_reach']:.0f} s (epoch {row['epochs_to_reach']} of {row['epochs']})")
            lines.append(f"| {seed} | {summary['arms'][arm]} | {row['scratch_final_val_psnr']:.3f} | "
                         f"{row['scratch_seconds']:.0f} | {row['teacher_cache_seconds']:.0f} | "
                         f"{row['inherit_seconds']:.0f} | {reach} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="student steps (default: the main job's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every arm's main job, as `python -m kd_tf distill --set`")
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS),
                        help="which main jobs to run per seed (default all; ac, which holds (a) and (c), always runs)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default=str(HERE / "distillation_gain"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kd_tf.cli import _parse_set
    from kd_tf.denoise import config as denoise_config

    overrides = _parse_set(args.set)
    steps = args.steps or denoise_config.DistillJobConfig().train.steps
    problem = inheritance_problem(overrides)
    per_seed = {seed: run_seed(seed, steps, args.runs_dir, overrides, problem is None, tuple(args.jobs))
                for seed in args.seeds}
    summary = summarise(per_seed, problem)
    summary["machine"] = machine_info()
    summary["overrides"] = overrides
    command = " ".join(["python -m benchmarks.distillation_gain --seeds", *map(str, args.seeds)]
                       + ([f"--steps {args.steps}"] if args.steps else [])
                       + ([f"--jobs {' '.join(args.jobs)}"] if args.jobs != list(JOBS) else [])
                       + [f"--set {item}" for item in args.set])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gain.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "GAIN.md").write_text(render(summary, command))
    print(render(summary, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
