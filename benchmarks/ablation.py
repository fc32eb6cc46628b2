"""Issue 9's ablation: which ways of passing and balancing knowledge help the denoising student.

    python -m benchmarks.ablation                      # every variant x seeds 0 1 2 at 1,000 steps
    python -m benchmarks.ablation --quick              # tiny budget: checks the code; figures mean nothing
    python -m benchmarks.ablation --only output finetune --seeds 0

Every run is a whole `python -m kd_tf distill` job (kd_tf.denoise.jobs.distill, or distill_chain for the
`assistant` variant; `assistant-short` is the main job's own assistant stage, config.assistant)
on the main job's data, student, teacher and settings, changed only by the variant's
overrides below, and scored on the held-out photos at sigma 25. Runs go seed by seed, so that a
partial ablation already compares every variant. A run whose report exists in runs/ is read back,
not rerun: a killed ablation continues where it stopped. Results: benchmarks/ABLATION.md and
benchmarks/ablation.json (quick runs: benchmarks/quick/).

Budget: the same `train.steps` for every student. Output-only variants distill offline from a
bank of steps / 3 teacher batches, each reused 3 times as in the main job (1,000 of 3,000);
feature, attention and Jacobian terms need the live teacher, which sees a fresh batch every step,
so `output-live` (the default losses with the live teacher) is their like-for-like reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import STUDENT_NET, machine_info
from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config

HERE = Path(__file__).resolve().parent
SIGMA = 25.0
LAYER_PAIRS = [["dec0", "dec0"], ["dec1", "dec1"], ["bottleneck", "bottleneck"]]
FEATURE_WEIGHT = 0.05          # each pair; from the measured magnitudes (configs/ablation/README.md)
ATTENTION_WEIGHT = 0.02
JACOBIAN_WEIGHT = 1e-4         # the normalised Jacobian distance is ~1.4 where the output MSE is ~1e-3
ASSISTANT = {"widths": [20, 40, 80, 160], "blocks": 2}   # between teacher (32-256, 2) and student (12-96, 1)
FINETUNE_FRACTION = 0.2        # of the budget: the last 20% of the student's steps on its own objective


def variants(steps: int) -> dict:
    """name -> (what it tests, overrides on the main job's config). `scratch` comes from the
    `output` run's from-scratch comparison (same seed, initial weights and patch stream)."""
    live = {"distill.cache_batches": 0}
    return {
        "output": ("output MSE only, student_loss_weight 0.5 (the main job's losses), offline teacher",
                   {"distill.compare_scratch": True}),
        "output-live": ("output MSE only, student_loss_weight 0.5, live teacher (reference for the next three)", live),
        "features": ("+ features of dec0, dec1, bottleneck through 1x1 adapters (0.05 each), live",
                     {**live, "distill.features": [p + [FEATURE_WEIGHT] for p in LAYER_PAIRS]}),
        "attention": ("+ attention transfer on dec0, dec1, bottleneck (0.02 each), live",
                      {**live, "distill.attention": [p + [ATTENTION_WEIGHT] for p in LAYER_PAIRS]}),
        "jacobian": (f"+ Jacobian matching ({JACOBIAN_WEIGHT:g}), live", {**live, "distill.jacobian": JACOBIAN_WEIGHT}),
        "alpha-linear": ("teacher weight scheduled linearly 1 -> 0 (student_loss_weight 0 -> 1)",
                         {"distill.student_loss_weight.kind": "linear", "distill.student_loss_weight.start": 0.0,
                          "distill.student_loss_weight.end": 1.0}),
        "alpha-adaptive": ("weights adaptive (loss-ratio rule, kd_tf.schedules.LossRatio)",
                           {"distill.student_loss_weight.kind": "adaptive"}),
        "assistant": (f"via an assistant (widths {ASSISTANT['widths']}, {ASSISTANT['blocks']} blocks), "
                      f"itself distilled with the same steps", {}),
        "assistant-short": ("via the main job's built-in assistant (config.assistant: the same network, "
                            "distilled for a sixth of the steps)", {"assistant.use": "always"}),
        "assistant-third": ("via the built-in assistant distilled for a third of the steps",
                            {"assistant.use": "always", "assistant.steps": max(1, steps // 3)}),
        "finetune": (f"+ fine-tuning: the last {FINETUNE_FRACTION:.0%} of the steps on the own objective alone",
                     {"finetune.steps": max(1, int(round(steps * FINETUNE_FRACTION)))}),
    }


def base_overrides(steps: int, seed: int, quick: bool) -> dict:
    overrides = {"train.steps": steps, "train.steps_per_epoch": max(1, steps // 4), "train.seed": seed,
                 "distill.compare_scratch": False, "distill.cache_batches": max(1, steps // 3),
                 "eval.sigmas": [SIGMA], "eval.baselines": [], "export_formats": [],
                 "assistant.use": "never",           # direct distillation unless the variant says otherwise
                 # the U-Net student the ablation measured (its feature pairs name U-Net levels)
                 "student.family": "unet", "student.widths": STUDENT_NET.widths, "student.blocks": STUDENT_NET.blocks}
    if quick:
        overrides.update({"data.patch_size": 32, "data.batch_size": 4, "data.val_crop": 32,
                          "data.val_crops_per_image": 1, "eval.max_images": 1, "eval.timing_size": 64})
    return overrides


def _config(overrides: dict) -> denoise_config.DistillJobConfig:
    return cfg.load(denoise_config.DistillJobConfig, None, overrides)


def _finished(run_name: str, runs_dir: str) -> dict | None:
    path = Path(runs_dir) / run_name / "report.json"
    if path.is_file():
        report = json.loads(path.read_text())
        if "methods" in report:
            return report
    return None


def run_variant(name: str, overrides: dict, steps: int, seed: int, quick: bool, prefix: str) -> dict:
    """The job's report for one variant and seed (read back when it already ran)."""
    from kd_tf.denoise import jobs

    run = f"{prefix}-{name}-s{seed}"
    settings = {**base_overrides(steps, seed, quick), **overrides, "output.run_name": run}
    if name != "assistant":
        return _finished(run, "runs") or jobs.distill(_config(settings))
    assistant = {**settings, "student.widths": ASSISTANT["widths"], "student.blocks": ASSISTANT["blocks"],
                 "output.run_name": f"{run}-assistant"}
    if _finished(run, "runs") is None:
        jobs.distill_chain([_config(assistant), _config(settings)])
    report = _finished(run, "runs")
    # the student's budget is the same as every other row's; the assistant's stage is extra time
    report["timings"]["assistant_seconds"] = _finished(f"{run}-assistant", "runs")["timings"]["distill_seconds"]
    return report


def scores(report: dict, method: str) -> dict:
    entry = report["methods"][method]
    at_sigma = next(v for k, v in entry["scores"].items() if float(k) == SIGMA)
    return {"psnr": at_sigma["psnr"], "ssim": at_sigma["ssim"], "macs_512": entry["macs_512"]}


def summarise(results: dict) -> dict:
    """Per variant: mean and spread over seeds, and paired differences against output-only and scratch."""
    summary = {}
    for name, by_seed in results.items():
        seeds = sorted(by_seed)
        psnr = np.array([by_seed[s]["psnr"] for s in seeds])
        row = {"seeds": [int(s) for s in seeds], "psnr_mean": float(psnr.mean()),
               "psnr_std": float(psnr.std(ddof=1)) if len(seeds) > 1 else 0.0,
               "psnr_min": float(psnr.min()), "psnr_max": float(psnr.max()),
               "ssim_mean": float(np.mean([by_seed[s]["ssim"] for s in seeds])),
               "seconds_mean": float(np.mean([by_seed[s]["seconds"] for s in seeds]))}
        for reference in ("output", "scratch", "output-live"):
            paired = [by_seed[s]["psnr"] - results[reference][s]["psnr"]
                      for s in seeds if reference in results and s in results[reference]]
            if paired and name != reference:
                row[f"minus_{reference}_mean"] = float(np.mean(paired))
                row[f"minus_{reference}_std"] = float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0
                row[f"minus_{reference}_seeds"] = len(paired)
        paired_ssim = [by_seed[s]["ssim"] - results["output"][s]["ssim"]
                       for s in seeds if "output" in results and s in results["output"]]
        if paired_ssim and name != "output":
            row["ssim_minus_output_mean"] = float(np.mean(paired_ssim))
            row["ssim_minus_output_std"] = float(np.std(paired_ssim, ddof=1)) if len(paired_ssim) > 1 else 0.0
        summary[name] = row
    return summary


def beats_output(row: dict) -> bool:
    """A paired gain over output-only larger than its standard error (sd / sqrt(seeds)): with 3
    seeds and a spread of 0.2-0.4 dB, a smaller mean gain is noise, not a reason to change the default."""
    seeds = row.get("minus_output_seeds", 0)
    return seeds >= 2 and row["minus_output_mean"] > row["minus_output_std"] / np.sqrt(seeds)


def winner_line(summary: dict, seeds: list) -> str:
    """The default to ship: the best mean among output-only and the variants that beat it on the
    paired seeds (beats_output), each measured on every seed."""
    complete = [n for n in summary if n != "scratch" and summary[n]["seeds"] == seeds]
    qualified = sorted((n for n in complete if n == "output" or beats_output(summary[n])),
                       key=lambda n: -summary[n]["psnr_mean"])
    if not qualified:
        return "No winner yet: output-only is not measured on every seed."
    name, best = qualified[0], summary[qualified[0]]
    over_scratch = (f"{best.get('minus_scratch_mean', float('nan')):+.3f} ± "
                    f"{best.get('minus_scratch_std', float('nan')):.3f} dB over the from-scratch student "
                    f"(paired over {best.get('minus_scratch_seeds', 0)} seeds)")
    if name != "output":
        return (f"**Winner: `{name}`**, {best['psnr_mean']:.3f} dB: {best['minus_output_mean']:+.3f} ± "
                f"{best['minus_output_std']:.3f} dB over output-only and {over_scratch}.")
    ties = sorted((n for n in complete if n != "output" and "minus_output_mean" in summary[n]),
                  key=lambda n: -summary[n]["minus_output_mean"])
    text = f"**Winner: `output`** (output-only), {best['psnr_mean']:.3f} dB, {over_scratch}."
    if ties and summary[ties[0]]["minus_output_mean"] > 0:
        top = summary[ties[0]]
        text += (f" `{ties[0]}` has a higher mean ({top['minus_output_mean']:+.3f} ± {top['minus_output_std']:.3f} dB "
                 f"paired), but its gain is within one standard error: no variant beats output-only at this budget.")
    return text


def default_out(steps: int, quick: bool) -> Path:
    """benchmarks/ for the 1,000-step ablation, benchmarks/ablation<steps>/ for other budgets (so
    that one never overwrites the other), benchmarks/quick/ for --quick."""
    return HERE / "quick" if quick else HERE if steps == 1000 else HERE / f"ablation{steps}"


def reproduce(payload: dict) -> str:
    """The command that reruns every variant this payload holds."""
    ran = [n for n in payload["variants"] if n in payload["results"] and n != "scratch"]
    command = f"python -m benchmarks.ablation --steps {payload['steps']}"
    if set(ran) != set(variants(payload["steps"])):
        command += " --only " + " ".join(ran)
    if payload["seeds"] != [0, 1, 2]:
        command += " --seeds " + " ".join(str(s) for s in payload["seeds"])
    return command + (" --quick" if payload["quick"] else "")


def render(payload: dict) -> str:
    summary, described = payload["summary"], payload["variants"]
    steps = payload["steps"]
    lines = [f"# Distillation ablation (issue 9): denoising at sigma {SIGMA:g}",
             "",
             f"Written by `python -m benchmarks.ablation{' --quick' if payload['quick'] else ''}` on "
             f"{payload['machine']['date_utc']} ({payload['machine']['cpu_model']}, "
             f"{payload['machine']['cores_usable']} cores). Each row: the main job (`python -m kd_tf distill`: "
             f"student 12-24-48-96 with 1 block, inheriting the teacher's strongest channels; shipped "
             f"teacher; batch 16 of 64x64) at **{steps} steps**, changed only as the row says; PSNR/SSIM "
             f"on the 5 held-out photos (full size) at sigma {SIGMA:g}. Mean ± sample standard deviation "
             f"over seeds {payload['seeds']} (`train.seed`: the student's initial weights, the patch stream, "
             f"the cache order); differences are paired by seed. Wall time {payload['wall_s'] / 60:.1f} min.",
             "",
             "| variant | what | PSNR (mean ± sd) | min-max | SSIM | - output only (dB) | SSIM - output only "
             "| - output, live teacher (dB) | - from scratch (dB) | s per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = ["scratch"] + [n for n in described if n != "scratch"]
    for name in order:
        row = summary.get(name)
        if row is None:
            continue

        def diff(reference):
            key = f"minus_{reference}_mean"
            return "-" if key not in row else f"{row[key]:+.3f} ± {row[f'minus_{reference}_std']:.3f}"

        ssim_diff = ("-" if "ssim_minus_output_mean" not in row else
                     f"{row['ssim_minus_output_mean']:+.4f} ± {row['ssim_minus_output_std']:.4f}")

        lines.append(f"| `{name}` | {described.get(name, '')} | {row['psnr_mean']:.3f} ± {row['psnr_std']:.3f} | "
                     f"{row['psnr_min']:.2f}-{row['psnr_max']:.2f} | {row['ssim_mean']:.4f} | {diff('output')} | "
                     f"{ssim_diff} | {diff('output-live')} | {diff('scratch')} | {row['seconds_mean']:.0f} |")
    lines += ["", winner_line(summary, payload["seeds"])]
    lines += ["", "Per seed (PSNR / SSIM):", "",
              "| variant | " + " | ".join(f"seed {s}" for s in payload["seeds"]) + " |",
              "|---|" + "---|" * len(payload["seeds"])]
    for name in order:
        if name in payload["results"]:
            by_seed = payload["results"][name]
            cells = [f"{by_seed[str(s)]['psnr']:.3f} / {by_seed[str(s)]['ssim']:.4f}" if str(s) in by_seed else "-"
                     for s in payload["seeds"]]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    if payload.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in payload["notes"]]
    lines += ["", f"Run folders: `runs/{payload.get('prefix', 'ablation' + str(steps))}-<variant>-s<seed>` (each job's report.json; the "
                  f"assistant's own stage in `...-assistant-s<seed>-assistant`), TensorBoard logs under the "
                  f"same names in `tensorboard_logs/`. Reproduce: `{reproduce(payload)}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="student steps per run (default 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (default 0 1 2)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    parser.add_argument("--quick", action="store_true", help="a tiny budget and crops: checks the code")
    parser.add_argument("--out", help="folder for ABLATION.md and ablation.json (default: benchmarks/ at 1,000 "
                                      "steps, benchmarks/ablation<steps>/ otherwise)")
    parser.add_argument("--render", action="store_true", help="only rewrite ABLATION.md from ablation.json")
    parser.add_argument("--note", action="append", default=[], help="a line for the notes under the tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KD_TF_QUIET", "1")
    steps = 8 if args.quick and args.steps == 1000 else args.steps
    table = variants(steps)
    unknown = sorted(set(args.only or []) - set(table))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; accepted: {sorted(table)}")
    names = [n for n in table if n in (args.only or table)]
    out = Path(args.out) if args.out else default_out(steps, args.quick)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "ablation-quick" if args.quick else f"ablation{steps}"
    if args.render:
        payload = json.loads((out / "ablation.json").read_text())
        payload["summary"] = summarise(payload["results"])
        payload["notes"] = payload.get("notes", []) + args.note
        (out / "ablation.json").write_text(json.dumps(payload, indent=2))
        (out / "ABLATION.md").write_text(render(payload))
        print(render(payload))
        return 0
    started = time.perf_counter()
    previous = out / "ablation.json"
    results, notes = {}, []
    if previous.is_file():
        kept = json.loads(previous.read_text())
        if kept.get("steps") == steps and kept.get("quick") == args.quick:
            results, notes = kept.get("results", {}), kept.get("notes", [])    # a later run adds seeds or variants
    payload = {"machine": machine_info(), "steps": steps, "quick": args.quick, "prefix": prefix,
               "seeds": sorted({*args.seeds, *(int(s) for r in results.values() for s in r)}),
               "variants": {"scratch": "the same student trained alone (its own loss only), from random weights",
                            **{n: what for n, (what, _) in table.items()}},
               "notes": notes + args.note}
    for seed in args.seeds:
        for name in names:
            what, overrides = table[name]
            logging.info("ablation: %s, seed %d (%s)", name, seed, what)
            report = run_variant(name, overrides, steps, seed, args.quick, prefix)
            timings = report.get("timings", {})
            results.setdefault(name, {})[str(seed)] = {
                **scores(report, "student (distilled)"), "run": report["run"],
                "seconds": sum(timings.get(k, 0.0) for k in ("distill_seconds", "finetune_seconds",
                                                              "assistant_seconds"))}
            if "student (scratch)" in report["methods"]:
                results.setdefault("scratch", {})[str(seed)] = {
                    **scores(report, "student (scratch)"), "run": report["run"],
                    "seconds": timings.get("scratch_seconds", 0.0)}
            payload.update(results=results, summary=summarise(results), wall_s=time.perf_counter() - started)
            temporary = out / "ablation.json.partial"
            temporary.write_text(json.dumps(payload, indent=2))
            os.replace(temporary, out / "ablation.json")
            (out / "ABLATION.md").write_text(render(payload))
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
