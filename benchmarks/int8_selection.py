"""Ranks int8 files of one float denoiser on images that no export and no parity check uses, so
that a recipe (float levels, percentile, QAT) is chosen without looking at the parity sets.

    python -m benchmarks.int8_selection --model models/denoise/student.keras \
        --int8 runs/a/export/student_int8.tflite runs/b/export/student_int8.tflite --out selection.json

Selection sets (8-bit protocol, sigma 25, three noise draws each): synthetic gamut images
(kd_tf.int8_parity.gamut_images seeded 99; calibration uses the export's eval_seed + 1, QAT + 11,
and the parity check the fixed kd_tf.int8_parity.colour_set) and 256 px centre crops of the
embedded training photos (the held-out photos are the parity check's). Per file and set: mean
drop, mean |drop| (a file that moves a flat image closer to the truth by chance does not hide a
loss elsewhere), worst image over the draws' mean, largest mean channel shift, and the mean PSNR
against the clean image of the int8 file and of the float model: files of different students (a
new student against the shipped one) compare end to end on the same images and noise draws.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SEED, DRAWS, SIGMA = 99, 3, 25.0


def selection_sets(gamut_count: int = 40, size: int = 128, crop: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """{set: {name: image}}: gamut images and centre crops of the embedded training photos."""
    from kd_tf.images import load_split
    from kd_tf.int8_parity import gamut_images

    gamut = {f"gamut_{i:02d}": image for i, image in enumerate(gamut_images(gamut_count, size, seed=SEED))}
    photos = {}
    for name, image in sorted(load_split(None, 0.2, 0, min_size=crop).train.items()):
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        photos[name] = np.asarray(image[top:top + crop, left:left + crop], np.float32)
    return {"gamut": gamut, "training_photos": photos}


def rank(model, int8_paths, sets, draws: int = DRAWS) -> dict:
    """Per file and set: drops averaged over `draws` noise draws, then summarized."""
    from kd_tf.export import LiteRTModel
    from kd_tf.int8_parity import image_parity

    results = {}
    for path in int8_paths:
        int8 = LiteRTModel(path, num_threads=2)
        results[str(path)] = {}
        for set_name, images in sets.items():
            drops, shifts, psnr_int8, psnr_float = {}, {}, [], []
            for k in range(draws):
                rows = image_parity(lambda b: model(b, training=False), int8, images, sigma=SIGMA,
                                    seed=SEED + 1000 * k)["per_image"]
                for name, row in rows.items():
                    psnr_int8.append(row["psnr_int8"])
                    psnr_float.append(row["psnr_float"])
                    drops.setdefault(name, []).append(row["drop_db"])
                    shifts.setdefault(name, []).append(max(abs(v) for v in row["channel_shift_255"]))
            means = {name: float(np.mean(v)) for name, v in drops.items()}
            worst = max(means, key=means.get)
            results[str(path)][set_name] = {
                "mean_drop_db": float(np.mean(list(means.values()))),
                "mean_abs_drop_db": float(np.mean([abs(v) for v in means.values()])),
                "worst_image": worst, "worst_drop_db": means[worst],
                "images_above_0.2_db": sum(v > 0.2 for v in means.values()),
                "max_channel_shift_255": float(max(np.mean(v) for v in shifts.values())),
                "mean_psnr_int8_db": float(np.mean(psnr_int8)), "mean_psnr_float_db": float(np.mean(psnr_float)),
                "per_image_drop_db": means}
    return results


def table(results: dict) -> str:
    lines = ["| int8 file | set | mean drop | mean abs drop | worst (image) | images > 0.2 dB | max shift /255 "
             "| PSNR int8 (float) |", "|---|---|---|---|---|---|---|---|"]
    for path, sets in results.items():
        for set_name, r in sets.items():
            lines.append(f"| {path} | {set_name} | {r['mean_drop_db']:.3f} | {r['mean_abs_drop_db']:.3f} | "
                         f"{r['worst_drop_db']:.3f} ({r['worst_image']}) | {r['images_above_0.2_db']} | "
                         f"{r['max_channel_shift_255']:.2f} | "
                         f"{r['mean_psnr_int8_db']:.2f} ({r['mean_psnr_float_db']:.2f}) |")
    return "\n".join(lines)


def main(argv=None):
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the float Keras denoiser the files were exported from")
    parser.add_argument("--int8", nargs="+", required=True, help="TFLite files to rank")
    parser.add_argument("--draws", type=int, default=DRAWS, help="noise draws per image")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    results = rank(load_model(args.model), args.int8, selection_sets(), args.draws)
    report = {"model": args.model, "seed": SEED, "sigma": SIGMA, "draws": args.draws, "files": results,
              "table": table(results)}
    print(report["table"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
