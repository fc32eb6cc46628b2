"""What the digit tasks (kd_tf.gan, kd_tf.diffusion) share about generators: latents drawn inside
the training step, scoring (FID, KID, precision/recall/coverage, mode collapse) in the digit
classifier's feature space, timing, int8 export and its parity, and the `generate` verb.

A generator maps N(0, 1) latents (batch, latent_dim) to 28x28 digits in [-1, 1]; the classifier
and the metrics see [0, 1].
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf.atomic import write_bytes_atomically, write_text_atomically
from kd_tf.callbacks import digit_grid
from kd_tf.classifier import feature_extractor
from kd_tf.digits import as_unit
from kd_tf.errors import InputError
from kd_tf.images import to_8bit, writable_folder, write_image
from kd_tf.metrics import diversity, frechet_distance, kernel_inception_distance, precision_recall_coverage
from kd_tf.model_io import load_model
from kd_tf.tables import render_table

log = logging.getLogger(__name__)


class LatentSampler:
    """Latent vectors drawn inside the training step: N(0, 1), statelessly from (seed, step).

    The same step gives the same z whatever the process, and teacher and student get the same z.
    Under tf.distribute every replica draws the *global* batch and keeps its own slice (offset
    by the replicas before it), so R replicas see exactly the z's of one device with the global
    batch, and a resumed run draws the z's it would have drawn.
    """

    def __init__(self, latent_dim: int, seed: int = 0):
        if int(latent_dim) < 1:
            raise InputError(f"latent_dim={latent_dim!r} is not accepted; expected an int >= 1")
        self.latent_dim, self.seed = int(latent_dim), int(seed)

    def __call__(self, local_batch, step):
        local = tf.cast(local_batch, tf.int32)
        offset, total = tf.constant(0, tf.int32), local
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            replicas = context.num_replicas_in_sync
            replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
            sizes = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                       tf.one_hot(replica, replicas) * tf.cast(local, tf.float32))
            sizes = tf.cast(tf.round(sizes), tf.int32)
            offset = tf.reduce_sum(sizes[:replica])
            total = tf.reduce_sum(sizes)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        z = tf.random.stateless_normal(tf.stack([total, self.latent_dim]), seed=seed)
        return z[offset:offset + local]

    def fixed(self, count: int, seed: int | None = None) -> np.ndarray:
        """`count` latents outside training (sample grids, metrics, generate), from `seed`."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return rng.standard_normal((count, self.latent_dim)).astype(np.float32)


def latent_dim_of(generator: keras.Model) -> int:
    """The latent size a generator takes; a clear error for a model that does not take a vector."""
    shape = tuple(generator.input_shape) if not isinstance(generator.input_shape, list) else None
    if shape is None or len(shape) != 2 or shape[1] is None:
        raise InputError(f"model {generator.name!r} takes inputs of shape {generator.input_shape}; "
                         f"expected a generator taking a latent vector (batch, latent_dim)")
    return int(shape[1])


PR_SAMPLES = 5000          # precision/recall/coverage use k-NN balls: O(n^2) distances, so a subset


RECOGNIZED_CONFIDENCE = 0.9     # a sample "is a digit" when the classifier is at least this sure


class Scorer:
    """FID, KID, precision/recall/coverage and the mode-collapse check of a generator, in the
    feature space of the shipped digit classifier, against the 10k test digits.

    The collapse criterion: the mean feature distance between random pairs of samples, divided by
    the same for real digits (`diversity_ratio`); below `collapse_ratio` (0.5 by default) every
    sample looks nearly alike and a warning goes to the log, with `collapse_advice`: what to
    change in the job that trained the generator (each task knows its own settings).
    """

    def __init__(self, classifier_path: str, real_images: np.ndarray, collapse_ratio: float = 0.5, seed: int = 0,
                 collapse_advice: str = "Train longer or at a lower learning rate"):
        if not Path(classifier_path).exists():
            raise FileNotFoundError(f"feature classifier {classifier_path!r} does not exist: train it with "
                                    f"`python -m kd_tf train-classifier` or set eval.classifier")
        classifier = load_model(classifier_path)
        self.features_model = feature_extractor(classifier)
        self._features = tf.function(lambda x: self.features_model(x, training=False))
        self.logits = tf.function(lambda x: classifier(x, training=False))     # [0, 1] images -> class logits
        self.real = self.features(as_unit(real_images))
        self.real_recognized = self.recognized(as_unit(real_images))     # the floor of `recognized`
        self.real_diversity = diversity(self.real, seed=seed)
        self.collapse_ratio, self.seed, self.collapse_advice = collapse_ratio, seed, collapse_advice

    def features(self, images01: np.ndarray, batch: int = 500) -> np.ndarray:
        return np.concatenate([self._features(tf.constant(images01[i:i + batch], tf.float32)).numpy()
                               for i in range(0, len(images01), batch)])

    def recognized(self, images01: np.ndarray, confidence: float = RECOGNIZED_CONFIDENCE, batch: int = 500) -> float:
        """The share of images the classifier assigns a class with at least `confidence` (softmax)."""
        top = np.concatenate([tf.reduce_max(tf.nn.softmax(self.logits(tf.constant(images01[i:i + batch],
                                                                                   tf.float32))), -1).numpy()
                              for i in range(0, len(images01), batch)])
        return float(np.mean(top >= confidence))

    def __call__(self, generate, count: int = 10000, latent_dim: int | None = None, latents=None,
                 name: str = "generator") -> dict:
        """`generate`: z batch -> images in [-1, 1]; scored on `latents` (or `count` N(0, 1) draws)."""
        if latents is None:
            latents = np.random.default_rng(self.seed).standard_normal((count, latent_dim)).astype(np.float32)
        images = np.concatenate([np.asarray(generate(latents[i:i + 500])) for i in range(0, len(latents), 500)])
        return self.score_images(images, name)

    def score_images(self, images: np.ndarray, name: str = "images") -> dict:
        """The scores of images in [-1, 1] (a generator's samples, or real digits: the floor)."""
        fake = self.features(np.clip((images + 1.0) / 2.0, 0.0, 1.0))
        kid, kid_std = kernel_inception_distance(self.real, fake, seed=self.seed)
        scores = {"fid": frechet_distance(self.real, fake), "kid": kid, "kid_std": kid_std,
                  **precision_recall_coverage(self.real[:PR_SAMPLES], fake[:PR_SAMPLES]),
                  "diversity_ratio": diversity(fake, seed=self.seed) / self.real_diversity, "samples": len(images),
                  "recognized": self.recognized(np.clip((images + 1.0) / 2.0, 0.0, 1.0)),
                  "recognized_real": self.real_recognized}
        if scores["diversity_ratio"] < self.collapse_ratio:
            log.warning("mode collapse suspected for %s: its samples are %.2fx as diverse as real digits "
                        "(mean pairwise feature distance; warning below %.2fx). %s", name, scores["diversity_ratio"],
                        self.collapse_ratio, self.collapse_advice)
        return scores


def ms_per_64(generate, latent_dim: int, repeats: int = 20) -> float:
    """Median milliseconds for one batch of 64 images, after 3 warm-up batches."""
    z = np.random.default_rng(0).standard_normal((64, latent_dim)).astype(np.float32)
    for _ in range(3):
        np.asarray(generate(z))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.asarray(generate(z))
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def keras_generate(model: keras.Model):
    """z (numpy) -> images (numpy), one traced function for any batch size."""
    serve = tf.function(lambda z: model(z, training=False),
                        input_signature=[tf.TensorSpec((None, latent_dim_of(model)), tf.float32)])
    return lambda z: serve(tf.constant(z, tf.float32)).numpy()


GENERATOR_INT8_MODES = ("int8", "dynamic")


def export_generator(generator: keras.Model, out_dir, calibration_batches: int = 16, seed: int = 0,
                     mode: str = "int8") -> Path:
    """The generator's SavedModel (input "latent") and int8 TFLite; float32 input and output, as
    every kd_tf TFLite model.

    mode "int8": full integer, activations calibrated on N(0, 1) latents; "dynamic": int8 weights,
    activations quantized per batch at run time, the latent kept float. A class-conditional sampler
    reads its class from the latent (kd_tf.class_latents): the full-integer file rounds the latent
    first (steps of ~0.04), so noise whose two largest class entries nearly tie draws another digit
    (3 % of N(0, 1) latents for the conditional diffusion student); the dynamic file reads it exactly.
    """
    from kd_tf import export

    if mode not in GENERATOR_INT8_MODES:
        raise InputError(f"int8 mode {mode!r}; accepted: {', '.join(GENERATOR_INT8_MODES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = export.export_saved_model(generator, out_dir / "savedmodel")
    calibration = export.latent_calibration(latent_dim_of(generator), calibration_batches, seed=seed)
    flatbuffer = export.to_tflite(saved, mode, calibration if mode == "int8" else None)
    path = out_dir / ("student_generator_int8.tflite" if mode == "int8" else "student_generator_int8_dynamic.tflite")
    return write_bytes_atomically(path, flatbuffer)


def tflite_generate(path, threads: int = 2):
    from kd_tf.export import LiteRTModel

    runner = LiteRTModel(path, num_threads=threads)
    return runner, (lambda z: runner(np.asarray(z, np.float32)))


def score_tflite(path, scorer: Scorer, samples: int) -> dict:
    """A .tflite generator's row: its size, ms per 64 images and the scores of `samples` images."""
    runner, generate = tflite_generate(path)
    latent = runner.input_signature[-1]
    row = {"params": None, "macs": None, "bytes": Path(path).stat().st_size, "ms_per_64": ms_per_64(generate, latent)}
    row.update(scorer(generate, samples, latent, name=str(path)))
    return row


def load_generator(path: str, steps: int | None = None, sampler=None):
    """(latent_dim, z -> images in [-1, 1]) for a .keras/.h5/SavedModel generator or a .tflite one,
    or a diffusion network sampled with `steps` DDIM steps by `sampler(network, steps)` (the
    generator kd_tf.diffusion.jobs.as_generator makes; kd_tf.cli passes it)."""
    if str(path).endswith(".tflite"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"model {path!r} does not exist")
        runner, generate = tflite_generate(path)
        signature = runner.input_signature
        if len(signature) != 2:
            raise InputError(f"{path!r} takes inputs of shape {signature}; expected a generator taking (batch, latent_dim)")
        return signature[-1], generate
    model = load_keras_generator(path, steps, sampler)
    return latent_dim_of(model), keras_generate(model)


def load_keras_generator(path: str, steps: int | None = None, sampler=None) -> keras.Model:
    """A .keras/.h5/SavedModel generator, or a diffusion network ([noisy image, noise variance,
    and a class index if conditional]) wrapped by `sampler(network, steps)`."""
    model = load_model(path)
    shapes = model.input_shape
    if isinstance(shapes, list) and len(shapes) in (2, 3) and tuple(shapes[1]) == (None, 1, 1, 1):
        if steps is None or sampler is None:
            raise InputError(f"{path!r} is a diffusion network: give --steps N (its sampler's DDIM steps)")
        model = sampler(model, steps)
    return model


def generate(model: str, num: int, seed: int, out: str, columns: int | None = None, steps: int | None = None,
             sampler=None, latents=None, extra: dict | None = None) -> dict:
    """`python -m kd_tf generate`: `num` digits from latents drawn with `seed`; a grid PNG when `out`
    ends in .png, else one PNG per image in the folder `out`. The same seed gives the same images.
    `latents`: (num, latent_dim, seed) -> z instead of N(0, 1) draws (e.g. a class-conditional
    generator's digit, kd_tf.conditional_gan); `extra`: what the report should say about them."""
    if num < 1:
        raise InputError(f"--num {num} is not accepted; expected an int >= 1")
    latent, run = load_generator(model, steps, sampler)
    started = time.time()
    z = (latents(num, latent, seed) if latents is not None
         else np.random.default_rng(seed).standard_normal((num, latent)).astype(np.float32))
    images = np.concatenate([np.asarray(run(z[i:i + 256])) for i in range(0, num, 256)])
    seconds = time.time() - started
    out_path = Path(out)
    if out_path.suffix.lower() == ".png":
        writable_folder(out_path.parent if str(out_path.parent) else ".")
        write_image(out_path, digit_grid(images, columns or int(np.ceil(np.sqrt(num)))))
        written = [str(out_path)]
        report_path = out_path.with_suffix(".json")
    else:
        writable_folder(out_path)
        written = []
        for index, image in enumerate(images):
            target = out_path / f"{index:05d}.png"
            write_image(target, np.clip((image[..., 0] + 1.0) / 2.0, 0.0, 1.0))
            written.append(str(target))
        report_path = out_path / "generate_report.json"
    report = {"job": "generate", "model": model, "num": num, "seed": seed, "latent_dim": latent, "out": out,
              "written": len(written), "seconds": seconds, **(extra or {})}
    report["table"] = render_table(["model", "images", "seed", "written to", "seconds"],
                                   [[model, str(num), str(seed), out, f"{seconds:.2f}"]])
    write_text_atomically(report_path, json.dumps(report, indent=2))
    report["report_path"] = str(report_path)
    return report


def generator_parity(float_generator, int8_generator, latent_dim: int, samples: int = 256, seed: int = 0,
                     batch_size: int = 64) -> dict:
    """Float vs int8 generator on fixed N(0, 1) latents: both outputs in [-1, 1] mapped to 8-bit
    images; per sample the PSNR of int8 against float (the float image as reference), and the
    mean intensity shift int8 - float in 1/255 (the one-channel analogue of a colour shift)."""
    z = np.random.default_rng(seed).standard_normal((samples, latent_dim)).astype(np.float32)
    psnrs, shifts, errors = [], [], []
    for start in range(0, samples, batch_size):
        batch = z[start:start + batch_size]
        a = to_8bit((np.asarray(float_generator(batch), np.float32) + 1.0) / 2.0)
        b = to_8bit((np.asarray(int8_generator(batch), np.float32) + 1.0) / 2.0)
        mse = ((a - b) ** 2).reshape(len(batch), -1).mean(axis=1)
        psnrs.extend(10 * np.log10(1.0 / np.maximum(mse, 1e-12)))
        shifts.extend((b - a).reshape(len(batch), -1).mean(axis=1) * 255.0)
        errors.extend(np.abs(b - a).reshape(len(batch), -1).mean(axis=1) * 255.0)
    psnrs, shifts = np.asarray(psnrs), np.asarray(shifts)
    worst = int(np.argmin(psnrs))
    return {"samples": samples, "latent_seed": seed,
            "psnr_int8_vs_float_mean_db": float(np.mean(np.minimum(psnrs, 100.0))),
            "psnr_int8_vs_float_min_db": float(psnrs[worst]), "worst_sample": worst,
            "mean_intensity_shift_255": float(np.mean(shifts)),
            "max_abs_intensity_shift_255": float(np.max(np.abs(shifts))),
            "mean_abs_pixel_error_255": float(np.mean(errors))}
