"""`python -m kd_tf export`: the student in every deployable format, each measured against the
Keras float student on the held-out photos (PSNR/SSIM, size, op count, LiteRT latency).

The main job calls it on the student it distilled; it reads only saved models and photos.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kd_tf.atomic import write_bytes_atomically
from kd_tf.precision import bfloat16_is_fast
from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.images import load_split, patch_dataset
from kd_tf.distiller import Distiller
from kd_tf.tables import render_table
from kd_tf.model_io import load_model, load_teacher, save_model, takes_noise_level
from kd_tf.denoise.nets import unet_equalizer
from kd_tf.runs import RunPaths
from kd_tf.teacher_cache import cache_teacher_outputs

log = logging.getLogger(__name__)


def calibration_batches(images: dict, batches: int, seed: int = 7, data: cfg.DataConfig | None = None,
                        gamut: bool = True) -> list:
    """Full-integer calibration data as a user's image reaches the model (8-bit: noise as in
    training, then rounded and clipped): real training crops and, with `gamut`, as many batches
    of synthetic colour-gamut images (kd_tf.int8_parity.gamut_images: saturated primaries and
    secondaries, gradients, hue wheels, near-black/white), interleaved. Photos alone leave
    saturated colours outside the calibrated ranges (issue 17: -6.5 dB on flat yellow)."""
    from kd_tf.images import to_8bit
    from kd_tf.int8_parity import gamut_images, noisy_8bit_batches

    data = data or cfg.DataConfig()
    stream = patch_dataset(images, data.patch_size, 8, (data.sigma_min, data.sigma_max), seed=seed)
    photos = [to_8bit(noisy.numpy()) if gamut else noisy.numpy() for noisy, _ in stream.take(batches)]
    if not gamut:
        return photos
    colours = noisy_8bit_batches(gamut_images(8 * batches, data.patch_size, seed=seed + 1), 8,
                                 (data.sigma_min, data.sigma_max), seed=seed + 2)
    return [batch for pair in zip(photos, colours) for batch in pair]


def dynamic_source(student: keras.Model, calibration: list, float_layers=()) -> keras.Model:
    """What the dynamic-range export rounds: a copy of `student` with its channel ranges
    equalized on the first half of the calibration batches (the same float function; U-Nets of
    kd_tf.denoise.nets, residual blocks too), then `float_layers` computed so that the file keeps
    them in float (kd_tf.float_layers; after the equalizer, which finds layers by name)."""
    from kd_tf.float_layers import keep_float

    copy = keras.models.clone_model(student)
    copy.set_weights(student.get_weights())
    equalize = unet_equalizer(student, blocks=True)
    if equalize is not None:
        equalize(copy, calibration[: max(1, len(calibration) // 2)])
    return keep_float(copy, float_layers) if float_layers else copy


def _directory_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _latency_ms(predict, size: int, repeats: int = 5) -> float:
    batch = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def quantization_aware_finetune(aware: keras.Model, config: denoise_config.ExportJobConfig,
                                images: dict, reference: keras.Model) -> keras.Model:
    """Fine-tunes the int8-ready copy with its calibrated ranges frozen, so that its weights learn
    to sit well on the int8 grid. config.qat_target "teacher": distils from the teacher on cached
    outputs as the student itself was trained (1,000 steps: from 0.117 to 0.070 dB lost on the
    session-8 student, see the model card); "float": fits `reference`, the float student, on
    8-bit photo crops and colour-gamut images (kd_tf.int8_tuning.tune_toward_reference)."""
    from kd_tf.fake_quant import freeze_ranges
    from kd_tf.int8_tuning import tune_toward_reference

    keras.utils.set_random_seed(config.eval_seed)
    if config.qat_target == "float":
        log.info("quantization-aware fine-tuning: %d steps towards the float student", config.qat_steps)
        losses = tune_toward_reference(reference, freeze_ranges(aware),
                                       qat_stream(images, config.data, config.eval_seed),
                                       config.qat_steps, config.qat_peak_learning_rate)
        window = min(100, len(losses))
        log.info("QAT weighted loss %.3g -> %.3g", np.mean(losses[:window]), np.mean(losses[-window:]))
        return aware
    teacher_path, why = qat_teacher(config)
    teacher = load_teacher(teacher_path, mixed_precision=bfloat16_is_fast())
    stream = qat_stream(images, config.data, config.eval_seed, non_blind=takes_noise_level(teacher))
    cache = cache_teacher_outputs(teacher, stream, min(config.qat_steps, 300))
    distiller = Distiller(teacher, freeze_ranges(aware), student_loss_weight=0.5)
    schedule = keras.optimizers.schedules.CosineDecay(config.qat_peak_learning_rate, config.qat_steps, alpha=0.01)
    distiller.compile(optimizer=keras.optimizers.Adam(schedule))
    log.info("quantization-aware fine-tuning: %d steps, teacher %s (%s)", config.qat_steps, teacher_path, why)
    distiller.fit(cache.dataset(config.data.batch_size, seed=config.eval_seed), epochs=1,
                  steps_per_epoch=config.qat_steps, verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    return aware


def qat_stream(images: dict, data: cfg.DataConfig, seed: int, non_blind: bool = False, gamut_share: float = 0.5):
    """What quantization-aware fine-tuning trains on: 8-bit noisy patches (as the int8 model will
    be fed) of the training photos and, in `gamut_share` of the batches, of synthetic colour-gamut
    images (kd_tf.int8_parity.gamut_images, seeded apart from the parity check's colour set), so
    that saturated colours are learnt on the int8 grid too. `non_blind`: the teacher gets each
    patch's sigma."""
    import tensorflow as tf

    from kd_tf.int8_parity import gamut_images

    def patches(source, offset):
        return patch_dataset(source, data.patch_size, data.batch_size, (data.sigma_min, data.sigma_max),
                             seed=seed + offset, noise_level_for_teacher=non_blind, noisy_8bit=True)

    colours = gamut_images(256, max(2 * data.patch_size, 128), seed=seed + 11)
    return tf.data.Dataset.sample_from_datasets([patches(images, 0), patches(colours, 1)],
                                                weights=[1 - gamut_share, gamut_share], seed=seed)


def run_teacher(model_path) -> str | None:
    """The teacher that distilled the model at `model_path`, from its run folder (None for a model
    from no run): the run's assistant when it had one (it taught the student), else
    training_config.json's distill.teacher."""
    folder = Path(model_path).parent
    record = folder / "training_config.json"
    if not record.is_file():
        return None
    if (folder / "assistant.keras").is_file():
        return str(folder / "assistant.keras")
    return (json.loads(record.read_text()).get("distill") or {}).get("teacher")


def qat_teacher(config: denoise_config.ExportJobConfig) -> tuple[str, str]:
    """(path, why) of the teacher QAT distills from: qat_teacher when set, else the teacher of the
    student's run, else the shipped teacher. A student is fine-tuned toward what it learned from."""
    if config.qat_teacher:
        return config.qat_teacher, "qat_teacher"
    from_run = run_teacher(config.model)
    if from_run:
        return from_run, f"the teacher of the student's run ({Path(config.model).parent / 'training_config.json'})"
    return denoise_config.DEFAULT_TEACHER, "the shipped teacher (the student comes from no run)"


def export_student(config: denoise_config.ExportJobConfig) -> dict:
    """Exports the student to every requested format and measures each one against the Keras
    float student: PSNR/SSIM on the held-out photos, size, op count, latency."""
    import tensorflow as tf

    from kd_tf import export
    from kd_tf.images import noisy_copy, to_8bit
    from kd_tf.inference import Runner, load_runner, run_rgb, stride_of
    from kd_tf.float_layers import check_float_layers, join_float_groups
    from kd_tf.int8_parity import format_parity, parity_report, parity_sets
    from kd_tf.int8_tuning import tune_dynamic_int8
    from kd_tf.metrics import image_scores

    config.validate()
    paths = RunPaths(config.output, "export")
    out = Path(config.out_dir) if config.out_dir else paths.root / "export"
    out.mkdir(parents=True, exist_ok=True)
    student = load_model(config.model)
    if "dynamic" in config.formats and config.dynamic_weight_rounding == "gptq":
        check_float_layers(student, config.dynamic_float_layers)           # before any work
    if "int8" in config.formats and config.int8_float_layers:
        known = [layer.name for layer in export.shuffle_upsampling(student).layers][1:]   # as int8_ready names them
        unknown = [name for name in config.int8_float_layers if name not in known]
        if unknown:
            raise cfg.ConfigError(f"int8_float_layers: {unknown} are not layers of {config.model}; accepted: {known}")
    split = load_split(config.data.data_dir, config.data.heldout_fraction, config.data.split_seed,
                       min_size=config.data.patch_size)          # calibration crops need whole patches
    names = sorted(split.heldout)
    pairs = [(split.heldout[n], to_8bit(noisy_copy(split.heldout[n], config.sigma, config.eval_seed + i)))
             for i, n in enumerate(names)]                   # the evaluation protocol: 8-bit in, 8-bit out
    # H and W padded to multiples of the student's own stride (16 for a 5-level U-Net), and of 8 as before
    stride = int(np.lcm(8, stride_of(student)))
    keras_runner = Runner(lambda batch: np.asarray(student(batch, training=False)), stride=stride)
    reference = [to_8bit(run_rgb(keras_runner, noisy)) for _, noisy in pairs]

    saved_dir = out / "savedmodel"
    if any(f != "keras" for f in config.formats):
        export.export_saved_model(student, saved_dir)
    calibration, rounding, tuning = None, None, None
    gptq_dynamic = "dynamic" in config.formats and config.dynamic_weight_rounding == "gptq"
    # float layers are rounded and tuned split in groups under the converter's size threshold (keep_float), then
    # joined again and written by ai-edge-quantizer, which keeps each of them float as one op (dynamic_range_int8)
    one_op_float = gptq_dynamic and bool(config.dynamic_float_layers)
    if {"int8", "int16x8"} & set(config.formats) or gptq_dynamic:
        calibration = calibration_batches(split.train, config.calibration_batches, data=config.data)

    rows, parity_inputs = {}, None
    for fmt in config.formats:
        if fmt == "keras":
            path, runner, ops = save_model(student, out / "student.keras"), keras_runner, None
            serve = tf.function(lambda x: student(x, training=False))
            latency = {f"{s}px_all_threads": _latency_ms(lambda b: serve(b).numpy(), s) for s in config.latency_sizes}
        elif fmt == "savedmodel":
            path, runner, ops = saved_dir, load_runner(saved_dir, stride=stride), None
            latency = {f"{s}px_all_threads": _latency_ms(runner.predict, s) for s in config.latency_sizes}
        else:
            source_dir = saved_dir
            if fmt == "int8" and config.int8_calibration == "percentile":
                source_dir = out / "savedmodel_int8_ready.partial"
                ready = export.int8_ready(student, calibration, config.calibration_percentile,
                                          equalize=unet_equalizer(student),
                                          input_range=(0.0, 1.0), output_range=(0.0, 1.0),
                                          float_layers=config.int8_float_layers)
                if config.qat_steps:
                    ready = quantization_aware_finetune(ready, config, split.train, student)
                export.export_saved_model(ready, source_dir)
            if fmt == "dynamic" and gptq_dynamic:
                source_dir = out / "savedmodel_dynamic_ready.partial"
                ready, rounding = export.dynamic_ready(
                    dynamic_source(student, calibration, config.dynamic_float_layers), calibration)
                if config.dynamic_tuning_steps:
                    ready, tuning = tune_dynamic_int8(
                        student, ready, qat_stream(split.train, config.data, config.eval_seed),
                        config.dynamic_tuning_steps, config.dynamic_tuning_learning_rate)
                if one_op_float:
                    ready = join_float_groups(ready, config.dynamic_float_layers)
                export.export_saved_model(ready, source_dir)
            if fmt == "dynamic" and one_op_float:
                flatbuffer = export.dynamic_range_int8(export.to_tflite(source_dir, "float32"),
                                                       config.dynamic_float_layers)
            else:
                flatbuffer = export.to_tflite(source_dir, fmt, calibration,
                                              float_fallback=fmt == "int8" and bool(config.int8_float_layers))
            if source_dir != saved_dir:
                shutil.rmtree(source_dir, ignore_errors=True)
            path = out / f"student_{fmt}.tflite"
            write_bytes_atomically(path, flatbuffer)
            runner, ops = load_runner(path, stride=stride), export.op_names(flatbuffer)
            latency = {}
            for threads in config.threads:
                timed = load_runner(path, num_threads=threads, stride=stride)
                for size in config.latency_sizes:
                    latency[f"{size}px_{threads}_threads"] = _latency_ms(timed.predict, size)
        outputs = [to_8bit(run_rgb(runner, noisy)) for _, noisy in pairs]
        scores = [image_scores(clean, out) for (clean, _), out in zip(pairs, outputs)]
        agreement = [image_scores(ref, out)[0] for ref, out in zip(reference, outputs)]
        rows[fmt] = {"path": str(path), "bytes": _directory_bytes(Path(path)),
                     "psnr": float(np.mean([p for p, _ in scores])), "ssim": float(np.mean([s for _, s in scores])),
                     "psnr_vs_keras_output": float(np.mean(agreement)),
                     "ops": ops, "op_count": None if ops is None else len(ops), "latency_ms": latency}
        if fmt == "int8" and config.int8_float_layers:
            rows[fmt]["float_layers"] = config.int8_float_layers
            rows[fmt]["convolution_types"] = export.convolution_types(flatbuffer)
        if fmt == "dynamic":
            rows[fmt]["weight_rounding"] = {"method": config.dynamic_weight_rounding, "layer_errors": rounding,
                                            "float_layers": config.dynamic_float_layers, "tuning": tuning}
            rows[fmt]["quantized_by"] = ("ai-edge-quantizer (float layers one op each)"
                                         if one_op_float else "tf.lite converter")
        if fmt in ("dynamic", "int8", "int16x8"):   # issue 17: colours, both held-out sets, every image
            if parity_inputs is None:
                parity_inputs = parity_sets(split.heldout, config.data.corpus_dir())
            rows[fmt]["parity"] = parity_report(lambda batch: student(batch, training=False),
                                                export.LiteRTModel(path, num_threads=max(config.threads)),
                                                *parity_inputs, sigma=config.sigma, seed=config.eval_seed,
                                                stride=stride, draws={"colour": config.parity_colour_draws})
        log.info("exported %s: %s", fmt, path)
    float_psnr = float(np.mean([image_scores(c, r)[0] for (c, _), r in zip(pairs, reference)]))
    for row in rows.values():
        row["delta_psnr_vs_float"] = row["psnr"] - float_psnr
    report = {"job": "export", "run": paths.name, "model": config.model, "out_dir": str(out), "sigma": config.sigma,
              "heldout": names, "float_keras_psnr": float_psnr, "formats": rows, "config": cfg.to_dict(config)}
    if config.qat_steps and "int8" in config.formats and config.int8_calibration == "percentile":
        report["qat_target"] = config.qat_target
        if config.qat_target == "teacher":
            path, why = qat_teacher(config)
            report["qat_teacher"] = {"path": path, "why": why}
    report["table"] = format_export_table(report, config)
    for fmt, row in rows.items():
        if "parity" in row:
            report["table"] += f"\n\n{fmt} against float:\n" + format_parity(row["parity"])
    if "qat_teacher" in report:
        report["table"] += f"\nint8 QAT teacher: {report['qat_teacher']['path']} ({report['qat_teacher']['why']})"
    report["report_path"] = str(paths.write_json("export_report.json", report))
    return report


def format_export_table(report: dict, config: denoise_config.ExportJobConfig) -> str:
    """One row per format. TensorFlow rows (keras, savedmodel) use every core: their latency
    appears under the largest thread count."""
    columns = [(size, threads) for size in config.latency_sizes for threads in config.threads]
    header = ["format", f"PSNR s{report['sigma']:g}", "SSIM", "dPSNR vs float", "MB", "ops"] + [
        f"ms {size}px {threads}t" for size, threads in columns]
    lines = []
    for name, row in report["formats"].items():
        cells = [name, f"{row['psnr']:.2f}", f"{row['ssim']:.4f}", f"{row['delta_psnr_vs_float']:+.3f}",
                 f"{row['bytes'] / 2**20:.2f}", "-" if row["op_count"] is None else str(row["op_count"])]
        for size, threads in columns:
            value = row["latency_ms"].get(f"{size}px_{threads}_threads")
            if value is None and threads == max(config.threads):
                value = row["latency_ms"].get(f"{size}px_all_threads")
            cells.append("-" if value is None else f"{value:.1f}")
        lines.append(cells)
    return render_table(header, lines)
