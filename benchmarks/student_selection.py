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


def selection_photos(every: int, crop: int, corpus_dir=None) -> dict[str, np.ndarray]:
    """Every `every`-th training photo of the corpus (sorted by name), centre-cropped to `crop`
    (a multiple of 16, so every candidate's stride divides it)."""
    from kd_tf.photo_corpus import load_corpus

    corpus = load_corpus(corpus_dir, "train")
    names = sorted(corpus)[::every]
    return {name: _centre_crop(corpus[name], min(crop, *corpus[name].shape[:2]) // 16 * 16) for name in names}


def render(results: dict) -> str:
    from benchmarks.render_tables import _table

    sigmas = results["sigmas"]
    teacher = results["models"]["teacher"]["psnr"]
    rows = []
    for name, row in results["models"].items():
        gap = "" if name == "teacher" else f"{teacher['25.0'] - row['psnr']['25.0']:.2f}"
        rows.append([name] + [f"{row['psnr'][str(float(s))]:.2f}" for s in sigmas] + [gap])
    return _table(["model (training-corpus photos, PSNR dB)"] + [f"sigma {s:g}" for s in sigmas]
                  + ["gap to teacher at 25"], rows)


def main(argv=None) -> int:
    from kd_tf.denoise.evaluation import Method, evaluate
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="+", help="students' .keras files")
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--every", type=int, default=6, help="every N-th training photo (default 6: 13 of 73)")
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "runs" / "student_selection.json",
                        help="results file (default runs/student_selection.json: a ranking for a new candidate "
                             "never overwrites the committed benchmarks/student_selection.json)")
    args = parser.parse_args(argv)
    photos = selection_photos(args.every, args.crop)
    methods = [Method("teacher", model=load_model(args.teacher))]
    methods += [Method(path, model=load_model(path)) for path in args.candidates]
    report = evaluate(methods, photos, sigmas=args.sigmas, timing=False, progress=lambda _: None)
    results = {"machine": machine_info(), "photos": sorted(photos), "crop": args.crop, "sigmas": args.sigmas,
               "teacher": args.teacher,
               "models": {name: {"params": entry["params"], "macs_512": entry["macs_512"],
                                 "psnr": {s: v["psnr"] for s, v in entry["scores"].items()}}
                          for name, entry in report["methods"].items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
