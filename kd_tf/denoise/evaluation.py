"""The held-out report: PSNR/SSIM of every method at several noise levels, cost, and timing."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf
import keras

from kd_tf.denoise import baselines as classical
from kd_tf.complexity import count_macs, count_params
from kd_tf.images import noisy_copy, to_8bit
from kd_tf.metrics import image_scores
from kd_tf.inference import model_inputs, run_on_image
from kd_tf.model_io import takes_noise_level
from kd_tf.tables import render_table


@dataclasses.dataclass
class Method:
    """One row of the report: a learned model or a classical denoiser."""

    name: str
    model: keras.Model | None = None
    classical: str | None = None

    def denoise(self, noisy, sigma):
        if self.model is not None:
            return run_on_image(self.model, noisy, sigma=sigma)
        if self.classical is not None:
            return classical.BASELINES[self.classical](noisy, sigma)
        return noisy                                  # the "noisy input" row


def methods_for(models: dict[str, keras.Model], baselines=("nlmeans", "cbm3d")) -> list[Method]:
    return ([Method("noisy input")] + [Method(name, model=m) for name, m in models.items()]
            + [Method(name, classical=name) for name in baselines])


def _time_ms(function, repeats: int) -> float:
    function()                                                   # warm-up / tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def timing_ms(method: Method, size: int = 512, sigma: float = 25.0, repeats: int = 3) -> float | None:
    """Median milliseconds to denoise one size x size RGB image (batch 1, this machine)."""
    if method.model is None and method.classical is None:
        return None
    rng = np.random.default_rng(0)
    image = rng.random((size, size, 3), dtype=np.float32)
    if method.model is not None:
        serve = tf.function(lambda x: method.model(x, training=False))
        batch = tf.nest.map_structure(tf.constant, model_inputs(method.model, image[None], sigma))
        return _time_ms(lambda: serve(batch).numpy(), repeats)
    return _time_ms(lambda: method.denoise(image, sigma), 1 if method.classical == "cbm3d" else repeats)


def evaluate(methods: list[Method], heldout: dict[str, np.ndarray], sigmas=(15, 25, 50), seed: int = 2024,
             timing_size: int = 512, cbm3d_sigmas=None, progress=print, timing: bool = True) -> dict:
    """Scores every method on every held-out image at every sigma (same noisy images for all).

    The protocol of a user's photo: the noisy image is rounded and clipped to 8 bits, and each
    output is clipped and rounded to 8 bits before PSNR/SSIM (kd_tf.images.to_8bit).

    CBM3D, which takes ~20 s per photo on 2 cores, runs only at `cbm3d_sigmas` (None: all).

    Returns {"sigmas": [...], "images": [...], "methods": {name: {params, macs_512,
    ms_per_512, scores: {sigma: {psnr, ssim, per_image: {...}}}}}}.
    """
    names = sorted(heldout)
    report = {"sigmas": [float(s) for s in sigmas], "images": names, "seed": seed, "methods": {}}
    for method in methods:
        entry = {"params": None, "macs_512": None}
        if method.model is not None:
            entry["params"] = count_params(method.model)
            entry["macs_512"] = _macs_or_none(method.model, timing_size)
        entry["scores"] = {}
        for sigma in sigmas:
            if method.classical == "cbm3d" and cbm3d_sigmas is not None and float(sigma) not in map(float, cbm3d_sigmas):
                continue
            per_image = {}
            for index, name in enumerate(names):
                clean = heldout[name]
                noisy = to_8bit(noisy_copy(clean, sigma, seed + index))
                per_image[name] = image_scores(clean, to_8bit(method.denoise(noisy, sigma)))
            entry["scores"][str(float(sigma))] = {
                "psnr": float(np.mean([p for p, _ in per_image.values()])),
                "ssim": float(np.mean([s for _, s in per_image.values()])),
                "per_image": {n: {"psnr": p, "ssim": s} for n, (p, s) in per_image.items()},
            }
        entry[f"ms_per_{timing_size}"] = timing_ms(method, timing_size) if timing else None
        report["methods"][method.name] = entry
        progress(f"evaluated {method.name}")
    return report


def _macs_or_none(model, size):
    try:
        if takes_noise_level(model):                 # (image, noise level)
            return count_macs(model, [(size, size, model.input_shape[0][-1]), (1,)])
        return count_macs(model, (size, size, model.input_shape[-1]))
    except Exception:                          # a wrapped SavedModel has no countable layers
        return None


def format_table(report: dict, timing_size: int = 512) -> str:
    """A fixed-width table: one row per method, PSNR/SSIM per sigma, params, GMACs, ms."""
    sigmas = report["sigmas"]
    header = (["method"] + [f"s{s:g} PSNR/SSIM" for s in sigmas]
              + ["params", f"GMACs@{timing_size}", "MACs vs teacher", f"ms@{timing_size}"])
    rows = []
    for name, entry in report["methods"].items():
        cells = [name]
        for sigma in sigmas:
            score = entry["scores"].get(str(float(sigma)))
            cells.append("-" if score is None else f"{score['psnr']:.2f} / {score['ssim']:.4f}")
        cells.append("-" if entry["params"] is None else f"{entry['params'] / 1e6:.3f} M")
        cells.append("-" if entry["macs_512"] is None else f"{entry['macs_512'] / 1e9:.3g}")
        ratio = entry.get("teacher_macs_ratio")
        cells.append("-" if ratio is None else f"1/{ratio:.1f}")
        ms = entry.get(f"ms_per_{timing_size}")
        cells.append("-" if ms is None else f"{ms:.1f}")
        rows.append(cells)
    return render_table(header, rows)
