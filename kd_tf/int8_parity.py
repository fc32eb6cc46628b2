"""Does the int8 model keep its colours? Parity of a quantized image model against its float self.

Core (any image-to-image task): the denoising protocol (8-bit noisy inputs) is the default; a task
passes its own `make_input` (super-resolution: the 8-bit bicubic downscale) and `stride`.

Full-integer TFLite gives every tensor one 8-bit range. Ranges calibrated on ordinary photos
clip the activations of saturated colours: on the shipped student, flat yellow drove the
deepest level's features to +-30 against a calibrated +-1.8, and the int8 model turned yellow
orange (-6.5 dB against float; issue 17). This module holds

- `colour_set`: a fixed, named synthetic set of what photos of the embedded split lack
  (primaries and secondaries at full saturation, flat and in shapes, hue sweeps and wheels,
  saturation and grey ramps, colour bars, near-black, near-white), for the parity check;
- `gamut_images`: random images of the same kinds, drawn differently, to mix into the
  calibration data (the check never scores what calibration saw);
- `image_parity` / `parity_report`: per-image PSNR of the float and the int8 model under the
  evaluation protocol (8-bit noisy input, output clipped and rounded to 8 bits,
  kd_tf.images.to_8bit), the drop, the mean per-channel shift int8 - float in 1/255 units, the
  worst image named (a generator's parity on fixed latents is kd_tf.generators.generator_parity).
  On flat images, where float is 40-50 dB from the truth, one noise draw moves the difference by
  tenths of a dB either way: `draws` scores such a set on several draws and judges the average.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Issue 17's acceptance: int8 within 0.1 dB of float on average, 0.2 dB on every image (both as
# |PSNR(float) - PSNR(int8)|: `summarize`), and no channel shifted by more than 1/255 on average over an image.
DRAW_SEED_STRIDE = 13   # draw k of a set: noise seed seed + 13 k + image index (no seed shared in sets of <= 13)
TARGET_MEAN_DROP_DB = 0.1
TARGET_MAX_DROP_DB = 0.2
TARGET_MAX_SHIFT_255 = 1.0

_CORNERS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
            "cyan": (0, 1, 1), "magenta": (1, 0, 1), "yellow": (1, 1, 0)}


def hsv_to_rgb(hue, saturation, value) -> np.ndarray:
    """HSV (arrays of one shape, hue in turns) to float32 RGB in [0, 1], shape + (3,)."""
    hue, saturation, value = np.broadcast_arrays(*(np.asarray(a, np.float32) for a in (hue, saturation, value)))
    sector = (hue % 1.0) * 6.0
    index = np.floor(sector).astype(int) % 6
    frac = sector - np.floor(sector)
    p, q, t = value * (1 - saturation), value * (1 - saturation * frac), value * (1 - saturation * (1 - frac))
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = np.zeros(hue.shape + (3,), np.float32)
    for k, (r, g, b) in enumerate(choices):
        mask = index == k
        out[mask] = np.stack([r[mask], g[mask], b[mask]], -1)
    return out


def colour_set(size: int = 128) -> dict[str, np.ndarray]:
    """The fixed synthetic saturated-colour set, {name: size x size x 3 float32 in [0, 1]}."""
    s = size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
    ones = np.ones_like(x)
    out = {}
    tiles = np.zeros((s, s, 3), np.float32)
    for k, colour in enumerate(_CORNERS.values()):
        row, col = divmod(k, 3)
        tiles[row * s // 2:(row + 1) * s // 2, col * s // 3:(col + 1) * s // 3 if col < 2 else s] = colour
    out["primaries_secondaries"] = tiles
    for name in ("yellow", "red", "blue"):
        out[f"flat_{name}"] = np.broadcast_to(np.float32(_CORNERS[name]), (s, s, 3)).copy()
    radius = np.hypot(y - 0.5, x - 0.5)
    out["hue_wheel"] = hsv_to_rgb(np.arctan2(y - 0.5, x - 0.5) / (2 * np.pi), np.clip(radius * 2.2, 0, 1), ones)
    out["hue_gradient"] = hsv_to_rgb(x, ones, ones)
    out["hue_value_gradient"] = hsv_to_rgb(x, ones, y)
    out["saturation_gradient"] = hsv_to_rgb(0.15 * ones, x, ones)            # white -> saturated yellow-orange
    out["grey_ramp"] = np.repeat(x[..., None], 3, -1)
    out["near_black"] = np.repeat((0.02 * x + 0.01 * y)[..., None], 3, -1) + np.float32([0, 0.01, 0.02])
    out["near_white"] = np.repeat((0.97 + 0.03 * x)[..., None], 3, -1) - np.float32([0.02, 0, 0.01]) * y[..., None]
    parrot = np.zeros((s, s, 3), np.float32) + np.float32([0.1, 0.55, 0.15])   # yellow and blue on green
    parrot[np.hypot(y - 0.4, x - 0.4) < 0.28] = (1.0, 0.85, 0.05)
    parrot[(np.abs(y - 0.75) < 0.12) & (x > 0.3)] = (0.05, 0.25, 0.95)
    out["parrot_like"] = parrot
    bars = np.zeros((s, s, 3), np.float32)
    for k, colour in enumerate([(1, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 0), (0, 0, 1), (0, 0, 0)]):
        bars[:, k * s // 8:(k + 1) * s // 8] = colour
    out["colour_bars"] = bars
    return {name: np.clip(image, 0, 1).astype(np.float32) for name, image in out.items()}


def gamut_images(count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """`count` random images covering the colour gamut, for calibration: flat colours with
    shapes, two-colour gradients, hue sweeps, off-centre hue wheels, near-black/near-white and
    flat saturated colours; colours from the RGB cube's corners, full-saturation hues and
    random RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)

    def colour():
        kind = rng.integers(3)
        if kind == 0:
            return rng.integers(0, 2, 3).astype(np.float32)
        if kind == 1:
            return hsv_to_rgb(rng.random(), 1.0, rng.uniform(0.6, 1.0))
        return (rng.random(3) ** rng.uniform(0.3, 3.0)).astype(np.float32)

    images = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            image = np.broadcast_to(colour(), (size, size, 3)).copy()
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.random(), rng.random(), rng.uniform(0.1, 0.5)
                if rng.random() < 0.5:
                    mask = np.hypot(y - cy, x - cx) < r
                else:
                    mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < r * rng.uniform(0.3, 2.0))
                image[mask] = colour()
        elif kind == 1:
            a, b, angle = colour(), colour(), rng.random() * 2 * np.pi
            ramp = np.cos(angle) * x + np.sin(angle) * y
            ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
            image = a + (b - a) * ramp[..., None]
        elif kind == 2:
            hue = rng.random() + rng.uniform(0.2, 1.0) * (x if rng.random() < 0.5 else y)
            other = y if rng.random() < 0.5 else x
            image = (hsv_to_rgb(hue, 1.0, 0.3 + 0.7 * other) if rng.random() < 0.5
                     else hsv_to_rgb(hue, other, 1.0))
        elif kind == 3:
            cy, cx = rng.uniform(0.2, 0.8, 2)
            image = hsv_to_rgb(np.arctan2(y - cy, x - cx) / (2 * np.pi) + rng.random(),
                               np.clip(np.hypot(y - cy, x - cx) * rng.uniform(1.5, 4.0), 0, 1), rng.uniform(0.7, 1.0))
        else:
            base = rng.choice([0.0, 1.0, -1.0])
            if base < 0:
                image = np.broadcast_to(colour(), (size, size, 3)).copy()
            else:
                image = np.abs(base - rng.uniform(0, 0.06, 3) * (x[..., None] + rng.random()))
        images.append(np.clip(image, 0, 1).astype(np.float32))
    return images


def noisy_8bit_batches(images, batch_size: int, sigma_range=(0.0, 55.0), seed: int = 0) -> list[np.ndarray]:
    """Batches of `images` (equal sizes) with Gaussian noise of a per-image sigma drawn in
    `sigma_range` (0-255 scale), rounded and clipped to 8 bits as a user's photo is."""
    from kd_tf.images import to_8bit

    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, len(images) - batch_size + 1, batch_size):
        clean = np.stack(images[start:start + batch_size])
        sigma = rng.uniform(*sigma_range, (len(clean), 1, 1, 1)).astype(np.float32)
        batches.append(to_8bit(clean + sigma / 255.0 * rng.standard_normal(clean.shape).astype(np.float32)))
    return batches


def crop_to_multiple(image: np.ndarray, stride: int) -> np.ndarray:
    """The top-left crop whose height and width are multiples of `stride` (what a model that halves
    or upscales by it maps back exactly).

    >>> crop_to_multiple(np.zeros((5, 7, 3)), 2).shape
    (4, 6, 3)
    """
    height, width = image.shape[0] // stride * stride, image.shape[1] // stride * stride
    return image[:height, :width]


def noisy_input(sigma: float = 25.0, seed: int = 2024):
    """The denoising protocol's `make_input`: image i (sorted by name) gets noise seed `seed + i`, as
    kd_tf.denoise.evaluation scores a set, rounded and clipped to 8 bits."""
    from kd_tf.images import noisy_copy, to_8bit

    return lambda clean, index: to_8bit(noisy_copy(clean, sigma, seed + index))


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The noise seeds of `draws` draws of the denoising protocol: draw k noises image i with
    seed + DRAW_SEED_STRIDE * k + i (draw 0 is the single-draw protocol's)."""
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws={draws!r}: expected an int >= 1")
    return [seed + DRAW_SEED_STRIDE * k for k in range(draws)]


def image_parity(float_model, int8_model, images: dict[str, np.ndarray], sigma: float = 25.0,
                 seed: int = 2024, stride: int = 8, make_input=None, draws: int = 1) -> dict:
    """Float vs int8 on `images` under the evaluation protocol. `float_model`/`int8_model` map an
    NHWC float batch to an NHWC batch (a Keras model, kd_tf.export.LiteRTModel, ...).

    Each image (sorted by name) is cropped to a multiple of `stride` and is the truth; the models
    see `make_input(truth, index)` (default `noisy_input(sigma, seed)`), whole. With `draws` > 1
    (the default protocol only) every image is scored on that many noise draws (`draw_seeds`) and
    its row holds the averages, each draw's drop in "drop_db_draws". Returns per-image rows and a
    summary of them.

    >>> flat = {"grey": np.full((16, 16, 3), 0.5, np.float32)}
    >>> halve = lambda batch: batch * 0.5 + 0.25        # a smoothing stand-in for a denoiser
    >>> row = image_parity(halve, halve, flat, draws=3)["per_image"]["grey"]
    >>> row["drop_db"], len(row["drop_db_draws"])
    (0.0, 3)
    """
    from kd_tf.images import to_8bit
    from kd_tf.metrics import image_scores

    seeds = draw_seeds(seed, draws)
    if make_input is not None and draws != 1:
        raise ValueError(f"draws={draws}: several noise draws need the default denoising protocol (make_input=None)")
    inputs = [make_input] if make_input is not None else [noisy_input(sigma, s) for s in seeds]
    rows = {}
    for index, name in enumerate(sorted(images)):
        clean = crop_to_multiple(np.asarray(images[name], np.float32), stride)
        scores = []
        for make in inputs:
            degraded = np.asarray(make(clean, index), np.float32)[None]
            out_float = to_8bit(np.asarray(float_model(degraded))[0])
            out_int8 = to_8bit(np.asarray(int8_model(degraded))[0])
            shift = (out_int8 - out_float).reshape(-1, out_float.shape[-1]).mean(axis=0) * 255.0
            scores.append((image_scores(clean, out_float)[0], image_scores(clean, out_int8)[0], shift))
        psnr_float = float(np.mean([s[0] for s in scores]))
        psnr_int8 = float(np.mean([s[1] for s in scores]))
        shift = np.mean([s[2] for s in scores], axis=0)
        rows[name] = {"psnr_float": psnr_float, "psnr_int8": psnr_int8, "drop_db": psnr_float - psnr_int8,
                      "channel_shift_255": [float(v) for v in shift]}
        if len(scores) > 1:
            rows[name]["drop_db_draws"] = [float(f - q) for f, q, _ in scores]
    return {"per_image": rows, **summarize(rows)}


def summarize(rows: dict[str, dict]) -> dict:
    """Mean and worst PSNR drop, the worst image, the largest |mean channel shift|, targets met.

    The targets are judged on |drop|: "int8 within 0.1 dB of float" is a distance, so an image
    that int8 happens to improve may not cancel one that it degrades in the mean, and a large gain
    is a large difference too (it shows on near-flat images, whose PSNR sits at 45-50 dB, where one
    noise draw can move the difference by +-0.3 dB: `image_parity(draws=...)` averages them). The signed mean and the worst loss are reported beside it."""
    drops = {name: row["drop_db"] for name, row in rows.items()}
    distances = {name: abs(drop) for name, drop in drops.items()}
    shifts = {name: max(abs(v) for v in row["channel_shift_255"]) for name, row in rows.items()}
    worst = max(drops, key=drops.get)
    farthest = max(distances, key=distances.get)
    summary = {"images": len(rows), "mean_drop_db": float(np.mean(list(drops.values()))),
               "mean_abs_drop_db": float(np.mean(list(distances.values()))),
               "max_drop_db": float(drops[worst]), "worst_image": worst,
               "max_abs_drop_db": float(distances[farthest]), "farthest_image": farthest,
               "max_abs_channel_shift_255": float(max(shifts.values())),
               "worst_shift_image": max(shifts, key=shifts.get)}
    summary["targets_met"] = {
        f"mean |drop| <= {TARGET_MEAN_DROP_DB} dB": summary["mean_abs_drop_db"] <= TARGET_MEAN_DROP_DB,
        f"every |drop| <= {TARGET_MAX_DROP_DB} dB": summary["max_abs_drop_db"] <= TARGET_MAX_DROP_DB,
        f"mean channel shift <= {TARGET_MAX_SHIFT_255}/255": summary["max_abs_channel_shift_255"] <= TARGET_MAX_SHIFT_255}
    return summary


def parity_sets(heldout: dict[str, np.ndarray], corpus_dir=None, colour_size: int = 128,
                heldout2_crop: int = 512) -> tuple[dict[str, dict], dict[str, str]]:
    """The sets of the parity check: the synthetic colour set, the given held-out photos and the
    photo corpus's second held-out set (its most textured `heldout2_crop` px windows, as the
    reports score it) when the corpus is there. Returns (sets, {set: why it was skipped})."""
    from kd_tf.images import most_textured_window

    sets = {"colour": colour_set(colour_size), "heldout": dict(heldout)}
    skipped = {}
    try:
        from kd_tf.photo_corpus import load_corpus

        photos = load_corpus(corpus_dir, "heldout2")
        sets["heldout2"] = {name: most_textured_window(image, heldout2_crop) for name, image in photos.items()}
    except (FileNotFoundError, ValueError) as error:
        skipped["heldout2"] = f"photo corpus not available: {error}"
        log.info("int8 parity: held-out set 2 skipped (%s)", skipped["heldout2"])
    return sets, skipped


def parity_report(float_model, int8_model, sets: dict[str, dict], skipped: dict | None = None,
                  sigma: float = 25.0, seed: int = 2024, stride: int = 8, make_input=None,
                  protocol: str | None = None, draws: dict[str, int] | None = None) -> dict:
    """`image_parity` on every set, plus the worst over all of them. `make_input`/`protocol`: a
    task's own degradation and its description (default: the denoising protocol at `sigma`).
    `draws`: {set: noise draws} for sets judged on their average over draws (others: one)."""
    draws = dict(draws or {})
    unknown = sorted(set(draws) - set(sets))
    if unknown:
        raise ValueError(f"draws: {unknown} are not parity sets; accepted: {sorted(sets)}")
    protocol = protocol or (f"sigma {sigma:g}, noise seed {seed} + image index per set, 8-bit noisy input, "
                            f"outputs clipped and rounded to 8 bits")
    several = {name: count for name, count in draws.items() if count > 1}
    if several:
        protocol += "; " + ", ".join(f"set {name}: the average over {count} noise draws (seeds {seed} + "
                                     f"{DRAW_SEED_STRIDE} k + image index)" for name, count in several.items())
    report = {"protocol": f"{protocol}; drop = PSNR(float) - PSNR(int8); shift = mean(int8 - float) per channel x 255",
              "sets": {}, "skipped": dict(skipped or {})}
    for name, images in sets.items():
        report["sets"][name] = image_parity(float_model, int8_model, images, sigma, seed, stride, make_input,
                                            draws=draws.get(name, 1))
        if name in several:
            report["sets"][name]["noise_draws"] = several[name]
    report["overall"] = overall(report["sets"])
    return report


def overall(sets: dict[str, dict]) -> dict:
    """`summarize` over every image of every set ("set/image"), and whether every set met every target."""
    every = {f"{set_name}/{image}": row for set_name, result in sets.items()
             for image, row in result["per_image"].items()}
    summary = summarize(every) if every else {}
    summary["all_targets_met"] = bool(every) and all(all(result["targets_met"].values()) for result in sets.values())
    return summary


def format_parity(report: dict) -> str:
    from kd_tf.tables import render_table

    rows = [[name + (f" ({r['noise_draws']} draws)" if r.get("noise_draws") else ""), str(r["images"]),
             f"{r['mean_drop_db']:+.3f}", f"{r['mean_abs_drop_db']:.3f}",
             f"{r['max_drop_db']:+.3f} ({r['worst_image']})", f"{r['max_abs_drop_db']:.3f} ({r['farthest_image']})",
             f"{r['max_abs_channel_shift_255']:.2f}", "yes" if all(r["targets_met"].values()) else "no"]
            for name, r in report["sets"].items()]
    table = render_table(["int8 parity set", "images", "mean dPSNR float-int8", "mean abs dPSNR", "worst loss (image)",
                          "largest abs dPSNR (image)", "max abs shift /255", "targets met"], rows)
    for name, why in report.get("skipped", {}).items():
        table += f"\n{name}: skipped ({why})"
    return table
