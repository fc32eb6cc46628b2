"""The work behind the GAN task's CLI verbs: the feature classifier, the teacher GAN, distillation
into a small generator (with the from-scratch baseline), evaluation and export of saved generators
(scoring, int8 export and `generate` are kd_tf.generators, which the diffusion task shares).

Same habits as kd_tf.denoise.jobs (shared in kd_tf.runs): a run folder `runs/<run>` with a JSON
report, TensorBoard logs in `tensorboard_logs/<run>`, resume from the last completed epoch when
rerun with the same run name, only the chief writes under tf.distribute. Generators map N(0, 1)
latents to 28x28 digits in [-1, 1]; the classifier and the metrics see [0, 1].
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf import distribute, schedules
from kd_tf.callbacks import GeneratorMetricsCallback, StopOnNonFiniteLoss
from kd_tf.classifier import build_classifier
from kd_tf.complexity import count_macs, count_params
from kd_tf.digits import as_signed, as_unit, load_digits, real_dataset
from kd_tf.distiller import Distiller
from kd_tf.gan import config as gan_config
from kd_tf.conditional_gan import (ClassLatentSampler, ConditionalAdversarial, ConditionalAdversarialTraining,
                                   ConditionalDistiller, class_accuracy, classes_of, labeled_real_dataset,
                                   latents_for_classes)
from kd_tf.gan.nets import build_discriminator, build_generator
from kd_tf.generators import (RECOGNIZED_CONFIDENCE, LatentSampler, Scorer, export_generator, keras_generate,
                              latent_dim_of, ms_per_64, score_tflite, tflite_generate)
from kd_tf.tables import render_table
from kd_tf.runs import RunPaths, epochs_for, resumed_batches, worker_report
from kd_tf.model_io import load_frozen, load_model, save_model
from kd_tf.objectives import Adversarial, AdversarialTraining, clone_discriminator
from kd_tf.errors import InputError

log = logging.getLogger(__name__)
# what the scorer's mode-collapse warning advises for a GAN generator
COLLAPSE_ADVICE = "Lower the learning rate, add adversarial.r1_weight or lower distill.student_loss_weight"


def _verbose():
    return 2 if os.environ.get("KD_TF_QUIET") else "auto"


def gan_optimizer(learning_rate: float, steps: int = 1, final_fraction: float = 1.0) -> keras.optimizers.Optimizer:
    """DCGAN's Adam (beta_1 = 0.5), its rate decayed along a cosine to `final_fraction` of it over
    `steps` updates (1.0: constant). At a constant rate the FID of successive epochs swings by
    3x (5.7 -> 18.5 between the last two epochs of the first teacher run): the decay lets the
    last epoch, the one that is saved and compared, settle."""
    if final_fraction >= 1.0:
        return keras.optimizers.Adam(learning_rate, beta_1=0.5)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=final_fraction)
    return keras.optimizers.Adam(schedule, beta_1=0.5)


# -- scoring (kd_tf.generators.Scorer) ----------------------------------------------------------

def describe(model: keras.Model, generate, scorer: Scorer, eval_config: cfg.GanEvalConfig, name: str) -> dict:
    """One row of the comparison: params, MACs per image, ms per 64 images, the scores; for a
    class-conditional generator also how often the classifier names the class asked for."""
    latent = latent_dim_of(model)
    row = {"params": count_params(model), "macs": count_macs(model, (latent,)),
           "ms_per_64": ms_per_64(generate, latent)}
    row.update(scorer(generate, eval_config.samples, latent, name=name))
    classes = classes_of(model)
    if classes:
        row["class_accuracy"] = _class_accuracy(generate, latent, classes, scorer, eval_config)
    return row


def _floor(digits, scorer: Scorer, eval_config: cfg.GanEvalConfig) -> dict:
    """The floor of every metric: real training digits against the real test digits, same space."""
    real = as_signed(digits.train_images[np.random.default_rng(eval_config.seed).permutation(
        len(digits.train_images))[:eval_config.samples]])
    return {"params": None, "macs": None, "ms_per_64": 0.0, **scorer.score_images(real, "real training digits")}


def _class_accuracy(generate, latent: int, classes: int, scorer: Scorer, eval_config: cfg.GanEvalConfig) -> dict:
    return class_accuracy(generate, scorer.logits, latent, classes,
                          per_class=max(1, eval_config.samples // classes), confidence=RECOGNIZED_CONFIDENCE,
                          seed=eval_config.seed)


def format_table(rows: dict) -> str:
    header = ["generator", "params", "MACs", "ms/64", "FID", "KID", "precision", "recall", "coverage",
              f"recognized (p>={RECOGNIZED_CONFIDENCE})"]
    lines = [[name, f"{r['params']:,}" if r.get("params") else "-", f"{r['macs'] / 1e6:.2f}M" if r.get("macs") else "-",
              f"{r['ms_per_64']:.1f}", f"{r['fid']:.3f}", f"{r['kid']:.4f}", f"{r['precision']:.3f}",
              f"{r['recall']:.3f}", f"{r['coverage']:.3f}", f"{r['recognized']:.3f}" if "recognized" in r else "-"]
             for name, r in rows.items()]
    if any("class_accuracy" in r for r in rows.values()):      # conditional generators: the class asked for
        header.append(f"asked class (p>={RECOGNIZED_CONFIDENCE})")
        for line, r in zip(lines, rows.values()):
            line.append(f"{r['class_accuracy']['confident_accuracy']:.3f}" if "class_accuracy" in r else "-")
    return render_table(header, lines)


def _callbacks(paths: RunPaths, scorer: Scorer, config, latent_dim: int, tag: str, classes: int = 0):
    """TensorBoard scalars, FID/KID + fixed-z grids every N epochs (a conditional generator's columns
    cycle through the classes), BackupAndRestore, divergence stop."""
    cells = config.eval.grid ** 2
    grid = (latents_for_classes(np.arange(cells) % classes, latent_dim, classes, config.eval.seed) if classes
            else LatentSampler(latent_dim).fixed(cells, seed=config.eval.seed))
    count = config.eval.callback_samples
    monitor = GeneratorMetricsCallback(lambda generate: scorer(generate, count, latent_dim, name=tag), grid,
                                       paths.logs / tag / "generator", every=config.eval.every_epochs,
                                       columns=config.eval.grid)
    return [keras.callbacks.TensorBoard(log_dir=str(paths.logs / tag), update_freq="epoch", write_graph=False),
            monitor,
            distribute.BackupAndRestore(str(paths.backup / tag), chief=paths.chief, delete_checkpoint=False,
                                        double_checkpoint=True),
            StopOnNonFiniteLoss(paths.backup / tag)], monitor


# -- the feature classifier -------------------------------------------------------------------

def train_classifier(config: gan_config.ClassifierJobConfig) -> dict:
    """The digit classifier behind FID/KID: trained on the 60k training digits, its accuracy on the
    10k test digits goes into the report (and the model card)."""
    config.validate()
    keras.utils.set_random_seed(config.train.seed)
    paths = RunPaths(config.output, "classifier")
    digits = load_digits(config.data.source)
    if not digits.labeled:
        raise InputError(f"data.source={config.data.source!r} has no class labels; the feature classifier needs "
                         f"them (folders named 0-9, or a labeled set such as 'pureml')")
    classes = int(max(digits.train_labels.max(), digits.test_labels.max())) + 1
    model = build_classifier(classes)
    schedule = keras.optimizers.schedules.CosineDecay(config.train.learning_rate, config.train.steps,
                                                      alpha=config.train.final_learning_rate_fraction)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((as_unit(digits.train_images), digits.train_labels))
    data = data.shuffle(len(digits.train_images), seed=config.train.seed).repeat().batch(config.data.batch_size)
    epochs, per_epoch = epochs_for(config.train)
    started = time.time()
    history = model.fit(data.skip(resumed_batches(paths.backup / "classifier", per_epoch)).prefetch(2),
                        epochs=epochs, steps_per_epoch=per_epoch, verbose=_verbose(), shuffle=False, callbacks=[
        keras.callbacks.TensorBoard(log_dir=str(paths.logs / "classifier"), update_freq="epoch", write_graph=False),
        distribute.BackupAndRestore(str(paths.backup / "classifier"), delete_checkpoint=False)])
    seconds = time.time() - started
    loss, accuracy = model.evaluate(as_unit(digits.test_images), digits.test_labels, batch_size=500, verbose=0)
    save_model(model, paths.root / "feature_classifier.keras")
    if config.save_to:
        save_model(model, config.save_to)
    report = {"job": "train-classifier", "run": paths.name, "data": digits.source,
              "train_images": len(digits.train_images), "test_images": len(digits.test_images),
              "test_accuracy": float(accuracy), "test_loss": float(loss), "params": count_params(model),
              "train_seconds": seconds, "history": history.history, "saved_to": config.save_to,
              "config": cfg.to_dict(config)}
    report["table"] = render_table(["model", "params", "test accuracy", "train s"], [
        ["feature classifier", f"{report['params']:,}", f"{accuracy:.4f}", f"{seconds:.0f}"]])
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


# -- the teacher GAN --------------------------------------------------------------------------

def _adversarial(config: gan_config.AdversarialConfig, discriminator, train: cfg.TrainConfig,
                 classes: int = 0) -> Adversarial:
    """The objective; the discriminator's rate follows the generator's schedule (d_steps per step)."""
    optimizer = gan_optimizer(config.learning_rate, train.steps * config.d_steps, train.final_learning_rate_fraction)
    kind = ConditionalAdversarial if classes else Adversarial
    return kind(discriminator, optimizer, loss=config.loss, d_steps=config.d_steps, r1_weight=config.r1_weight)


def _sampler(latent: int, classes: int, seed: int):
    return ClassLatentSampler(latent, classes, seed) if classes else LatentSampler(latent, seed)


def _real_stream(digits, classes: int, batch_size: int, seed: int, skip_batches: int):
    """Real batches: images, or (images, one-hot labels) for a class-conditional GAN."""
    if not classes:
        return real_dataset(digits.train_images, batch_size, seed, skip_batches)
    if not digits.labeled:
        raise InputError(f"data.source={digits.source!r} has no class labels; a class-conditional GAN (classes="
                         f"{classes}) needs them (folders named by class, or a labeled set such as 'pureml')")
    if int(digits.train_labels.max()) >= classes:
        raise InputError(f"classes={classes} is not accepted: the data hold labels up to "
                         f"{int(digits.train_labels.max())}; set classes={int(digits.train_labels.max()) + 1}")
    return labeled_real_dataset(digits.train_images, digits.train_labels, classes, batch_size, seed, skip_batches)


def _generator_optimizer(train: cfg.TrainConfig):
    return gan_optimizer(train.learning_rate, train.steps, train.final_learning_rate_fraction)


class EpochSnapshots(keras.callbacks.Callback):
    """Saves the generator and the discriminator after every epoch as epochs/{generator,discriminator}_NN.keras."""

    def __init__(self, folder: Path, generator: keras.Model, discriminator: keras.Model):
        super().__init__()
        self.folder, self.generator, self.discriminator = Path(folder), generator, discriminator

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        save_model(self.generator, self.folder / f"generator_{epoch + 1:02d}.keras")
        save_model(self.discriminator, self.folder / f"discriminator_{epoch + 1:02d}.keras")


def train_teacher(config: gan_config.GanTeacherJobConfig, strategy=None) -> dict:
    """Trains the DCGAN teacher (generator and discriminator) on the training digits and saves both."""
    config.validate()
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    paths = RunPaths(config.output, "gan-teacher", chief=distribute.is_chief(strategy))
    digits = load_digits(config.data.source)
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    latent, classes = config.generator.latent_dim, config.generator.classes
    with strategy.scope():
        generator = build_generator(latent, config.generator.widths, name="teacher_generator", classes=classes)
        discriminator = build_discriminator(config.adversarial.discriminator_widths, name="teacher_discriminator",
                                            classes=classes)
        training = ConditionalAdversarialTraining if classes else AdversarialTraining
        gan = training(generator, _adversarial(config.adversarial, discriminator, config.train, classes),
                       _sampler(latent, classes, config.train.seed), ema=config.train.ema, name="teacher_gan")
        gan.compile(optimizer=_generator_optimizer(config.train))
    epochs, per_epoch = epochs_for(config.train)
    callbacks, monitor = _callbacks(paths, scorer, config, latent, "teacher", classes)
    if paths.chief:      # every epoch's generator and discriminator, to pick one that is not in a bad phase
        callbacks.insert(2, EpochSnapshots(paths.root / "epochs", gan.ema_generator if gan.ema else generator,
                                            discriminator))
    started = time.time()
    history = gan.fit(_real_stream(digits, classes, config.data.batch_size, config.train.seed,
                                   resumed_batches(paths.backup / "teacher", per_epoch)),
                      epochs=epochs, steps_per_epoch=per_epoch, callbacks=callbacks, verbose=_verbose(), shuffle=False)
    seconds = time.time() - started
    if not paths.chief:
        return worker_report(paths, "train-teacher --task gan", history)
    raw_generator, generator = generator, gan.ema_generator if gan.ema else generator   # the average teaches
    save_model(generator, paths.root / "teacher_generator.keras")
    save_model(discriminator, paths.root / "teacher_discriminator.keras")
    if config.save_to:
        save_model(generator, config.save_to)
    if config.save_discriminator_to:
        save_model(discriminator, config.save_discriminator_to)
    rows = {"teacher": describe(generator, keras_generate(generator), scorer, config.eval, "teacher")}
    if generator is not raw_generator:        # what the average adds over the last step's weights
        rows["teacher (last weights, no EMA)"] = describe(raw_generator, keras_generate(raw_generator), scorer,
                                                          config.eval, "teacher (last weights, no EMA)")
    report = {"job": "train-teacher --task gan", "run": paths.name, "data": digits.source, "train_seconds": seconds,
              "generators": rows, "discriminator_params": count_params(discriminator),
              "history": history.history, "metrics_during_training": monitor.history,
              "saved_to": [config.save_to, config.save_discriminator_to], "config": cfg.to_dict(config)}
    report["table"] = format_table(rows)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


# -- distillation -----------------------------------------------------------------------------

TRAIN_GAN_TEACHER = "train one with `python -m kd_tf train-teacher --task gan` or set its path in the config"


def distill(config: gan_config.GanDistillJobConfig, strategy=None) -> dict:
    """Distills the teacher generator into the small student (MSE to the teacher's images on the same
    z, optional feature terms, and the adversarial loss against a discriminator started from the
    teacher's); trains the same student as a plain GAN from scratch with the same steps and seed;
    scores teacher, both students and the int8 TFLite student."""
    config.validate()
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    latent = config.student.latent_dim
    weight = config.distill.student_loss_weight
    student_loss_weight = schedules.from_config(weight.kind, weight.start, weight.end, config.train.steps)
    features = [(p.teacher, p.student, p.weight) for p in config.distill.features]
    with strategy.scope():
        teacher = load_frozen(config.distill.teacher, "teacher generator", TRAIN_GAN_TEACHER)
        teacher_latent = latent_dim_of(teacher)
        if teacher_latent != latent:
            raise InputError(f"student.latent_dim={latent} is not accepted: the teacher {config.distill.teacher!r} "
                             f"takes z of size {teacher_latent}; set student.latent_dim={teacher_latent}")
        classes = classes_of(teacher)
        if config.student.classes != classes:
            raise InputError(f"student.classes={config.student.classes} is not accepted: the teacher "
                             f"{config.distill.teacher!r} is conditioned on {classes} classes; "
                             f"set student.classes={classes}")
        teacher_discriminator = load_frozen(config.distill.discriminator, "teacher discriminator", TRAIN_GAN_TEACHER)
        student = build_generator(latent, config.student.widths, name="student_generator", classes=classes)
        initial_weights = student.get_weights()      # the scratch run starts from the very same point
        objective = _adversarial(config.adversarial, clone_discriminator(teacher_discriminator), config.train, classes)
        distiller = (ConditionalDistiller if classes else Distiller)(
            teacher, student, student_loss_weight=student_loss_weight, output_loss=config.distill.output_loss,
            features=features, objective=objective,
            latent_sampler=_sampler(latent, classes, config.train.seed))   # checks shapes first
        distiller.compile(optimizer=_generator_optimizer(config.train))
    paths = RunPaths(config.output, "distill-gan", chief=distribute.is_chief(strategy))
    digits = load_digits(config.data.source)
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    epochs, per_epoch = epochs_for(config.train)

    def stream(tag):
        return _real_stream(digits, classes, config.data.batch_size, config.train.seed,
                            resumed_batches(paths.backup / tag, per_epoch))

    log.info("distilling the GAN: teacher %s -> student %s", config.distill.teacher, config.student)
    timings, histories, monitors = {}, {}, {}
    callbacks, monitors["distill"] = _callbacks(paths, scorer, config, latent, "distill", classes)
    started = time.time()
    histories["distill"] = distiller.fit(stream("distill"), epochs=epochs, steps_per_epoch=per_epoch,
                                         callbacks=callbacks, verbose=_verbose(), shuffle=False).history
    timings["distill_seconds"] = time.time() - started
    students = {"student (distilled)": student}
    save_model(student, paths.root / "student_generator.keras")
    if config.save_to and paths.chief:
        save_model(student, config.save_to)

    arms = {"inherited": ["inherited"], "fresh": ["fresh"], "both": ["inherited", "fresh"]}
    for start in (arms[config.distill.scratch_discriminator] if config.distill.compare_scratch else []):
        # the same student as a plain GAN; "inherited": against a copy of the teacher's discriminator,
        # as the distilled student, so the two differ only by the distillation term
        tag = "scratch" if start == "inherited" else "scratch_fresh_d"
        keras.utils.set_random_seed(config.train.seed)
        with strategy.scope():
            scratch = build_generator(latent, config.student.widths, name=f"student_{tag}", classes=classes)
            scratch.set_weights(initial_weights)
            discriminator = (clone_discriminator(teacher_discriminator) if start == "inherited"
                             else keras.models.clone_model(teacher_discriminator))   # same architecture, new weights
            training = ConditionalAdversarialTraining if classes else AdversarialTraining
            gan = training(scratch, _adversarial(config.adversarial, discriminator, config.train, classes),
                           _sampler(latent, classes, config.train.seed), name=f"{tag}_gan")
            gan.compile(optimizer=_generator_optimizer(config.train))
        log.info("training the same student as a plain GAN (%s discriminator), same steps and seed", start)
        callbacks, monitors[tag] = _callbacks(paths, scorer, config, latent, tag, classes)
        started = time.time()
        histories[tag] = gan.fit(stream(tag), epochs=epochs, steps_per_epoch=per_epoch,
                                 callbacks=callbacks, verbose=_verbose(), shuffle=False).history
        timings[f"{tag}_seconds"] = time.time() - started
        name = "student (scratch)" if start == "inherited" else "student (scratch, fresh discriminator)"
        students[name] = scratch
        save_model(scratch, paths.root / f"student_{tag}.keras")
    if not paths.chief:
        return worker_report(paths, "distill --task gan", distiller.history)

    rows = {"teacher": describe(teacher, keras_generate(teacher), scorer, config.eval, "teacher"),
            "real training digits (floor)": _floor(digits, scorer, config.eval)}
    for name, model in students.items():
        rows[name] = describe(model, keras_generate(model), scorer, config.eval, name)
    report = {"job": "distill --task gan", "run": paths.name, "data": digits.source, "timings": timings,
              "generators": rows, "history": histories,
              "metrics_during_training": {tag: m.history for tag, m in monitors.items()},
              "config": cfg.to_dict(config)}
    report["report_path"] = str(paths.write_json("report.json", report))      # kept even if export fails
    if config.export_int8:
        path = export_generator(student, paths.root / "export", config.calibration_batches, config.train.seed)
        rows["student int8 TFLite"] = score_tflite(path, scorer, config.eval.samples)
        if classes:                  # int8 rounds z before the class code reads it: does the class survive?
            rows["student int8 TFLite"]["class_accuracy"] = _class_accuracy(tflite_generate(path)[1], latent, classes,
                                                                           scorer, config.eval)
        report["int8_tflite"] = str(path)
    distilled = rows["student (distilled)"]
    report["targets"] = {
        "mac_ratio_teacher_over_student": rows["teacher"]["macs"] / distilled["macs"],
        "fid_ratio_student_over_teacher": distilled["fid"] / rows["teacher"]["fid"],
        "student_fid_below_scratch": (distilled["fid"] < rows["student (scratch)"]["fid"]
                                      if "student (scratch)" in rows else None),
        "int8_fid_change": (rows["student int8 TFLite"]["fid"] / distilled["fid"] - 1.0
                            if "student int8 TFLite" in rows else None)}
    report["table"] = format_table(rows)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


# -- evaluation and export of saved generators -------------------------------------------------


def evaluate_saved(config: gan_config.GanEvaluateJobConfig, models: dict) -> dict:
    """`python -m kd_tf evaluate --task gan`: params, MACs, ms per 64 images and the scores of saved
    generators ({name: .keras / SavedModel / .tflite path}), all on the same latents, and the floor
    (real training digits against the test digits). Class-conditional generators also get their
    class accuracy, .tflite ones with `config.classes` (or the classes of the .keras ones)."""
    config.validate()
    paths = RunPaths(config.output, "evaluate-gan")
    digits = load_digits(config.data.source)
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    rows, flatbuffers, classes = {}, [], config.classes
    for name, path in models.items():
        if str(path).endswith(".tflite"):
            rows[name] = score_tflite(path, scorer, config.eval.samples)
            flatbuffers.append(name)
        else:
            model = load_model(path)
            rows[name] = describe(model, keras_generate(model), scorer, config.eval, name)
            classes = classes or classes_of(model)
        rows[name]["path"] = str(path)
    for name in flatbuffers if classes else []:
        runner, generate = tflite_generate(models[name])
        rows[name]["class_accuracy"] = _class_accuracy(generate, runner.input_signature[-1], classes, scorer,
                                                  config.eval)
    rows["real training digits (floor)"] = _floor(digits, scorer, config.eval)
    report = {"job": "evaluate --task gan", "run": paths.name, "data": digits.source, "generators": rows,
              "config": cfg.to_dict(config)}
    report["table"] = format_table(rows)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def export_saved(config: gan_config.GanEvaluateJobConfig, model_path: str, out_dir: str | None) -> dict:
    """`python -m kd_tf export --model GENERATOR`: SavedModel (input "latent") and int8 TFLite of a
    generator, with the FID/KID of the float model and of the int8 one on the same latents."""
    config.validate()
    paths = RunPaths(config.output, "export-gan")
    out = Path(out_dir) if out_dir else paths.root / "export"
    generator = load_model(model_path)
    latent_dim_of(generator)
    tflite = export_generator(generator, out, config.calibration_batches)
    report = evaluate_saved(config, {"float (Keras)": model_path, "int8 TFLite": str(tflite)})
    rows = report["generators"]
    report.update(job="export (generator)", out_dir=str(out), int8_tflite=str(tflite),
                  int8_fid_change=rows["int8 TFLite"]["fid"] / rows["float (Keras)"]["fid"] - 1.0)
    report["report_path"] = str(paths.write_json("export_report.json", report))
    return report
