"""`distill --data DIR --unlabeled`: distillation on a folder of photos that are degraded already
(real camera noise) and have no clean versions.

The teacher labels them: the student learns the teacher's outputs alone (the Distiller drops its
own loss on unlabeled batches), offline from a cache of the teacher's outputs on patches of the
training photos. With no clean truth, the report measures agreement: PSNR and SSIM of the
student's output against the teacher's, on the held-out photos (split and saved like any run's).
A non-blind teacher (FFDNet) is told `data.val_sigma` as the photos' noise level.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.complexity import count_macs
from kd_tf.images import load_split, patch_dataset, with_noise_level
from kd_tf.degradations import AlreadyDegraded
from kd_tf.distiller import Distiller
from kd_tf.tables import render_table
from kd_tf.inference import run_on_image
from kd_tf.metrics import image_scores
from kd_tf.denoise.jobs import build_net, float32_net
from kd_tf.model_io import load_float_teacher, save_model, takes_noise_level
from kd_tf.runs import (RunPaths, cosine_optimizer, epochs_for, record_config, record_split, resumed_batches,
                        standard_callbacks)
from kd_tf.teacher_cache import cache_teacher_outputs

log = logging.getLogger(__name__)


def _teacher_view(teacher, sigma):
    """What the teacher takes for a batch of photos: the photos, or the photos and `sigma`."""
    if takes_noise_level(teacher):
        return lambda x: with_noise_level(x, sigma)
    return lambda x: x


def agreement(teacher, student, photos: dict, sigma: float) -> dict:
    """{name: {"psnr", "ssim"}} of the student's output against the teacher's, per photo, and the means."""
    rows = {}
    for name, image in photos.items():
        taught = np.clip(run_on_image(teacher, image, sigma=sigma if takes_noise_level(teacher) else None), 0, 1)
        learned = np.clip(run_on_image(student, image), 0, 1)
        psnr, ssim = image_scores(taught, learned)
        rows[name] = {"psnr": psnr, "ssim": ssim}
    means = {key: float(np.mean([row[key] for row in rows.values()])) for key in ("psnr", "ssim")}
    return {"images": rows, "mean": means}


def distill_unlabeled(config: denoise_config.DistillJobConfig) -> dict:
    """Trains config.student on the teacher's outputs for a folder of degraded photos."""
    config.validate()
    if not config.data.data_dir:
        raise cfg.ConfigError("data.unlabeled needs your photos: --data DIR (a folder of degraded images)")
    keras.utils.set_random_seed(config.train.seed)
    data = config.data
    split = load_split(data.data_dir, data.heldout_fraction, data.split_seed, min_size=data.patch_size)
    paths = RunPaths(config.output, "distill-unlabeled")
    record_config(paths, cfg.to_dict(config), cfg.to_dict(type(config)()))
    record_split(paths, {"train": split.train, "heldout": split.heldout})
    teacher = load_float_teacher(config.distill.teacher)
    view = _teacher_view(teacher, data.val_sigma)
    photos = patch_dataset(split.train, data.patch_size, data.batch_size, seed=config.train.seed,
                           degradation=AlreadyDegraded()).map(lambda degraded, _: view(degraded))
    student = build_net(config.student, "student", config.train.mixed_precision)
    epochs, per_epoch = epochs_for(config.train)
    done = resumed_batches(paths.backup / "distill", per_epoch)
    cache = cache_teacher_outputs(teacher, photos, config.distill.cache_batches or min(300, config.train.steps),
                                  progress=log.info)
    # validation: held-out crops against what the teacher makes of them (val_psnr = agreement)
    crops = np.stack([image[:data.val_crop, :data.val_crop] for image in split.heldout.values()
                      if min(image.shape[:2]) >= data.val_crop])
    if not len(crops):
        raise cfg.ConfigError(f"no held-out photo is at least data.val_crop={data.val_crop} px; lower it")
    val_x = view(crops)
    taught = np.asarray(teacher(val_x["teacher_inputs"] if isinstance(val_x, dict) else val_x, training=False))
    distiller = Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(optimizer=cosine_optimizer(config.train))
    log.info("unlabeled distillation: %d training photos, %d held out, %d steps", len(split.train),
             len(split.heldout), config.train.steps)
    started = time.time()
    history = distiller.fit(cache.dataset(data.batch_size, seed=config.train.seed, skip_batches=done),
                            epochs=epochs, steps_per_epoch=per_epoch, validation_data=(val_x, taught), verbose=0,
                            shuffle=False,
                            callbacks=standard_callbacks(paths, val_x, taught, config.output, "distill",
                                                         config.train.steps))
    seconds = time.time() - started
    trained = float32_net(student, config.student)
    student_path = save_model(trained, config.save_to or paths.root / "student.keras")
    scores = agreement(teacher, trained, split.heldout, data.val_sigma)
    size = 512
    report = {"job": "distill --unlabeled", "run": paths.name, "teacher_path": config.distill.teacher,
              "student_path": str(student_path), "train_photos": sorted(split.train),
              "heldout": sorted(split.heldout), "agreement": scores, "train_seconds": seconds,
              "teacher_cache_seconds": cache.seconds, "history": history.history,
              "macs_512": {"teacher": count_macs(teacher, _shapes(teacher, size)),
                           "student": count_macs(trained, (size, size, 3))},
              "config": cfg.to_dict(config)}
    report["table"] = render_table(["held-out photo", "student vs teacher PSNR", "SSIM"], [
        [name, f"{row['psnr']:.2f}", f"{row['ssim']:.4f}"] for name, row in scores["images"].items()] + [
        ["mean", f"{scores['mean']['psnr']:.2f}", f"{scores['mean']['ssim']:.4f}"]])
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def _shapes(model, size):
    return [(size, size, 3), (1,)] if takes_noise_level(model) else (size, size, 3)
