"""How much of a student's gap to the teacher is the bias of clipped noise near black and white,
measured on images that no held-out check uses.

    python -m benchmarks.clipped_noise_bias models/denoise/checkpoints/student-v16-multiscale/student.keras \
        --out benchmarks/clipped_noise_bias.json                          # ~3 min on 2 cores

8-bit noise is clipped at 0 and 1, so where a channel of the clean image sits at 0 (a saturated
green has no red) the noisy values average sigma / sqrt(2 pi) above it, and a denoiser must
learn to pull them back. Per set (the student-selection photos of the training corpus, centre
crops as `benchmarks.student_selection` takes them, and synthetic gamut images drawn as
`benchmarks.int8_selection` draws them; sigma 25, 8-bit in and out, noise seed 2024 + index) and
per model (the teacher, then each student): mean PSNR; the mean error x 255 per channel on the
pixels where that channel of the clean image is below 0.02 ("near black") or above 0.98 ("near
white"); and the PSNR each model would reach with that mean error taken out of those pixels of
each image (per channel), which says how much of the student's gap the bias is.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_results

HERE = Path(__file__).resolve().parent
TEACHER = "models/denoise/ffdnet_8bit.keras"
SIGMA, SEED, NEAR = 25.0, 2024, 0.02


def bias_scores(clean: np.ndarray, output: np.ndarray) -> dict:
    """PSNR of `output` against `clean`, its mean error x 255 per channel on the near-black and
    near-white pixels of that channel, and the PSNR with those means subtracted there."""
    error = output - clean
    corrected = output.copy()
    near = {}
    for side, mask_of in (("near_black", lambda c: c < NEAR), ("near_white", lambda c: c > 1 - NEAR)):
        means = []
        for channel in range(3):
            mask = mask_of(clean[..., channel])
            mean = float(error[..., channel][mask].mean()) if mask.any() else 0.0
            corrected[..., channel][mask] -= mean
            means.append(mean * 255 if mask.any() else None)
        near[side] = {"error_255": means, "pixel_share": float(np.mean(mask_of(clean)))}
    psnr = lambda out: float(10 * np.log10(1.0 / np.mean((out - clean) ** 2)))   # noqa: E731
    return {"psnr": psnr(output), "psnr_bias_removed": psnr(corrected), **near}


def score_set(models: dict, images: dict[str, np.ndarray]) -> dict:
    """{model: summary} over `images`: mean PSNR, mean PSNR with the near-0/1 bias removed, and the
    pixel-weighted mean error per channel on the near-black / near-white pixels of every image."""
    from kd_tf.images import noisy_copy, to_8bit
    from kd_tf.model_io import takes_noise_level

    rows = {name: [] for name in models}
    for index, key in enumerate(sorted(images)):
        clean = np.asarray(images[key], np.float32)
        clean = clean[:clean.shape[0] // 16 * 16, :clean.shape[1] // 16 * 16]
        noisy = to_8bit(noisy_copy(clean, SIGMA, SEED + index))[None]
        for name, model in models.items():
            inputs = [noisy, np.full((1, 1), SIGMA / 255, np.float32)] if takes_noise_level(model) else noisy
            rows[name].append(bias_scores(clean, to_8bit(np.asarray(model(inputs, training=False))[0])))
    summary = {}
    for name, scores in rows.items():
        entry = {"psnr": float(np.mean([s["psnr"] for s in scores])),
                 "psnr_bias_removed": float(np.mean([s["psnr_bias_removed"] for s in scores]))}
        for side in ("near_black", "near_white"):
            weights = np.array([s[side]["pixel_share"] for s in scores])
            per_channel = []
            for channel in range(3):
                values = [(s[side]["error_255"][channel], w) for s, w in zip(scores, weights)
                          if s[side]["error_255"][channel] is not None]
                total = sum(w for _, w in values)
                per_channel.append(sum(v * w for v, w in values) / total if total else None)
            entry[side] = {"mean_error_255": per_channel, "pixel_share": float(weights.mean())}
        summary[name] = entry
    return summary


def render(results: dict) -> str:
    from benchmarks.render_tables import _table

    rows = []
    for set_name, models in results["sets"].items():
        teacher = models["teacher"]
        for name, row in models.items():
            gap = "" if name == "teacher" else f"{teacher['psnr'] - row['psnr']:.2f}"
            gap_fixed = "" if name == "teacher" else f"{teacher['psnr_bias_removed'] - row['psnr_bias_removed']:.2f}"
            black = ", ".join("-" if v is None else f"{v:+.1f}" for v in row["near_black"]["mean_error_255"])
            rows.append([set_name, name, f"{row['psnr']:.2f}", gap, gap_fixed, black])
    return _table(["set (sigma 25)", "model", "PSNR dB", "gap to teacher", "gap, near-0/1 bias removed",
                   "mean error x255 near black (R, G, B)"], rows)


def main(argv=None) -> int:
    from benchmarks.int8_selection import SEED as GAMUT_SEED
    from benchmarks.student_selection import selection_photos
    from kd_tf.int8_parity import gamut_images
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", nargs="+", help="students' .keras files")
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--every", type=int, default=6, help="every N-th training photo, as student_selection")
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--gamut", type=int, default=40, help="synthetic gamut images (128 px), as int8_selection")
    parser.add_argument("--out", type=Path, default=HERE.parent / "runs" / "clipped_noise_bias.json")
    args = parser.parse_args(argv)
    models = {"teacher": load_model(args.teacher), **{path: load_model(path) for path in args.students}}
    sets = {"selection photos": selection_photos(args.every, args.crop),
            "gamut images": {f"gamut_{i:02d}": image for i, image in
                             enumerate(gamut_images(args.gamut, 128, seed=GAMUT_SEED))}}
    results = {"machine": machine_info(), "sigma": SIGMA, "near": NEAR, "teacher": args.teacher,
               "sets": {name: score_set(models, images) for name, images in sets.items()},
               "images": {name: sorted(images) for name, images in sets.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
