"""The tables of README.md and the model cards, rendered from the committed report files.

    python -m benchmarks.render_tables            # rewrite every marked table
    python -m benchmarks.render_tables --check    # exit 1 and name the tables that differ from their reports

A table is owned by a pair of markers in the Markdown file,

    <!-- table:NAME -->
    ...
    <!-- /table:NAME -->

and everything between them is replaced by TABLES[NAME] rendered from its report (the file named
on the line after the opening marker). Hand edits there are overwritten; tests/test_tables.py
fails when a committed table differs from its report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER_CHOICE = "models/denoise/teacher_choice_report.json"
RESULTS = "benchmarks/results.json"

# report names -> row labels (README headline table); None: not shown there
TEACHER_ROWS = {
    "ffdnet fine-tuned on 8-bit inputs (kd_tf, 1500 steps)":
        "FFDNet fine-tuned on 8-bit inputs by kd_tf, the default teacher (`ffdnet_8bit.keras`, 1,500 steps)",
    "teacher": "FFDNet, published weights ({params:.2f} M params, {macs_px:.1f} k MACs/px)",
    "ffdnet fine-tuned (kd_tf, 1250 steps)": "FFDNet fine-tuned on unclipped noise by kd_tf (1,250 of 3,000 steps)",
    "kd_tf U-Net teacher": "kd_tf's U-Net teacher (`teacher.keras`, {params:.2f} M params)",
    "cbm3d": "CBM3D (`bm3d` 4.0.3, ~15-20 s per photo)",
    "nlmeans": "OpenCV NL-means",
}
CARD_ROWS = {
    "noisy input": "noisy input",
    "ffdnet fine-tuned on 8-bit inputs (kd_tf, 1500 steps)": "**FFDNet fine-tuned on 8-bit inputs (the teacher)**",
    "teacher": "FFDNet (published weights)",
    "ffdnet fine-tuned (kd_tf, 1250 steps)": "FFDNet fine-tuned on unclipped noise (1,250 steps)",
    "kd_tf U-Net teacher": "kd_tf U-Net teacher (`teacher.keras`)",
    "nlmeans": "NL-means (OpenCV)",
    "cbm3d": "CBM3D (`bm3d` 4.0.3)",
}
TEACHER = "ffdnet fine-tuned on 8-bit inputs (kd_tf, 1500 steps)"      # the shipped teacher's row
SIGMAS = ("15.0", "25.0", "50.0")


def _load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _psnr(methods: dict, name: str, sigma: str) -> float | None:
    score = methods.get(name, {}).get("scores", {}).get(sigma)
    return None if score is None else score["psnr"]


def teacher_choice(report: dict) -> str:
    """README: PSNR of each teacher candidate and baseline on both held-out sets; the best in bold."""
    sets = [report["methods"], report["heldout2"]["methods"]]
    columns = [(i, sigma) for i in range(len(sets)) for sigma in SIGMAS]
    best = {c: max(v for n in TEACHER_ROWS if (v := _psnr(sets[c[0]], n, c[1])) is not None) for c in columns}
    rows = []
    for name, label in TEACHER_ROWS.items():
        entry = report["methods"][name]
        label = label.format(params=(entry.get("params") or 0) / 1e6, macs_px=(entry.get("macs_512") or 0) / 512**2 / 1e3)
        cells = []
        for column in columns:
            value = _psnr(sets[column[0]], name, column[1])
            cells.append("-" if value is None else f"**{value:.2f}**" if value == best[column] else f"{value:.2f}")
        rows.append([label] + cells)
    header = ["method"] + [f"set {i + 1} s{float(s):g}" for i, s in columns]
    return _table(header, rows)


STUDENT = "student (distilled)"
# earlier shipped or starting students the shipped one is compared with: (label, its training report)
STUDENT_PREDECESSORS = [
    ("the fifteenth-cycle student (its start, shipped in session 41, "
     "`models/denoise/checkpoints/student-v22/`)",
     "models/denoise/checkpoints/student-v22/report.json"),
    ("the thirteenth-cycle student (shipped in session 39, "
     "`models/denoise/checkpoints/student-v20-saturation/`)",
     "models/denoise/checkpoints/student-v20-saturation/report.json"),
    ("the twelfth-cycle student (shipped in session 38, "
     "`models/denoise/checkpoints/student-v19-saturation/`)",
     "models/denoise/checkpoints/student-v19-saturation/report.json"),
    ("the student shipped in sessions 30-37 (`models/denoise/checkpoints/student-v11/`)",
     "models/denoise/checkpoints/student-v11/report.json"),
    ("the third-cycle student (shipped in session 29, `models/denoise/checkpoints/student-v9/`)",
     "models/denoise/checkpoints/student-v9/report.json"),
    ("the session-26 student (its first cycle, `models/denoise/checkpoints/student-v7/`)",
     "models/denoise/checkpoints/student-v7/report.json"),
    ("the student shipped in sessions 9-25 (`models/denoise/checkpoints/student-v5/`)",
     "models/denoise/checkpoints/student-v5/report.json"),
]


# report files that renderers read beside their table's own (a copy of the repository needs them too)
EXTRA_REPORTS = tuple(path for _, path in STUDENT_PREDECESSORS)


def shipped_student(report: dict) -> str:
    """README: the shipped student's PSNR on both held-out sets and its distance to the teacher, to
    published FFDNet and CBM3D (models/denoise/teacher_choice_report.json) and to earlier students."""
    def sets(rep):
        return [rep["methods"], rep["heldout2"]["methods"]]

    columns = [(i, sigma) for i in range(2) for sigma in SIGMAS]
    mine = [_psnr(sets(report)[i], STUDENT, sigma) for i, sigma in columns]

    def against(label, methods_by_set, name):
        cells = []
        for (i, sigma), value in zip(columns, mine):
            other = _psnr(methods_by_set[i], name, sigma)
            cells.append("-" if other is None or value is None else f"{value - other:+.2f}")
        return [label] + cells

    choice = sets(_load(TEACHER_CHOICE))
    rows = [["shipped student"] + [f"{v:.2f}" for v in mine],
            against("against its teacher (`ffdnet_8bit.keras`)", sets(report), "teacher"),
            against("against published FFDNet", choice, "teacher"),
            against("against CBM3D", choice, "cbm3d")]
    rows += [against(f"against {label}", sets(_load(path)), STUDENT) for label, path in STUDENT_PREDECESSORS]
    return _table([""] + [f"set {i + 1} s{float(s):g}" for i, s in columns], rows)


def card_set(report: dict, which: int) -> str:
    """MODEL_CARD.md: PSNR/SSIM per sigma on one held-out set (set 1 with params, GMACs and ms)."""
    methods = report["methods"] if which == 1 else report["heldout2"]["methods"]
    header = ["method"] + [f"s{float(s):g} PSNR/SSIM" for s in SIGMAS]
    if which == 1:
        header += ["params", "GMACs@512", "ms@512"]
    rows = []
    for name, label in CARD_ROWS.items():
        cells = [label]
        for sigma in SIGMAS:
            score = methods[name]["scores"].get(sigma)
            psnr = "-" if score is None else f"{score['psnr']:.2f}"
            if score is not None and name == TEACHER:
                psnr = f"**{psnr}**"
            cells.append("-" if score is None else f"{psnr} / {score['ssim']:.4f}")
        if which == 1:
            entry = report["methods"][name]
            cells += [f"{entry['params'] / 1e6:.3f} M" if entry.get("params") else "-",
                      f"{entry['macs_512'] / 1e9:.1f}" if entry.get("macs_512") else "-",
                      f"{entry['ms_per_512']:.1f}" if entry.get("ms_per_512") else "-"]
        rows.append(cells)
    return _table(header, rows)


def speed_targets(results: dict) -> str:
    """README: the speed targets of `python -m benchmarks.run`, with the int8 latency at 512 px."""
    sections = results["sections"]
    step, levers, inference = sections["step_cost"], sections["levers"]["summary"], sections["inference"]
    t = {key: 1000 * row["median_s"] for key, row in step["rows"].items()}
    r, goal = step["ratios"], step["targets"]

    def verdict(ok):
        return "met" if ok else "missed"

    rows = [
        ["(a) kd_tf `Distiller.fit`, output + feature, <= 1.1 x ((b) student alone + (c) teacher forward)",
         f"{t['a']:.1f} ms vs {t['b']:.1f} + {t['c']:.1f}: **{r['a_over_b_plus_c']:.3f}x**",
         verdict(r["a_over_b_plus_c"] <= goal["a_over_b_plus_c_max"])],
        ["(a) >= 1.3x faster than (d) `keras.distillation.Distiller` + `FeatureDistillation`, same losses",
         f"{t['d']:.1f} / {t['a']:.1f} = **{r['d_over_a']:.3f}x**", verdict(r["d_over_a"] >= goal["d_over_a_min"])],
        ["(a) >= 5x faster than (e) a naive loop (`predict` x2 + an eager tape)",
         f"{t['e']:.1f} / {t['a']:.1f} = **{r['e_over_a']:.2f}x**", verdict(r["e_over_a"] >= goal["e_over_a_min"])],
    ]
    for lever, label in (("mixed_bfloat16", "`mixed_bfloat16`"), ("xla", "XLA")):
        entry = levers[lever]
        cost = "" if entry["psnr_cost_db"] is None else f" at {entry['psnr_cost_db']:+.3f} dB"
        rows.append([f"{label} on where it gives >= 1.3x at <= 0.05 dB",
                     f"{entry['speed']:.2f}x{cost}: {'on' if entry['default_on'] else 'off'}",
                     verdict(entry["qualifies"] == entry["default_on"])])
    int8 = inference["rows"]["student (int8)"]["ms_2_threads"]
    cbm3d = inference["rows"]["cbm3d"]["ms_all_threads"]
    size = inference["size"]
    rows.append(["int8 student >= 100x faster than CBM3D per photo",
                 f"**{inference['cbm3d_over_int8']:.0f}x** ({int8:.1f} ms vs {cbm3d / 1000:.1f} s per {size}x{size})",
                 verdict(inference["cbm3d_over_int8"] >= inference["targets"]["cbm3d_over_int8_min"])])
    return _table(["target", "measured", ""], rows)


def distillation_gain(gain: dict) -> str:
    """README and the denoising card: what inheritance and distillation add over the same student
    from scratch, mean ± sd over seeds (benchmarks/distillation_gain.py)."""
    arms = [arm for arm in ("a", "b0", "b", "c", "d") if arm in next(iter(gain["sets"].values()))["mean"]]
    rows = []
    for index, key in enumerate(("heldout1", "heldout2")):
        if key not in gain["sets"]:
            continue
        data = gain["sets"][key]
        mean, sd = data["mean"], data["sd"]
        spread = lambda name, fmt: "" if sd[name] is None else f" ± {format(sd[name], fmt)}"
        row = [f"set {index + 1}", f"{mean['teacher']:.2f}"]
        row += [f"{mean[arm]:.2f}{spread(arm, '.2f')}" for arm in arms]
        row += [f"{mean[f'{arm}_minus_a']:+.2f}{spread(f'{arm}_minus_a', '.2f')}" for arm in arms if arm != "a"]
        if "d" in arms:
            row += [f"{mean[key]:+.2f}{spread(key, '.2f')}" for key in ("d_minus_b", "d_minus_b0")]
        for arm in [arm for arm in arms if arm != "a"]:
            closure, closure_sd = mean[f"gap_closure_{arm}"], sd[f"gap_closure_{arm}"]
            row.append(f"{100 * closure:.0f}%" + ("" if closure_sd is None else f" ± {100 * closure_sd:.0f}%"))
        above = data["above_scratch_on_every_seed"]
        row.append(", ".join(f"({arm}) {'yes' if value else 'no'}" for arm, value in above.items()))
        rows.append(row)
    headers = (["held-out set", "teacher"] + [gain["arms"][arm] for arm in arms]
               + [f"({arm}) - (a)" for arm in arms if arm != "a"] + (["(d) - (b)", "(d) - (b0)"] if "d" in arms else [])
               + [f"gap closure ({arm})" for arm in arms if arm != "a"] + ["above (a) on every seed"])
    return _table(headers, rows)


SR_REPORT = "models/sr/sr_report.json"


def sr_results(report: dict) -> str:
    """README and models/sr/MODEL_CARD.md: every upscaler against bicubic on both held-out sets."""
    sets = [key for key in ("heldout1", "heldout2") if key in report]
    names = list(report[sets[0]]["methods"])
    rows = []
    for name in names:
        model = report.get("models", {}).get(name)
        size = (f"{model['params'] / 1e3:.0f} k", f"{model['macs_512'] / (512 // report['factor']) ** 2 / 1e3:.0f} k") \
            if model else ("-", "-")
        row = [name, *size]
        for key in sets:
            methods = report[key]["methods"]
            row += [f"{methods[name]['psnr']:.2f} / {methods[name]['ssim']:.4f}",
                    f"{methods[name]['psnr'] - methods['bicubic']['psnr']:+.2f}"]
        rows.append(row)
    header = ["method", "params", "MACs per input px"]
    for index, key in enumerate(sets):
        header += [f"set {index + 1} ({len(report[key]['methods']['bicubic']['images'])} photos) PSNR / SSIM",
                   "vs bicubic"]
    return _table(header, rows)


def int8_parity_table(report: dict, key: str = "int8_parity") -> str:
    """The model cards: a shipped int8 file against its float model, set by set, from the report's
    `key` (kd_tf.int8_parity.parity_report: an upscaler's int8_parity or dynamic_int8_parity, the
    parity of python -m benchmarks.int8_parity)."""
    rows = [[name + (f" (average of {r['noise_draws']} noise draws)" if r.get("noise_draws") else ""),
             str(r["images"]), f"{r['mean_drop_db']:.3f} dB", f"{r['mean_abs_drop_db']:.3f} dB",
             f"{r['max_drop_db']:.3f} dB ({r['worst_image']})", f"{r['max_abs_drop_db']:.3f} dB ({r['farthest_image']})",
             f"{r['max_abs_channel_shift_255']:.2f}"] for name, r in report[key]["sets"].items()]
    return _table(["set", "images", "mean drop", "mean \\|drop\\|", "worst drop (image)", "largest \\|drop\\| (image)",
                   "max mean channel shift /255"], rows)


def sr_int8_sensitivity(report: dict, limit: int = 6) -> str:
    """models/sr/MODEL_CARD.md: which tensor of the int8 upscaler costs what (kd_tf.int8_sensitivity)."""
    rows = []
    for row in report["int8_sensitivity"]["rows"][:2 + limit]:
        label = {"all tensors": "all tensors (the int8 model)",
                 "weights only": "weights only (every activation at 16 bits)"}.get(row["tensor"], row["tensor"])
        rows.append([label, f"[{row['range'][0]:.3g}, {row['range'][1]:.3g}]" if "range" in row else "",
                     f"{row['clipped_share']:.1e}" if "clipped_share" in row else "", f"{row['fidelity_db']:.2f}"])
    return _table(["tensor at 8 bits", "range", "clipped", "PSNR int8 vs float (dB)"], rows)


GAN_ROWS = {"teacher": "teacher", "real training digits (floor)": "real training digits (the floor)",
            "student (distilled)": "**student, distilled**",
            "student (scratch)": "student, plain GAN from scratch (same steps, seed, initial weights, discriminator)",
            "student (scratch, fresh discriminator)": "student, plain GAN from scratch, fresh discriminator",
            "student int8 TFLite": "student int8 TFLite"}


def gan_results(report: dict) -> str:
    """README and models/gan/MODEL_CARD.md: every generator of the distillation report, same 10,000 latents;
    for class-conditional generators also the share drawn as the class asked for (confidence >= 0.9)."""
    teacher_macs = report["generators"]["teacher"]["macs"]
    conditional = any("class_accuracy" in row for row in report["generators"].values())
    rows = []
    for name, row in report["generators"].items():
        macs = row.get("macs")
        rows.append([GAN_ROWS.get(name, name), f"{row['params']:,}" if row.get("params") else "-",
                     f"{macs / 1e6:.2f} M" if macs else "-", f"1/{teacher_macs / macs:.1f}" if macs else "-",
                     f"{row['ms_per_64']:.1f}" if row.get("ms_per_64") else "-", f"{row['fid']:.2f}", f"{row['kid']:.2f}",
                     f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['coverage']:.3f}",
                     f"{100 * row['recognized']:.1f} %" if row.get("recognized") is not None else "-"])
        if conditional:
            asked = row.get("class_accuracy")
            rows[-1].append(f"{100 * asked['confident_accuracy']:.1f} %" if asked else "-")
    return _table(["generator", "params", "MACs / image", "MACs vs teacher", "ms / 64 images", "FID", "KID (unscaled)",
                   "precision", "recall", "coverage", "recognized (p >= 0.9)"]
                  + (["the class asked for (p >= 0.9)"] if conditional else []), rows)


def diffusion_results(report: dict) -> str:
    """README and models/diffusion/MODEL_CARD.md: the teacher's sampler and the scored progressive
    stages, all on the same latents (eval.samples of them); FID and speed also as ratios to the teacher's sampler;
    for class-conditional samplers also the share drawn as the class asked for (confidence >= 0.9). A row from
    the run's score cache keeps the time measured when it was first scored: "(cached)" says so."""
    conditional = any("class_accuracy" in row for row in report["samplers"].values())
    rows = []
    for name, row in report["samplers"].items():
        ratio, speedup = report["fid_over_teacher"][name], report["speedup_over_teacher"].get(name)
        ms = row.get("ms_per_64")
        rows.append([name, str(row["steps"]), f"{row['params']:,}", f"{row['macs'] / 1e6:.0f} M",
                     (f"{ms:.0f}" + (" (cached)" if "cached" in row else "")) if ms else "-",
                     f"{speedup:.1f}x" if ms and speedup else "-",
                     f"{row['fid']:.2f}", f"{ratio:.2f}x", f"{row['kid']:.3f}", f"{row['precision']:.3f}",
                     f"{row['recall']:.3f}", f"{100 * row['recognized']:.1f} %" if row.get("recognized") is not None else "-"])
        if conditional:
            asked = row.get("class_accuracy")
            rows[-1].append(f"{100 * asked['confident_accuracy']:.1f} %" if asked else "-")
    return _table(["sampler", "DDIM steps", "params", "MACs / image", "ms / 64 images", "faster than teacher",
                   "FID", "FID / teacher's", "KID (unscaled)", "precision", "recall", "recognized (p >= 0.9)"]
                  + (["the class asked for (p >= 0.9)"] if conditional else []), rows)


def diffusion_speed(results: dict) -> str:
    """models/diffusion/MODEL_CARD.md: each pair's teacher sampler and shipped few-step generators,
    timed back to back by python -m benchmarks.diffusion_speed (ms per 64 images)."""
    rows = [[pair, name, row["file"], f"{row['ms_per_64']:.0f}", f"{row['speedup']:.1f}x"]
            for pair, samplers in results["pairs"].items() for name, row in samplers.items()]
    return _table(["pair", "sampler", "file", "ms / 64 images", "faster than teacher"], rows)


def tflite_speed(results: dict) -> str:
    """README and the denoising card: each shipped int8 TFLite against its float32 twin, same threads."""
    rows = []
    for name, row in results["models"].items():
        for timing in row["timings"]:
            rows.append([name, "x".join(map(str, timing["input_shape"])), str(timing["threads"]),
                         f"{timing['float32_ms']:.1f}", f"{timing['int8_ms']:.1f}", f"{timing['speedup_int8']:.2f}x",
                         f"{row['bytes']['float32'] / 1e6:.2f} MB / {row['bytes']['int8'] / 1e6:.2f} MB "
                         f"({row['size_ratio_float32_over_int8']:.2f}x)"])
    return _table(["model", "input", "LiteRT threads", "float32 ms", "int8 ms", "int8 speed-up",
                   "size float32 / int8"], rows)


def int8_width_speed(results: dict) -> str:
    """README: int8 against float32 TFLite by channel count (benchmarks/int8_width_speed.py)."""
    rows = []
    for kind in ("conv", "unet"):
        for name, row in results[kind].items():
            for t in row["timings"]:
                rows.append([name, f"{row['macs_per_pixel']:,.0f}", str(t["threads"]), f"{t['float32_ms']:.1f}",
                             f"{t['int8_ms']:.1f}", f"{t['speedup_int8']:.2f}x"])
    return _table(["network (1x256x256x3, random weights)", "MACs per pixel", "LiteRT threads", "float32 ms",
                   "int8 ms", "int8 speed-up"], rows)


# name -> (report file, renderer); the files hold `<!-- table:NAME -->` ... `<!-- /table:NAME -->`
TABLES = {
    "teacher-choice": (TEACHER_CHOICE, teacher_choice),
    "shipped-student": ("models/denoise/student_report.json", shipped_student),
    "teacher-card-set1": (TEACHER_CHOICE, lambda report: card_set(report, 1)),
    "teacher-card-set2": (TEACHER_CHOICE, lambda report: card_set(report, 2)),
    "speed-targets": (RESULTS, speed_targets),
    "distillation-gain": ("benchmarks/distillation_gain/gain.json", distillation_gain),
    "sr-results": (SR_REPORT, sr_results),
    "tflite-speed": ("benchmarks/tflite_speed.json", tflite_speed),
    "tflite-speed-intel-amx": ("benchmarks/tflite_speed_intel_amx.json", tflite_speed),
    "tflite-speed-intel-vnni": ("benchmarks/tflite_speed_intel_vnni.json", tflite_speed),
    "dynamic-float-layers-speed": ("benchmarks/dynamic_float_layers_speed.json", tflite_speed),
    "dynamic-batch-speed": ("benchmarks/dynamic_batch_speed.json", tflite_speed),
    "int8-width-speed": ("benchmarks/int8_width_speed.json", int8_width_speed),
    "gan-results": ("models/gan/distill_report.json", gan_results),
    "gan-conditional-results": ("models/gan/conditional/evaluate_report.json", gan_results),
    "gan-conditional-wide-results": ("models/gan/conditional/wide/distill_report.json", gan_results),
    "diffusion-results": ("models/diffusion/distill_report.json", diffusion_results),
    "diffusion-conditional-results": ("models/diffusion/conditional/distill_report.json", diffusion_results),
    "diffusion-speed": ("benchmarks/diffusion_speed.json", diffusion_speed),
    "sr-int8-parity": ("models/sr/student_x2_report.json", int8_parity_table),
    "sr-int8-sensitivity": ("models/sr/student_x2_export_report.json", sr_int8_sensitivity),
    "sr-dynamic-int8-parity": ("models/sr/student_x2_dynamic_export_report.json",
                               lambda report: int8_parity_table(report, "dynamic_int8_parity")),
    "denoise-dynamic-int8-parity": ("models/denoise/student_int8_dynamic_parity.json",
                                    lambda report: int8_parity_table(report, "parity")),
    "denoise-mixed-int8-parity": ("models/denoise/student_int8_mixed_parity.json",
                                  lambda report: int8_parity_table(report, "parity")),
}
FILES = ("README.md", "models/denoise/MODEL_CARD.md", "models/sr/MODEL_CARD.md", "models/gan/MODEL_CARD.md",
         "models/diffusion/MODEL_CARD.md")
_SECTION = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n<!-- /table:(?P=name) -->)", re.S)


def rendered(name: str) -> str:
    report, render = TABLES[name]
    return f"<!-- from {report}: python -m benchmarks.render_tables -->\n{render(_load(report))}"


def render_text(text: str) -> tuple[str, list[str]]:
    """(text with every marked table rendered, names of the tables that changed)."""
    changed = []

    def replace(match):
        body = rendered(match["name"])
        if body != match["body"]:
            changed.append(match["name"])
        return match.group(1) + body + match.group(4)

    return _SECTION.sub(replace, text), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report tables that differ from their reports")
    args = parser.parse_args(argv)
    stale = []
    for file in FILES:
        path = ROOT / file
        text, changed = render_text(path.read_text())
        stale += [f"{file}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(text)            # re-read just now: only the marked sections change
    for entry in stale:
        print(("differs from its report: " if args.check else "rendered: ") + entry)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
