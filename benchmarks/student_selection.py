"""Which candidate student to ship, chosen without the held-out photos.

    python -m benchmarks.student_selection runs/a/student.keras runs/b/student.keras \
        --out benchmarks/student_selection.json                          # ~2 min on 2 cores

The held-out sets only report the shipped model; picking among candidates by their held-out
scores would tune on them. This scores every candidate (and the teacher, for the gap) on photos of
the *training* corpus instead: every `--every`-th training photo of the photo corpus, centre crop
`--crop`, under the evaluation protocol (8-bit noisy input at each sigma, noise seed 2024 + index,
8-bit output). The candidates trained on these photos' patches, but all on the same ones for the
same number of steps, and a student of 0.3-1.2 M parameters fits 1.3 G training pixels without
memorising them, so the ranking measures how well each one learned the teacher's denoising.

`--downscale 1 2 4` also scores the same photos area-downscaled 2x and 4x before the crop (rounded
to 8 bits): the corpus is mostly 4-8 MP wallpapers, and photos from phones' previews and the web
hold more detail per pixel. The table then gives the gap to the teacher at each factor and its
mean, the ranking's figure for a student trained on downscaled patches (`data.min_scale`).

`--grey` scores grey copies of the same photos (each pixel's channel mean in all three channels;
the noise stays independent per channel): how far each candidate is behind the teacher on
black-and-white photos, which the corpus lacks (`data.grey_fraction`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import _centre_crop, machine_info, write_results

HERE = Path(__file__).resolve().parent
TEACHER = "models/denoise/ffdnet_8bit.keras"


def selection_photos(every: int, crop: int, corpus_dir=None, downscale: int = 1,
                     grey: bool = False) -> dict[str, np.ndarray]:
    """Every `every`-th training photo of the corpus (sorted by name), area-downscaled by `downscale`
    (then rounded to 8 bits, as a smaller file would be), centre-cropped to `crop` (a multiple of 16,
    so every candidate's stride divides it); `grey`: each pixel's channel mean in all three channels."""
    import cv2

    from kd_tf.photo_corpus import load_corpus

    corpus = load_corpus(corpus_dir, "train")
    photos = {}
    for name in sorted(corpus)[::every]:
        image = corpus[name]
        if downscale > 1:
            size = (image.shape[1] // downscale, image.shape[0] // downscale)
            image = np.round(np.clip(cv2.resize(image, size, interpolation=cv2.INTER_AREA), 0, 1) * 255) / 255
            image = image.astype(np.float32)
        if grey:
            image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.float32)
        photos[name] = _centre_crop(image, min(crop, *image.shape[:2]) // 16 * 16)
    return photos


def add_photo_arguments(parser: argparse.ArgumentParser) -> None:
    """The teacher and the photos every ranking on the selection photos takes: --teacher, --every, --crop, --sigmas."""
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--every", type=int, default=6, help="every N-th training photo (default 6: 13 of 73)")
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])


def render(results: dict) -> str:
    from benchmarks.render_tables import _table

    sigmas = results["sigmas"]
    factors = [f for f in results.get("downscale", [1]) if f > 1]
    models = results["models"]
    rows = []
    for name, row in models.items():
        gaps = [] if name == "teacher" else [models["teacher"]["psnr"]["25.0"] - row["psnr"]["25.0"]] + [
            models["teacher"]["downscaled"][str(f)]["25.0"] - row["downscaled"][str(f)]["25.0"] for f in factors]
        cells = [f"{row['psnr'][str(float(s))]:.2f}" for s in sigmas]
        cells += [f"{row['downscaled'][str(f)]['25.0']:.2f}" for f in factors]
        cells += [f"{gap:.2f}" for gap in gaps] or [""] * (1 + len(factors))
        if factors:
            cells.append(f"{np.mean(gaps):.2f}" if gaps else "")
        rows.append([name] + cells)
    header = ["model (training-corpus photos, PSNR dB)"] + [f"sigma {s:g}" for s in sigmas]
    header += [f"sigma 25, {f}x smaller" for f in factors] + ["gap to teacher at 25"]
    header += [f"gap at 25, {f}x smaller" for f in factors] + (["mean gap at 25"] if factors else [])
    return _table(header, rows)


def main(argv=None) -> int:
    from kd_tf.denoise.evaluation import Method, evaluate
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="+", help="students' .keras files")
    add_photo_arguments(parser)
    parser.add_argument("--downscale", type=int, nargs="+", default=[1],
                        help="area-downscaling factors of the photos, 1 first (default: 1 only); factors above 1 "
                             "are scored at sigma 25")
    parser.add_argument("--grey", action="store_true", help="grey copies of the photos (black-and-white photos)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "runs" / "student_selection.json",
                        help="results file (default runs/student_selection.json: a ranking for a new candidate "
                             "never overwrites the committed benchmarks/student_selection.json)")
    args = parser.parse_args(argv)
    if args.downscale[0] != 1 or any(f < 1 for f in args.downscale):
        parser.error(f"--downscale {args.downscale}: factors >= 1, the first one 1 (the photos as they are)")
    photos = selection_photos(args.every, args.crop, grey=args.grey)
    methods = [Method("teacher", model=load_model(args.teacher))]
    methods += [Method(path, model=load_model(path)) for path in args.candidates]
    report = evaluate(methods, photos, sigmas=args.sigmas, timing=False, progress=lambda _: None)
    results = {"machine": machine_info(), "photos": sorted(photos), "crop": args.crop, "sigmas": args.sigmas,
               "teacher": args.teacher, "downscale": args.downscale, "grey": args.grey,
               "models": {name: {"params": entry["params"], "macs_512": entry["macs_512"],
                                 "psnr": {s: v["psnr"] for s, v in entry["scores"].items()}, "downscaled": {}}
                          for name, entry in report["methods"].items()}}
    for factor in args.downscale[1:]:
        smaller = evaluate(methods, selection_photos(args.every, args.crop, downscale=factor, grey=args.grey),
                           sigmas=[25.0], timing=False, progress=lambda _: None)
        for name, entry in smaller["methods"].items():
            results["models"][name]["downscaled"][str(factor)] = {s: v["psnr"] for s, v in entry["scores"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
