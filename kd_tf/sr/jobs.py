"""The super-resolution task's jobs: train the teacher, distil a smaller upscaler, score both
against bicubic upscaling on the held-out photos (both sets when the photo corpus is there).

Protocol: a held-out photo, cropped to a multiple of the factor, is the truth; its input is the
antialiased bicubic downscale rounded to 8 bits (what a low-resolution file holds); every output
(bicubic upscaling too) is rounded to 8 bits before PSNR/SSIM against the 8-bit truth.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf.complexity import count_macs, count_params
from kd_tf.images import fixed_crops, load_split, most_textured_window, patch_dataset, to_8bit
from kd_tf.degradations import Downscale
from kd_tf.distiller import Distiller
from kd_tf.tables import render_table
from kd_tf.inference import run_on_image
from kd_tf.metrics import image_scores
from kd_tf.photo_corpus import HELDOUT2_CROP, heldout2_photos
from kd_tf.model_io import load_float_teacher, save_model
from kd_tf.runs import (RunPaths, cosine_optimizer, epochs_for, record_config, record_split, resumed_batches,
                        standard_callbacks)
from kd_tf.sr.nets import build_upscaler
from kd_tf.teacher_cache import cache_teacher_outputs

log = logging.getLogger(__name__)


def _images(config_data):
    """(split, training images): the split every image task uses (kd_tf.images.load_split: the
    embedded photos or a folder), plus the photo corpus's training photos with data.corpus."""
    split = load_split(config_data.data_dir, config_data.heldout_fraction, config_data.split_seed,
                       min_size=config_data.patch_size)
    train = dict(split.train)
    if config_data.corpus:
        from kd_tf.photo_corpus import load_corpus

        train.update({f"corpus/{k}": v for k, v in load_corpus(config_data.corpus_dir(), "train").items()})
    return split, train


def _validation(heldout: dict, crop: int, factor: int):
    """(low-resolution inputs, high-resolution truth) crops of the held-out photos."""
    _, clean = fixed_crops(heldout, crop, per_image=2, sigma=0.0)
    clean = clean[:, :clean.shape[1] // factor * factor, :clean.shape[2] // factor * factor]
    return to_8bit(Downscale(factor).apply(clean).numpy()), clean


def score(upscalers: dict, photos: dict, factor: int) -> dict:
    """{"methods": {name: {"psnr", "ssim", "images": {...}}}}: bicubic and each upscaler (a Keras
    model, or a callable from kd_tf.inference for TFLite) on every photo, 8-bit protocol."""
    rows = {name: {"images": {}} for name in ["bicubic", *upscalers]}
    for name, photo in photos.items():
        truth = to_8bit(photo[:photo.shape[0] // factor * factor, :photo.shape[1] // factor * factor])
        small = to_8bit(Downscale(factor).apply(truth).numpy())
        outputs = {"bicubic": tf.image.resize(small, truth.shape[:2], method="bicubic").numpy()}
        for model_name, model in upscalers.items():
            outputs[model_name] = model(small) if callable(model) and not isinstance(model, keras.Model) \
                else run_on_image(model, small)
        for method, output in outputs.items():
            psnr, ssim = image_scores(truth, to_8bit(output))
            rows[method]["images"][name] = {"psnr": psnr, "ssim": ssim}
    for row in rows.values():
        row["psnr"] = float(np.mean([r["psnr"] for r in row["images"].values()]))
        row["ssim"] = float(np.mean([r["ssim"] for r in row["images"].values()]))
    return {"methods": rows}


def _heldout_sets(config_data, split) -> dict:
    sets = {"heldout1": split.heldout}
    second = heldout2_photos(config_data.corpus_dir())
    if second:
        sets["heldout2"] = {k: most_textured_window(v, HELDOUT2_CROP) for k, v in second.items()}
    return sets


def _report(models: dict, sets: dict, factor: int, job: str, paths: RunPaths, config) -> dict:
    report = {"job": job, "run": paths.name, "factor": factor, "config": cfg.to_dict(config),
              "degradation": f"tf.image.resize(clean, size // {factor}, method='bicubic', antialias=True), 8-bit"}
    tables = []
    for set_name, photos in sets.items():
        report[set_name] = score(models, photos, factor)
        methods = report[set_name]["methods"]
        tables.append(f"{set_name} ({len(photos)} photos):\n" + render_table(
            ["method", "PSNR", "SSIM", "vs bicubic"],
            [[name, f"{row['psnr']:.3f}", f"{row['ssim']:.4f}", f"{row['psnr'] - methods['bicubic']['psnr']:+.3f}"]
             for name, row in methods.items()]))
    report["models"] = {name: {"params": count_params(model), "macs_512": count_macs(model, (512 // factor,
                                                                                            512 // factor, 3))}
                        for name, model in models.items() if isinstance(model, keras.Model)}
    report["table"] = "\n\n".join(tables)
    return report


def _fit(model, dataset, config, paths, validation, tag):
    epochs, per_epoch = epochs_for(config.train)
    low, high = validation
    return model.fit(dataset, epochs=epochs, steps_per_epoch=per_epoch, validation_data=(low, high), verbose=0,
                     callbacks=standard_callbacks(paths, low, high, config.output, tag, config.train.steps)).history


def _start(config, verb: str):
    """(split, training images, run paths, held-out sets) of a run, its config and split recorded
    (a rerun resumes only with the same settings and images, kd_tf.runs)."""
    config.validate()
    keras.utils.set_random_seed(config.train.seed)
    split, train = _images(config.data)
    paths = RunPaths(config.output, verb)
    record_config(paths, cfg.to_dict(config), cfg.to_dict(type(config)()))
    sets = _heldout_sets(config.data, split)
    record_split(paths, {"train": train, **sets})
    return split, train, paths, sets


def train_teacher(config) -> dict:
    """Trains the teacher upscaler on (bicubic-downscaled, original) patches."""
    split, train, paths, sets = _start(config, "sr-teacher")
    model = build_upscaler(config.net.width, config.net.blocks, config.factor, name="teacher_sr")
    model.compile(optimizer=cosine_optimizer(config.train), loss="mae" if config.loss == "l1" else "mse")
    per_epoch = epochs_for(config.train)[1]
    stream = patch_dataset(train, config.data.patch_size, config.data.batch_size, seed=config.train.seed,
                           degradation=Downscale(config.factor),
                           skip_batches=resumed_batches(paths.backup / "teacher", per_epoch))
    started = time.time()
    history = _fit(model, stream, config, paths, _validation(split.heldout, config.data.val_crop, config.factor),
                   "teacher")
    seconds = time.time() - started
    path = save_model(model, config.save_to or paths.root / "teacher_sr.keras")
    report = _report({"teacher": model}, sets, config.factor, "train-teacher --task sr", paths, config)
    report.update(train_seconds=seconds, history=history, saved_to=str(path))
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def distill(config) -> dict:
    """Distils the teacher upscaler into a smaller one (offline teacher cache), exports its int8."""
    split, train, paths, sets = _start(config, "sr-distill")
    teacher = load_float_teacher(config.teacher)
    student = build_upscaler(config.student.width, config.student.blocks, config.factor, name="student_sr")
    distiller = Distiller(teacher, student, student_loss_weight=config.student_loss_weight, output_loss="l1",
                          probe_size=config.data.patch_size // config.factor)
    distiller.compile(optimizer=cosine_optimizer(config.train), loss="mae")
    per_epoch = epochs_for(config.train)[1]
    done = resumed_batches(paths.backup / "distill", per_epoch)
    stream = lambda skip=0: patch_dataset(train, config.data.patch_size, config.data.batch_size,  # noqa: E731
                                          seed=config.train.seed, degradation=Downscale(config.factor),
                                          skip_batches=skip)
    started = time.time()
    if config.cache_batches:
        cache = cache_teacher_outputs(teacher, stream(), config.cache_batches, progress=log.info)
        dataset = cache.dataset(config.data.batch_size, seed=config.train.seed, skip_batches=done)
    else:
        dataset = stream(done)
    history = _fit(distiller, dataset, config, paths,
                   _validation(split.heldout, config.data.val_crop, config.factor), "distill")
    seconds = time.time() - started
    path = save_model(student, config.save_to or paths.root / "student_sr.keras")
    models = {"teacher": teacher, "student (distilled)": student}
    exported = None
    if config.export_int8:
        exported = export_int8(student, train, config, paths.root / "export")
        from kd_tf.inference import load_runner, run_rgb

        runner = load_runner(exported, num_threads=2)
        models["student int8 (TFLite)"] = lambda small: run_rgb(runner, small)
    report = _report(models, sets, config.factor, "distill --task sr", paths, config)
    report.update(train_seconds=seconds, history=history, student_path=str(path), teacher_path=config.teacher,
                  int8_tflite=str(exported) if exported else None)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def export_int8(student, train_images: dict, config, out_dir) -> str:
    """The student's full-integer TFLite, calibrated on low-resolution training patches."""
    from kd_tf import export
    from kd_tf.atomic import write_bytes_atomically

    stream = patch_dataset(train_images, config.data.patch_size, config.data.batch_size, seed=config.train.seed + 1,
                           degradation=Downscale(config.factor))
    calibration = [low.numpy() for low, _ in stream.take(config.calibration_batches)]
    saved = export.export_saved_model(student, out_dir / "savedmodel")
    flatbuffer = export.to_tflite(saved, "int8", calibration)
    return str(write_bytes_atomically(out_dir / "student_sr_int8.tflite", flatbuffer))
