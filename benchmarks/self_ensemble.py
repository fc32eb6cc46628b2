"""How much stronger the teacher is as its own 8-fold geometric self-ensemble, on photos no held-out
figure uses: the size of the "distil towards a stronger target" lever for the student's gap.

    python -m benchmarks.self_ensemble        # writes benchmarks/self_ensemble.json (~3 min on 2 cores)

The self-ensemble denoises each of the image's 8 flips and rotations and averages the outputs turned
back (the classic x8 test-time ensemble of restoration papers): 8x the compute, so never what ships,
but a teacher bank could store it. Scored on the selection photos (training-corpus photos,
benchmarks.student_selection's set and protocol: 8-bit noisy input, noise seed 2024 + index, 8-bit
output), never the held-out photos, for the teacher and the shipped student, each alone and x8.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_results
from benchmarks.student_selection import add_photo_arguments, selection_photos

HERE = Path(__file__).resolve().parent
STUDENT = "models/denoise/student.keras"


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips and rotations of an [h, w, c] image (k in 0..7)."""
    out = np.rot90(image, k % 4)
    return out[:, ::-1] if k >= 4 else out


def undo_dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The inverse of `dihedral(., k)`.

    >>> x = np.arange(12.0).reshape(3, 4, 1)
    >>> all(np.array_equal(undo_dihedral(dihedral(x, k), k), x) for k in range(8))
    True
    """
    out = image[:, ::-1] if k >= 4 else image
    return np.rot90(out, -(k % 4))


def self_ensemble_method(name: str, model):
    """A `kd_tf.denoise.evaluation.Method` that denoises the 8 transforms and averages them back."""
    from kd_tf.denoise.evaluation import Method
    from kd_tf.inference import run_on_image

    @dataclass
    class SelfEnsemble(Method):
        def denoise(self, noisy, sigma):
            outputs = [undo_dihedral(np.asarray(run_on_image(self.model, np.ascontiguousarray(dihedral(noisy, k)),
                                                             sigma=sigma)), k) for k in range(8)]
            return np.mean(outputs, axis=0).astype(np.float32)

    return SelfEnsemble(name, model=model)


def render(results: dict) -> str:
    from benchmarks.render_tables import _table

    sigmas = [str(float(s)) for s in results["sigmas"]]
    psnr = results["psnr"]
    rows = [[name] + [f"{row[s]:.2f}" for s in sigmas] for name, row in psnr.items()]
    for label, high, low, sign in (("teacher x8 over teacher", "teacher x8", "teacher", "+"),
                                   ("student behind teacher", "teacher", "student", ""),
                                   ("student behind teacher x8", "teacher x8", "student", "")):
        rows.append([label] + [f"{psnr[high][s] - psnr[low][s]:{sign}.2f}" for s in sigmas])
    return _table(["model (training-corpus photos, PSNR dB)"] + [f"sigma {float(s):g}" for s in sigmas], rows)


def main(argv=None) -> int:
    from kd_tf.denoise.evaluation import Method, evaluate
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_photo_arguments(parser)
    parser.add_argument("--student", default=STUDENT)
    parser.add_argument("--out", type=Path, default=HERE / "self_ensemble.json")
    args = parser.parse_args(argv)
    teacher, student = load_model(args.teacher), load_model(args.student)
    methods = [Method("teacher", model=teacher), self_ensemble_method("teacher x8", teacher),
               Method("student", model=student), self_ensemble_method("student x8", student)]
    photos = selection_photos(args.every, args.crop)
    report = evaluate(methods, photos, sigmas=args.sigmas, timing=False, progress=lambda _: None)
    results = {"machine": machine_info(), "photos": sorted(photos), "crop": args.crop, "sigmas": args.sigmas,
               "teacher": args.teacher, "student": args.student,
               "psnr": {name: {s: v["psnr"] for s, v in entry["scores"].items()}
                        for name, entry in report["methods"].items()}}
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
