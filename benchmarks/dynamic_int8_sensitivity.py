"""Which layer's input rounding costs a dynamic-range int8 denoiser most on flat bright and dark
images, in simulation, for one or more float students, on images no export and no parity check uses.

    python -m benchmarks.dynamic_int8_sensitivity models/denoise/student.keras \
        models/denoise/checkpoints/student-v13-multiscale/student.keras --out sensitivity.json   # ~5 min

Each model is prepared as the dynamic-range export prepares it (`kd_tf.denoise.export_job.dynamic_source`:
channel ranges equalized on the export's calibration crops, `--float-layers` kept in float), then, one
layer at a time and all together, the layer's input is rounded per image as the runtime rounds it
(`kd_tf.weight_rounding.dynamic_int8`; weights stay float, so this isolates the activations); then the kernels
alone rounded to their nearest int8 steps, and both (`simulated_dynamic_int8`; the export's GPTQ and tuning are
not simulated). Images:
every fifth image of benchmarks.int8_selection's gamut set (seed 99), the near-black, near-white and
flat-colour kind, at sigma 25 over three noise draws, 8-bit. Drops are PSNR(float) - PSNR(simulated) against
the clean image, averaged over the bright (mean > 0.9) and the dark (mean < 0.1) images.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

SEED, DRAWS, SIGMA, COUNT, SIZE = 99, 3, 25.0, 200, 128
FLOAT_LAYERS = ["enc0_block0_conv1", "dec0_block0_conv1"]    # configs/export_dynamic.yaml


def flat_images(count: int = COUNT, size: int = SIZE) -> np.ndarray:
    """The near-black / near-white / flat-colour kind of int8_selection's gamut images (seed 99)."""
    from kd_tf.int8_parity import gamut_images

    return np.stack([image for i, image in enumerate(gamut_images(count, size, seed=SEED)) if i % 5 == 4])


def psnr_per_image(output: np.ndarray, clean: np.ndarray) -> np.ndarray:
    return 10 * np.log10(1.0 / np.mean((np.clip(output, 0, 1) - clean) ** 2, axis=(1, 2, 3)))


def sensitivity(model_path: str, float_layers: list[str], clean: np.ndarray) -> dict:
    """{layer: {"bright", "dark", "all"}: mean dB drop} with only that layer's input rounded, "ALL" of them,
    the kernels alone rounded to their nearest int8 steps, and both (GPTQ and tuning, which the export adds,
    are not simulated here)."""
    from kd_tf import config as cfg
    from kd_tf.denoise.export_job import calibration_batches, dynamic_source
    from kd_tf.images import load_split, to_8bit
    from kd_tf.model_io import load_model
    from kd_tf.weight_rounding import MIN_ELEMENTS, _eligible, _simulating, simulated_dynamic_int8

    data = cfg.DataConfig()
    split = load_split(None, data.heldout_fraction, data.split_seed, min_size=data.patch_size)
    source = dynamic_source(load_model(model_path), calibration_batches(split.train, 16, data=data), float_layers)
    rng = np.random.default_rng(SEED)
    noisy = [to_8bit(clean + SIGMA / 255 * rng.standard_normal(clean.shape).astype(np.float32)) for _ in range(DRAWS)]
    reference = np.mean([psnr_per_image(np.asarray(source(batch)), clean) for batch in noisy], axis=0)
    brightness = clean.mean(axis=(1, 2, 3))
    rounded = [layer.name for layer in source.layers if _eligible(layer, MIN_ELEMENTS) is None]
    variants = {name: (lambda n=name: _simulating(source, {n}, True)) for name in rounded}
    variants["ALL"] = lambda: _simulating(source, set(rounded), True)
    variants["weights only (nearest)"] = lambda: simulated_dynamic_int8(source, weights=True, activations=False)
    variants["weights (nearest) and ALL"] = lambda: simulated_dynamic_int8(source, weights=True, activations=True)
    rows = {}
    for name, build in variants.items():
        simulated = build()
        drop = reference - np.mean([psnr_per_image(np.asarray(simulated(batch)), clean) for batch in noisy], axis=0)
        rows[name] = {"bright": float(drop[brightness > 0.9].mean()), "dark": float(drop[brightness < 0.1].mean()),
                      "all": float(drop.mean())}
        print(f"{model_path} {name}: bright {rows[name]['bright']:.3f} dark {rows[name]['dark']:.3f} dB", flush=True)
    return rows


def render(results: dict) -> str:
    models = list(results["models"])
    layers = list(results["models"][models[0]])
    lines = ["| what is rounded (one layer's input, ALL inputs, the kernels) | " + " | ".join(f"{m}: bright / dark dB" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for layer in layers:
        cells = [f"{results['models'][m][layer]['bright']:.3f} / {results['models'][m][layer]['dark']:.3f}"
                 for m in models]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="float Keras denoisers")
    parser.add_argument("--float-layers", nargs="*", default=FLOAT_LAYERS, help="convolutions kept in float")
    parser.add_argument("--out", type=Path, required=True, help="results file (JSON)")
    args = parser.parse_args(argv)
    clean = flat_images()
    brightness = clean.mean(axis=(1, 2, 3))
    results = {"images": {"count": len(clean), "bright": int((brightness > 0.9).sum()),
                          "dark": int((brightness < 0.1).sum()), "sigma": SIGMA, "draws": DRAWS, "seed": SEED},
               "float_layers": args.float_layers,
               "models": {path: sensitivity(path, args.float_layers, clean) for path in args.models}}
    results["table"] = render(results)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
