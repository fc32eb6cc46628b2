"""The super-resolution task's jobs: train the teacher, distil a smaller upscaler, score both
against bicubic upscaling on the held-out photos (both sets when the photo corpus is there).

Protocol: a held-out photo, cropped to a multiple of the factor, is the truth; its input is the
antialiased bicubic downscale rounded to 8 bits (what a low-resolution file holds); every output
(bicubic upscaling too) is rounded to 8 bits before PSNR/SSIM against the 8-bit truth.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

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
from kd_tf.errors import InputError
from kd_tf.model_io import load_float_teacher, load_model, save_model
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
                     shuffle=False,                # the dataset shuffles itself; Keras warns otherwise
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
    if config.init_from:
        start = load_model(config.init_from)
        if [w.shape for w in start.weights] != [w.shape for w in model.weights]:
            raise InputError(f"init_from={config.init_from!r} is not an upscaler of net.width={config.net.width}, "
                             f"net.blocks={config.net.blocks}, factor={config.factor}")
        model.set_weights(start.get_weights())
        log.info("continuing from the weights of %s", config.init_from)
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
        exported, ready = export_int8(student, train, config, paths.root / "export")
        from kd_tf.inference import load_runner, run_rgb

        runner = load_runner(exported, num_threads=2)
        models["student int8 (TFLite)"] = lambda small: run_rgb(runner, small)
    report = _report(models, sets, config.factor, "distill --task sr", paths, config)
    report.update(train_seconds=seconds, history=history, student_path=str(path), teacher_path=config.teacher,
                  int8_tflite=str(exported) if exported else None)
    if exported:
        add_int8_checks(report, student, exported, ready, config, split)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def _protocol_input(factor: int):
    """The evaluation protocol's model input for a truth image: its antialiased bicubic downscale, 8-bit."""
    return lambda clean, index: to_8bit(Downscale(factor).apply(to_8bit(clean)).numpy())


def calibration_inputs(train_images: dict, patch_size: int, batch_size: int, factor: int, batches: int,
                       gamut_share: float = 0.25, seed: int = 1) -> list[np.ndarray]:
    """Low-resolution calibration batches for the int8 converter: downscaled training patches, and
    a `gamut_share` of each batch downscaled synthetic colour-gamut images (kd_tf.int8_parity:
    saturated primaries, gradients, near-black and near-white, which photos seldom hold), so no
    colour's activations fall outside the calibrated ranges (issue 17)."""
    from kd_tf.int8_parity import gamut_images

    stream = patch_dataset(train_images, patch_size, batch_size, seed=seed, degradation=Downscale(factor))
    gamut_count = int(round(batch_size * gamut_share))
    gamut = gamut_images(gamut_count * batches, patch_size, seed=seed)
    out = []
    for index, (low, _) in enumerate(stream.take(batches)):
        low = low.numpy()
        if gamut_count:
            extra = to_8bit(Downscale(factor).apply(np.stack(gamut[index * gamut_count:(index + 1) * gamut_count])).numpy())
            low = np.concatenate([low[:batch_size - gamut_count], extra])
        out.append(low)
    return out


def int8_parity(float_model, tflite_path, config, split) -> dict:
    """kd_tf.int8_parity on the synthetic colour set and both held-out sets, under the SR protocol."""
    from kd_tf.export import LiteRTModel
    from kd_tf.int8_parity import parity_report, parity_sets

    sets, skipped = parity_sets(split.heldout, config.data.corpus_dir())
    sets["heldout1"] = sets.pop("heldout")
    return parity_report(lambda batch: float_model(batch, training=False), LiteRTModel(tflite_path, num_threads=2),
                         sets, skipped, stride=config.factor, make_input=_protocol_input(config.factor),
                         protocol=f"truth cropped to a multiple of {config.factor}, its antialiased bicubic "
                                  f"downscale rounded to 8 bits as the input, outputs clipped and rounded to 8 bits")


def export_int8(student, train_images: dict, config, out_dir, name: str = "student_sr_int8.tflite"
                ) -> tuple[str, keras.Model]:
    """The student's full-integer TFLite, calibrated on low-resolution training patches and gamut
    images, and the fake-quantized copy it was converted from (what int8_sensitivity takes)."""
    from kd_tf import export
    from kd_tf.atomic import write_bytes_atomically

    calibration = calibration_inputs(train_images, config.data.patch_size, config.data.batch_size, config.factor,
                                     config.calibration_batches, config.calibration_gamut_share,
                                     seed=config.train.seed + 1 if hasattr(config, "train") else 1)
    ready = int8_ready_upscaler(student, calibration)
    flatbuffer = export.to_tflite(export.export_saved_model(ready, out_dir / "savedmodel_int8_ready"), "int8",
                                  calibration)
    return str(write_bytes_atomically(out_dir / name, flatbuffer)), ready


def add_int8_checks(report: dict, float_model, tflite_path, ready, config, split) -> None:
    """Adds the int8 parity (every image of the colour set and both held-out sets) and the
    per-tensor sensitivity to a distill or export report, and both tables to its text."""
    from kd_tf.int8_parity import format_parity
    from kd_tf.int8_sensitivity import format_sensitivity

    report["int8_parity"] = int8_parity(float_model, tflite_path, config, split)
    report["int8_sensitivity"] = int8_sensitivity(float_model, ready, config, split)
    report["table"] += ("\n\nint8 against float:\n" + format_parity(report["int8_parity"]) +
                        "\n\nwhich tensor costs the int8 model what (kd_tf.int8_sensitivity):\n" +
                        format_sensitivity(report["int8_sensitivity"]))


def int8_ready_upscaler(model, calibration) -> keras.Model:
    """The upscaler prepared for full-integer conversion (kd_tf.export.int8_ready: percentile ranges
    of every tensor, the input and the output fixed to [0, 1]). The converter's own min/max ranges
    put the output's 256 levels over the overshoot of the residual sum (about -0.2..1.2): steps of
    1/180 on every pixel, a loss of 1.6 dB on the held-out photos (session 10). The bilinear base of
    an image in [0, 1] lies in [0, 1] too: its range is fixed to the input's, so its 8-bit grid is the
    input's and a flat area stays exact (calibrated percentiles shift the grid by a fraction of a level)."""
    from kd_tf import export
    from kd_tf.fake_quant import quant_name
    from kd_tf.layers import BilinearUpscale

    ready = export.int8_ready(model, calibration, input_range=(0.0, 1.0), output_range=(0.0, 1.0))
    for layer in model.layers:
        if isinstance(layer, BilinearUpscale):
            ready.get_layer(quant_name(layer.name)).set_range(0.0, 1.0)
    return ready


def int8_sensitivity(float_model, ready, config, split) -> dict:
    """kd_tf.int8_sensitivity on the int8 parity's images (colour set, both held-out sets) under the
    SR protocol: which tensor's range or rounding costs the int8 upscaler what."""
    from kd_tf.int8_parity import crop_to_multiple, parity_sets
    from kd_tf.int8_sensitivity import quantization_sensitivity

    sets, _ = parity_sets(split.heldout, config.data.corpus_dir())
    sets["heldout1"] = sets.pop("heldout")
    make_input = _protocol_input(config.factor)
    inputs = {}
    for set_name, images in sets.items():
        for index, name in enumerate(sorted(images)):
            truth = crop_to_multiple(images[name], config.factor)
            inputs[f"{set_name}/{name}"] = np.asarray(make_input(truth, index), np.float32)[None]
    return quantization_sensitivity(float_model, ready, inputs, output_transform=to_8bit)


def evaluate(config, teacher: str | None = None, students: dict | None = None) -> dict:
    """`evaluate --task sr`: bicubic, the teacher and each student upscaler (.keras, SavedModel or
    .tflite) on both held-out sets, the 8-bit protocol of this module."""
    from kd_tf.inference import load_runner, run_rgb

    config.validate()
    split = load_split(config.data.data_dir, config.data.heldout_fraction, config.data.split_seed)
    paths = RunPaths(config.output, "sr-evaluate")
    sets = _heldout_sets(config.data, split)
    models = {"teacher": load_model(teacher or config.teacher)}
    for name, path in (students or {}).items():
        if str(path).endswith(".tflite"):
            runner = load_runner(path, num_threads=2)
            models[name] = (lambda r: lambda small: run_rgb(r, small))(runner)
        else:
            models[name] = load_model(path)
    report = _report(models, sets, config.factor, "evaluate --task sr", paths, config)
    report.update(teacher_path=teacher or config.teacher, students={k: str(v) for k, v in (students or {}).items()})
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def export(config) -> dict:
    """`export --task sr`: the upscaler to each format (keras, savedmodel, float32, dynamic and int8
    TFLite), each scored like the float model on both held-out sets, the int8 ones also against
    float image by image (the colour set too: kd_tf.int8_parity), ops and size. Dynamic-range int8
    quantizes each activation over the range it has in that inference, so a smooth photo gets fine
    steps where fixed full-integer ranges round it coarsely (the model card compares the two)."""
    from kd_tf import export as exporting
    from kd_tf.atomic import write_bytes_atomically
    from kd_tf.inference import load_runner, run_rgb

    config.validate()
    model = load_model(config.model)
    split, train = _images(config.data)
    paths = RunPaths(config.output, "sr-export")
    out = Path(config.out_dir) if config.out_dir else paths.root / "export"
    out.mkdir(parents=True, exist_ok=True)
    sets = _heldout_sets(config.data, split)
    saved = exporting.export_saved_model(model, out / "savedmodel") if set(config.formats) - {"keras"} else None
    models, files, int8 = {"float (Keras)": model}, {}, None
    for fmt in config.formats:
        if fmt == "keras":
            files[fmt] = str(save_model(model, out / "upscaler.keras"))
            continue
        if fmt == "savedmodel":
            files[fmt] = str(saved)
            continue
        if fmt == "int8":
            path, ready = export_int8(model, train, config, out, name="upscaler_int8.tflite")
            path, int8 = Path(path), (path, ready)
        else:
            path = write_bytes_atomically(out / f"upscaler_{fmt}.tflite", exporting.to_tflite(saved, fmt))
        exporting.check_builtin_only(path.read_bytes())
        files[fmt] = str(path)
        models[f"{fmt} TFLite"] = (lambda r: lambda small: run_rgb(r, small))(load_runner(path, num_threads=2))
    report = _report(models, sets, config.factor, "export --task sr", paths, config)
    report.update(model=config.model, out_dir=str(out), files=files,
                  bytes={fmt: (Path(f).stat().st_size if Path(f).is_file() else
                               sum(p.stat().st_size for p in Path(f).rglob("*") if p.is_file()))
                         for fmt, f in files.items()},
                  ops={fmt: exporting.op_names(Path(f).read_bytes()) for fmt, f in files.items() if f.endswith(".tflite")})
    if "dynamic" in files:        # int8 weights, int8 activations over each inference's own range
        from kd_tf.int8_parity import format_parity

        report["dynamic_int8_parity"] = int8_parity(model, files["dynamic"], config, split)
        report["table"] += ("\n\ndynamic-range int8 (ranges per inference) against float:\n" +
                            format_parity(report["dynamic_int8_parity"]))
    if int8 is not None:
        add_int8_checks(report, model, int8[0], int8[1], config, split)
    report["report_path"] = str(paths.write_json("export_report.json", report))
    return report
