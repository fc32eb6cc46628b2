"""The diffusion task's jobs: train the DDIM teacher, distil its sampler to few steps, score them.

A sampler becomes a generator like the GAN task's (`as_generator`: a latent z of 784 values is the
28x28 noise image, the output is in [-1, 1]), so the same scorer (FID/KID/precision/recall in the
digit classifier's feature space, the share of samples it recognizes), `generate`, the int8
export and `evaluate --task gan` take it as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf.callbacks import digit_grid, side_by_side
from kd_tf.class_latents import class_accuracy, latents_for_classes
from kd_tf.complexity import count_macs, count_params
from kd_tf.images import write_image
from kd_tf.diffusion.adversarial import adversarial_finetune, adversarial_path
from kd_tf.diffusion.model import DiffusionModel
from kd_tf.diffusion.nets import build_denoiser, denoiser_classes, warm_start, with_shared_noise_level
from kd_tf.diffusion.progressive import progressive_distillation, stage_record
from kd_tf.diffusion.sampler import DDIMSampler, as_generator
from kd_tf.digits import as_unit, load_digits
from kd_tf.errors import InputError
from kd_tf.distribute import BackupAndRestore
from kd_tf.tables import render_table
from kd_tf.model_io import load_frozen, save_model
from kd_tf.runs import RunPaths, epochs_for, resumed_batches, write_json

log = logging.getLogger(__name__)
# what the scorer's mode-collapse warning advises for a sampler (the undistilled 1-step control
# row is a blurred average, collapsed by design)
COLLAPSE_ADVICE = ("For a distilled student: more steps_per_stage or another learning rate for its stage; an "
                   "undistilled sampler with few steps collapses by design")
INT8_ROW_SUFFIX = {"int8": "", "dynamic": " (dynamic range)"}   # a report row names its int8 file's kind
CALIBRATION_STREAM = 8     # default_rng([seed, 8]): the int8 calibration noise, never the eval latents
TRAIN_TEACHER = "train one with `python -m kd_tf train-teacher --task diffusion` or set teacher"


def macs_per_image(network: keras.Model, steps: int) -> int:
    """The sampler's MACs per image: the network's, once per step."""
    return steps * count_macs(network, [tuple(shape[1:]) for shape in network.input_shape])


def network_digest(network: keras.Model) -> str:
    """SHA-256 of a network's architecture and weights: the same network whatever file holds it.

    >>> net = build_denoiser(28, 1, (8, 16), 1)
    >>> same, other = keras.models.clone_model(net), keras.models.clone_model(net)   # other: new random weights
    >>> same.set_weights(net.get_weights())
    >>> network_digest(same) == network_digest(net), network_digest(other) == network_digest(net)
    (True, False)
    """
    digest = hashlib.sha256(json.dumps(network.get_config(), sort_keys=True, default=str).encode())
    for weights in network.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


class ScoreCache:
    """Sampler scores kept under `folder` (runs/scores), keyed by the network's digest, the step
    count, the eval settings, the classifier file and the digits: a distillation does not score its
    teacher again (7 minutes at 5,000 samples) when the teacher job or an earlier run already did.
    A cached row says so ("cached": its file); its ms_per_64 is the time measured then."""

    def __init__(self, folder, eval_config, data_source: str):
        self.folder = Path(folder)
        classifier = Path(eval_config.classifier)
        self.context = {"eval": dataclasses.asdict(eval_config), "data": data_source,
                        "classifier_sha256": hashlib.sha256(classifier.read_bytes()).hexdigest()
                        if classifier.is_file() else None}

    def path(self, network, steps: int) -> Path:
        key = json.dumps({**self.context, "network": network_digest(network), "steps": int(steps)}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def score(self, network, steps, scorer, eval_config, name) -> dict:
        path = self.path(network, steps)
        if path.is_file():
            log.info("%s: the score of %s (same network, steps and eval settings)", name, path)
            return {**json.loads(path.read_text()), "cached": str(path)}
        row = _score(network, steps, scorer, eval_config, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**row, "scored_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        return row


def _score(network, steps, scorer, eval_config, name) -> dict:
    from kd_tf.generators import keras_generate, ms_per_64

    generator = as_generator(network, steps)
    generate = keras_generate(generator)
    row = {"steps": steps, "params": count_params(network), "macs": macs_per_image(network, steps),
           "ms_per_64": ms_per_64(generate, generator.input_shape[-1], repeats=5)}
    row.update(scorer(generate, eval_config.samples, generator.input_shape[-1], name=name))
    return _with_class_accuracy(row, network, generate, scorer, eval_config)


def _with_class_accuracy(row: dict, network, generate, scorer, eval_config) -> dict:
    """`row` plus, for a conditional sampler, how often it draws the digit its noise asks for."""
    from kd_tf.generators import RECOGNIZED_CONFIDENCE

    classes = denoiser_classes(network)
    if classes:
        row["class_accuracy"] = class_accuracy(generate, scorer.logits, int(np.prod(network.input_shape[0][1:])),
                                               classes, per_class=max(1, eval_config.samples // classes),
                                               confidence=RECOGNIZED_CONFIDENCE, seed=eval_config.seed)
    return row


def format_table(rows: dict) -> str:
    from kd_tf.generators import RECOGNIZED_CONFIDENCE

    header = ["sampler", "steps", "params", "MACs/image", "ms/64", "FID", "KID", "precision", "recall",
              "recognized"]
    lines = [[name, str(r["steps"]), f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M", f"{r['ms_per_64']:.0f}",
              f"{r['fid']:.3f}", f"{r['kid']:.4f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
              f"{r['recognized']:.3f}" if r.get("recognized") is not None else "-"] for name, r in rows.items()]
    if any("class_accuracy" in r for r in rows.values()):      # conditional samplers: the class asked for
        header.append(f"asked class (p>={RECOGNIZED_CONFIDENCE})")
        for line, r in zip(lines, rows.values()):
            line.append(f"{r['class_accuracy']['confident_accuracy']:.3f}" if "class_accuracy" in r else "-")
    return render_table(header, lines)


def _latents(network, count: int, seed: int = 1234) -> np.ndarray:
    """`count` noise latents; for a conditional network, the classes in turn (0, 1, ..., 0, 1, ...),
    so a grid's columns are digits."""
    size = int(np.prod(network.input_shape[0][1:]))
    classes = denoiser_classes(network)
    if classes:
        return latents_for_classes(np.arange(count) % classes, size, classes, seed)
    return np.random.default_rng(seed).standard_normal((count, size)).astype("float32")


def _write_grid(path, network, steps, seed=1234, count=None):
    columns = denoiser_classes(network) or 8
    images = as_generator(network, steps)(_latents(network, count or columns * 8, seed)).numpy()
    write_image(path, digit_grid(images, columns))


class StageGrids:
    """Per progressive stage, a TensorBoard grid of the stage's teacher | student samplers from
    the same latents ("progressive/teacher | student"; TensorBoard step k is the stage that ends
    at `start_steps` / 2^k steps, also after a resume), written when the stage's training ends,
    and the stage's loss every `update_freq` batches (in `log_dir`/<N>_steps):
    progressive_distillation's `callbacks` factory."""

    def __init__(self, log_dir, latents: np.ndarray, start_steps: int, update_freq: int = 50):
        self.log_dir, self.latents, self.start_steps, self.update_freq = str(log_dir), latents, start_steps, update_freq

    def __call__(self, teacher, teacher_steps: int, student):
        stage = (self.start_steps // teacher_steps).bit_length()
        losses = keras.callbacks.TensorBoard(f"{self.log_dir}/{teacher_steps // 2}_steps", update_freq=self.update_freq,
                                             write_graph=False)
        return [_StageGrid(self, teacher, teacher_steps, student, stage), losses]


class _StageGrid(keras.callbacks.Callback):
    def __init__(self, grids: StageGrids, teacher, teacher_steps: int, student, stage: int):
        super().__init__()
        self.grids, self.teacher, self.teacher_steps, self.student, self.stage = grids, teacher, teacher_steps, student, stage

    def on_train_end(self, logs=None):
        steps = self.teacher_steps // 2
        write_panels(self.grids.log_dir, "progressive/teacher | student", self.stage, self.grids.latents,
                     {f"teacher, {self.teacher_steps} steps": (self.teacher, self.teacher_steps),
                      f"student, {steps} steps": (self.student, steps)})


def write_panels(log_dir, tag: str, step: int, latents: np.ndarray, samplers: dict):
    """One TensorBoard image `tag` at `step`: the samplers ({name: (network, steps)}) side by side
    on the same latents, their names as its description."""
    panels = {name: as_generator(network, steps)(latents) for name, (network, steps) in samplers.items()}
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(), tf.summary.record_if(True):   # a training's TensorBoard callback gates recording
        tf.summary.image(tag, side_by_side(panels, 4)[None, ..., None], step=step, description=" | ".join(panels))
    writer.close()


def _checked_classes(classes: int, digits) -> int:
    """`classes` when the digits can train a network conditioned on them: labeled, labels below it."""
    if classes and not (digits.labeled and int(digits.train_labels.max()) < classes):
        raise InputError(f"a network conditioned on {classes} classes needs labeled digits with labels "
                         f"0..{classes - 1}; {digits.source!r} has labels {sorted(set(digits.train_labels.tolist()))[:12]}")
    return classes


def train_teacher(config) -> dict:
    """Trains the velocity-predicting network on the training digits; scores its sampler."""
    from kd_tf.generators import Scorer

    config.validate()
    keras.utils.set_random_seed(config.train.seed)
    paths = RunPaths(config.output, "diffusion-teacher")
    digits = load_digits(config.data.source)
    images = as_unit(digits.train_images)
    classes = _checked_classes(config.net.classes, digits)
    network = build_denoiser(images.shape[1], images.shape[-1], config.net.widths, config.net.blocks,
                             config.net.embedding_dims, classes, name="teacher_denoiser")
    started_from = None
    if config.warm_start:      # e.g. a conditional teacher from a trained unconditional one
        source = load_frozen(config.warm_start, "warm_start denoiser", "train one first or drop warm_start")
        started_from = {"network": config.warm_start, "new_layers": warm_start(network, source)}
        log.info("teacher starts from %s; new layers: %s", config.warm_start, started_from["new_layers"])
    model = DiffusionModel(network, ema=config.train.ema, seed=config.train.seed)
    schedule = keras.optimizers.schedules.CosineDecay(config.train.learning_rate, config.train.steps,
                                                      alpha=config.train.final_learning_rate_fraction)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    epochs, per_epoch = epochs_for(config.train)
    columns = (images, digits.train_labels.astype(np.int32)) if classes else images
    data = tf.data.Dataset.from_tensor_slices(columns).shuffle(len(images), seed=config.train.seed).repeat()
    data = data.batch(config.data.batch_size, drop_remainder=True)
    skip = resumed_batches(paths.backup / "teacher", per_epoch)
    started = time.time()
    history = model.fit(data.skip(skip).prefetch(2), epochs=epochs, steps_per_epoch=per_epoch, verbose=0, shuffle=False,
                        callbacks=[keras.callbacks.TensorBoard(str(paths.logs / "teacher"), update_freq="epoch",
                                                               write_graph=False),
                                   BackupAndRestore(str(paths.backup / "teacher"), delete_checkpoint=False)])
    seconds = time.time() - started
    teacher = model.ema_network
    save_model(teacher, paths.root / "teacher_denoiser.keras")
    if config.save_to:
        save_model(teacher, config.save_to)
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    scores = ScoreCache(Path(config.output.runs_dir) / "scores", config.eval, digits.source)
    rows = {f"teacher, {config.sampler_steps} steps": scores.score(teacher, config.sampler_steps, scorer, config.eval,
                                                                    "teacher")}
    _write_grid(paths.root / "teacher_samples.png", teacher, config.sampler_steps)
    report = {"job": "train-teacher --task diffusion", "run": paths.name, "data": digits.source,
              "train_seconds": seconds, "samplers": rows, "history": history.history, "warm_start": started_from,
              "saved_to": config.save_to, "config": cfg.to_dict(config)}
    report["table"] = format_table(rows)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def int8_rounded(network: keras.Model, steps: int, samples: int, seed: int) -> tuple[keras.Model, dict]:
    """A copy of `network` whose int8 weights GPTQ rounded (kd_tf.weight_rounding) on what it is given
    at each of the `steps` sampler steps from `samples` noise draws, activations rounded as the
    dynamic-range kernels round them; and each layer's output error, nearest vs GPTQ rounding. The
    noise comes from its own seed stream, apart from the eval latents (default_rng(eval.seed))."""
    from kd_tf.weight_rounding import gptq_int8_weights

    shape = tuple(network.input_shape[0][1:])
    noise = np.random.default_rng([seed, CALIBRATION_STREAM]).standard_normal((samples, *shape)).astype(np.float32)
    inputs = DDIMSampler(network, steps).network_inputs(noise)
    return gptq_int8_weights(network, inputs, dynamic_activations=True)


def _adversarial_finetunes(config, stages, digits, labels, paths, latents) -> dict:
    """{steps: network} of the students `config.adversarial` fine-tunes, each against its stage's
    teacher (the stage before it), with its losses and a grid progressive | adversarial in
    TensorBoard (`adversarial/<N>_steps`); finished ones are loaded from the run folder."""
    settings = config.adversarial
    if not settings.student_steps:
        return {}
    discriminator = load_frozen(settings.discriminator, "discriminator", "train one with `python -m kd_tf "
                                "train-teacher --task gan` (generator.classes as the diffusion teacher's classes) or "
                                "set adversarial.discriminator")
    tuned = {}
    for (teacher_steps, teacher), (steps, network) in zip(stages, stages[1:]):
        if steps not in settings.student_steps:
            continue
        log_dir = paths.logs / "adversarial" / f"{steps}_steps"
        saved = adversarial_path(paths.root, steps)
        trained = not saved.is_file()
        tuned[steps] = adversarial_finetune(
            network, steps, teacher, teacher_steps, discriminator, digits.train_images, labels,
            settings.optimizer_steps, config.data.batch_size, settings.learning_rate,
            settings.final_learning_rate_fraction, settings.student_loss_weight, settings.discriminator_learning_rate,
            config.seed, [keras.callbacks.TensorBoard(str(log_dir), update_freq=50, write_graph=False)], saved)
        if trained:
            write_panels(log_dir, "adversarial/progressive | adversarial", steps, latents,
                         {f"student, {steps} steps": (network, steps),
                          f"student, {steps} steps, adversarial": (tuned[steps], steps)})
    return tuned


def distill(config) -> dict:
    """Progressive distillation of the teacher's sampler, `teacher_steps` -> ... -> `end_steps`;
    the teacher and the chosen stages (`score_steps`, default all) scored on the same latents, each
    beside the teacher's own network sampled with as few steps (what the distillation adds), the
    chosen ones exported to int8 TFLite. With `adversarial.student_steps`, those students are
    fine-tuned against a discriminator and ship (generator, int8) in place of the plain ones, whose
    rows stay in the report. Rerun with the same --run-name, it resumes at the stage a kill
    interrupted (finished stages and fine-tunes are kept in the run folder)."""
    from kd_tf.generators import Scorer, export_generator, score_tflite, tflite_generate

    config.validate()
    keras.utils.set_random_seed(config.seed)
    paths = RunPaths(config.output, "diffusion-distill")
    digits = load_digits(config.data.source)
    # one upgrade (int8-safe noise embedding) for every sampler of the run, students included
    teacher = with_shared_noise_level(load_frozen(config.teacher, "diffusion teacher", TRAIN_TEACHER))
    started = time.time()
    grids = StageGrids(paths.logs / "stages", _latents(teacher, 16), config.teacher_steps)
    labels = digits.train_labels if _checked_classes(denoiser_classes(teacher), digits) else None
    stages = progressive_distillation(teacher, as_unit(digits.train_images), config.teacher_steps,
                                      config.end_steps, config.steps_per_stage, config.data.batch_size,
                                      config.learning_rate, config.seed, callbacks=grids, stages_dir=paths.root,
                                      final_learning_rate_fraction=config.final_learning_rate_fraction,
                                      labels=labels)
    tuned = _adversarial_finetunes(config, stages, digits, labels, paths, grids.latents)
    seconds = time.time() - started
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    scores = ScoreCache(Path(config.output.runs_dir) / "scores", config.eval, digits.source)
    rows, exported = {}, {}
    for index, (steps, network) in enumerate(stages):
        name = f"teacher, {steps} steps" if index == 0 else f"student, {steps} steps"
        shipped, shipped_name = (tuned[steps], f"{name}, adversarial") if steps in tuned else (network, name)
        if index == 0 or config.score_steps is None or steps in config.score_steps:
            rows[name] = scores.score(network, steps, scorer, config.eval, name)
            if index:            # the control arm: the teacher's own network at the student's step count
                control = f"teacher network, {steps} steps (undistilled)"
                rows[control] = scores.score(teacher, steps, scorer, config.eval, control)
        if steps in tuned:       # scored whatever score_steps says: it is what ships
            rows[shipped_name] = scores.score(shipped, steps, scorer, config.eval, shipped_name)
        if index:
            _write_grid(paths.root / f"samples_{steps}_steps.png", shipped, steps)
            if config.save_to:
                save_model(as_generator(shipped, steps), f"{config.save_to}/student_generator_{steps}_steps.keras")
        if index and steps in config.export_int8_steps:
            rounding = config.dynamic_weight_rounding if config.int8_mode == "dynamic" else "nearest"
            int8_network, errors = (int8_rounded(shipped, steps, config.int8_calibration_samples, config.seed)
                                    if rounding == "gptq" else (shipped, None))
            tflite = export_generator(as_generator(int8_network, steps), paths.root / f"export_{steps}_steps",
                                      mode=config.int8_mode)
            exported[steps] = str(tflite)
            row = {**score_tflite(tflite, scorer, config.eval.samples), "steps": steps,
                   "params": count_params(shipped), "macs": macs_per_image(shipped, steps),
                   "weight_rounding": {"method": rounding, "calibration_samples": config.int8_calibration_samples,
                                       "layer_errors": errors} if errors else {"method": rounding}}
            name = f"{shipped_name}, int8{INT8_ROW_SUFFIX[config.int8_mode]}"
            rows[name] = _with_class_accuracy(row, shipped, tflite_generate(tflite)[1], scorer, config.eval)
    teacher_row = rows[f"teacher, {config.teacher_steps} steps"]
    records = [stage_record(paths.root, steps) for steps, _ in stages[1:]]
    report = {"job": "distill --task diffusion", "run": paths.name, "data": digits.source,
              "train_seconds": seconds,   # this run's; a resumed run loaded the stages finished before
              "stages": [{"from_steps": 2 * steps, "to_steps": steps, "seconds": None, **(record or {})}
                         for (steps, _), record in zip(stages[1:], records)],
              "adversarial": {steps: json.loads(adversarial_path(paths.root, steps).with_suffix(".json").read_text())
                              for steps in tuned},
              "samplers": rows, "int8": exported, "config": cfg.to_dict(config),
              "fid_over_teacher": {name: r["fid"] / teacher_row["fid"] for name, r in rows.items()},
              "speedup_over_teacher": {name: teacher_row["ms_per_64"] / r["ms_per_64"] for name, r in rows.items()}}
    report["table"] = format_table(rows)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report
