"""How far the shipped FFDNet teacher is from flip/rotation equivariant, which kd_tf.teacher_cache's
augmentation of cached outputs assumes: PSNR between T(g(x)) and g(T(x)) for the 8 dihedral
transforms g, on training patches drawn as the main job draws them (64x64, sigma 0-55, true sigma).

    python -m benchmarks.teacher_equivariance [--batches 4] [--out benchmarks/teacher_equivariance.json]

For scale, the same patches' PSNR of T(x) against the clean target is reported too: an error far
below the teacher's own (a PSNR far above) is a small change of the distillation target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TRANSFORMS = [(flip, turns) for flip in (False, True) for turns in range(4)]     # the dihedral group D4


def apply(images: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    images = images[:, :, ::-1] if flip else images
    return np.rot90(images, turns, axes=(1, 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR on [0, 1] (None when identical: the identity transform)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return None if mse == 0 else float(10 * np.log10(1.0 / mse))


def measure(teacher_path: str, batches: int = 4, seed: int = 0) -> dict:
    from kd_tf.config import DataConfig
    from kd_tf.images import load_split, patch_dataset
    from kd_tf.model_io import load_model

    teacher = load_model(teacher_path)
    data = DataConfig()
    split = load_split(min_size=data.patch_size)
    stream = patch_dataset(split.train, data.patch_size, data.batch_size, (data.sigma_min, data.sigma_max), seed=seed,
                           noise_level_for_teacher=True)
    noisy, sigma, clean = [], [], []
    for x, target in stream.take(batches):
        image, level = x["teacher_inputs"]
        noisy.append(image.numpy()), sigma.append(level.numpy()), clean.append(target.numpy())
    noisy, sigma, clean = np.concatenate(noisy), np.concatenate(sigma), np.concatenate(clean)
    out = np.asarray(teacher([noisy, sigma], training=False))
    rows = []
    for flip, turns in TRANSFORMS:
        moved = np.asarray(teacher([np.ascontiguousarray(apply(noisy, flip, turns)), sigma], training=False))
        rows.append({"flip": flip, "rot90": turns, "psnr_T_of_g_x_vs_g_of_T_x": psnr(moved, apply(out, flip, turns)),
                     "max_abs_diff": float(np.abs(moved - apply(out, flip, turns)).max())})
    nontrivial = [r["psnr_T_of_g_x_vs_g_of_T_x"] for r in rows if r["flip"] or r["rot90"]]
    return {"teacher": teacher_path, "patches": int(len(noisy)), "patch_size": data.patch_size,
            "sigma_range": [data.sigma_min, data.sigma_max], "transforms": rows,
            "worst_psnr_db": min(nontrivial), "mean_psnr_db": float(np.mean(nontrivial)),
            "teacher_psnr_vs_clean_db": psnr(out, clean),
            "threshold_db": 45.0, "material": min(nontrivial) < 45.0}


def main(argv=None) -> dict:
    from kd_tf.denoise.config import DEFAULT_TEACHER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/teacher_equivariance.json")
    args = parser.parse_args(argv)
    report = measure(args.teacher, args.batches)
    report["teacher"] = str(Path(args.teacher).resolve().relative_to(Path.cwd().resolve())) \
        if Path(args.teacher).resolve().is_relative_to(Path.cwd().resolve()) else args.teacher
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "transforms"}, indent=2))
    return report


if __name__ == "__main__":
    main()
