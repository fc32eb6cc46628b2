"""FFDNet (converted by `python -m kd_tf convert-ffdnet`) on the embedded held-out photos.

Why: a sanity check that the port denoises as published FFDNet does (~31-32 dB at sigma 25 on
natural colour photos), before it is used as a teacher. Protocol: noise from
kd_tf.images.noisy_copy with seed 2024 + image index over sorted names (the noise of
kd_tf.denoise.evaluation, so figures compare with models/denoise/teacher_report.json); the noisy image
is rounded and clipped to 8 bits (noisy_copy itself does not clip); FFDNet gets sigma/255; its
output is clipped and rounded to 8 bits; PSNR against the clean image, peak 1.

    python -m benchmarks.ffdnet_check [--model models/denoise/ffdnet_color.keras]

writes benchmarks/ffdnet_check.json (the figures of models/denoise/FFDNET.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kd_tf.denoise import ffdnet  # noqa: E402  (registers FFDNet's layers before loading)
from kd_tf.images import load_split, noisy_copy  # noqa: E402

SIGMAS = (15.0, 25.0, 50.0)
SEED = 2024
OUT = Path(__file__).with_name("ffdnet_check.json")


def to_8bit(image) -> np.ndarray:
    """clip(round(x * 255), 0, 255) / 255: what an 8-bit file holds."""
    return (np.clip(np.round(np.asarray(image, np.float64) * 255.0), 0, 255) / 255.0).astype(np.float32)


def psnr(clean, restored) -> float:
    mse = float(np.mean((np.asarray(clean, np.float64) - np.asarray(restored, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def measure(model: keras.Model, sigmas=SIGMAS, seed: int = SEED) -> dict:
    heldout = load_split().heldout
    names = sorted(heldout)
    run = tf.function(lambda image, sigma: model([image, sigma], training=False), reduce_retracing=True)
    scores = {}
    for sigma in sigmas:
        per_image, noisy_psnr = {}, {}
        for index, name in enumerate(names):
            clean = heldout[name]
            noisy = to_8bit(noisy_copy(clean, sigma, seed + index))
            out = run(tf.constant(noisy[None]), tf.constant([[sigma / 255.0]], tf.float32)).numpy()[0]
            per_image[name] = psnr(clean, to_8bit(out))
            noisy_psnr[name] = psnr(clean, noisy)
        scores[f"{sigma:g}"] = {"mean_psnr": float(np.mean(list(per_image.values()))), "per_image": per_image,
                                "noisy_input_mean_psnr": float(np.mean(list(noisy_psnr.values())))}
        print(f"sigma {sigma:g}: mean {scores[f'{sigma:g}']['mean_psnr']:.2f} dB "
              + " ".join(f"{n} {p:.2f}" for n, p in per_image.items()), flush=True)
    sizes = {name: list(heldout[name].shape) for name in names}
    return {"sigmas": list(sigmas), "seed": seed, "images": sizes, "psnr": scores}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/denoise/ffdnet_color.keras")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    model = keras.saving.load_model(args.model, compile=False)
    result = {
        "model": args.model,
        "protocol": "noisy = clip(round((clean + sigma/255 * N(0,1)) * 255), 0, 255) / 255 with kd_tf.images.noisy_copy "
                    "seed 2024 + index (sorted names); FFDNet sigma input = sigma/255; output clipped and rounded "
                    "to 8 bits; PSNR peak 1 per image, then the mean",
        **measure(model),
        "ms_per_512x512": ffdnet.time_forward(model, 512, repeats=3),
        "timing": "median of 3 float32 forwards (1, 512, 512, 3) after one warm-up, tf.function, CPU",
        "params": int(sum(np.prod(w.shape) for w in model.weights)),
        "macs_per_pixel": ffdnet.macs_per_pixel(model),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1min": os.getloadavg()[0],
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"ms per 512x512: {result['ms_per_512x512']:.0f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
