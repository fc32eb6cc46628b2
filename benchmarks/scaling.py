"""Benchmark 5: how the distillation step's time and memory grow with batch size and patch size.

The step is (a) of benchmark 1 (output + feature distillation, default precision). Along each
axis, pixels per step grow; where time (or memory) grows in proportion, cost per pixel is flat.
Each configuration gets a fresh trace and warm-up steps; then the kernel's peak-RSS mark is
reset, so a row's peak RSS is that configuration's own steady state (weights and TensorFlow
included) and its increment is what one step allocates on top.
"""

from __future__ import annotations

import keras

from benchmarks.common import (DEFAULT_PRECISION, Bench, current_rss_mb, reset_peak_rss, time_fit,
                               window_peak_rss_mb)

LINEAR_BAND = 0.15             # growth within +-15% of the pixel growth counts as linear


def _one_configuration(bench: Bench, distiller, batch: int, patch: int) -> dict:
    """Warm-up (trace) first, then the peak-RSS mark is reset: the increment is what a step needs
    beyond what stays allocated between steps (activations, gradients, temporaries)."""
    data = bench.patches(batch, patch)
    distiller.make_train_function(force=True)          # a trace for this shape, not a shape-generic one
    distiller.fit(data, epochs=1, steps_per_epoch=max(2, bench.sizes.warmup // 2), verbose=0, shuffle=False)
    reset = reset_peak_rss()
    before = current_rss_mb()
    stats = time_fit(distiller, data, 1, bench.sizes.scaling_steps)
    peak = window_peak_rss_mb() if reset else None
    pixels = batch * patch * patch
    return {"batch": batch, "patch": patch, "megapixels": pixels / 1e6, "step_s": stats.median_s,
            "ms_per_megapixel": 1000 * stats.median_s / (pixels / 1e6), "rss_before_mb": before, "peak_rss_mb": peak,
            "peak_increment_mb": None if peak is None or before is None else peak - before}


def _growth(rows: list[dict]) -> None:
    """Adds, to each row after the first, how time and memory grew against the pixels."""
    for previous, row in zip(rows, rows[1:]):
        pixel_growth = row["megapixels"] / previous["megapixels"]
        row["time_growth_over_pixel_growth"] = (row["step_s"] / previous["step_s"]) / pixel_growth
        if row.get("peak_increment_mb") and previous.get("peak_increment_mb"):
            row["memory_growth_over_pixel_growth"] = (row["peak_increment_mb"] / previous["peak_increment_mb"]) / pixel_growth
        for key in ("time", "memory"):
            value = row.get(f"{key}_growth_over_pixel_growth")
            if value is not None:
                row[f"{key}_regime"] = ("linear" if abs(value - 1) <= LINEAR_BAND
                                        else "sublinear" if value < 1 else "superlinear")


def scaling(bench: Bench) -> dict:
    """Step time, ms per megapixel and peak RSS along the batch axis, then the patch axis."""
    sizes = bench.sizes
    axes = {"batch": [(b, sizes.patch) for b in sizes.scaling_batches],
            "patch": [(sizes.batch, p) for p in sizes.scaling_patches]}
    result = {"precision": DEFAULT_PRECISION, "linear_band": LINEAR_BAND}
    for axis, configurations in axes.items():
        distiller = bench.distiller(DEFAULT_PRECISION, features=True)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
        rows = []
        for batch, patch in configurations:
            bench.log(f"  scaling: batch {batch}, patch {patch}")
            rows.append(_one_configuration(bench, distiller, batch, patch))
        _growth(rows)
        result[axis] = rows
    return result
