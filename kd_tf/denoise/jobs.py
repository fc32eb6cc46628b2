"""The denoising jobs behind the CLI verbs: train a teacher, distill a student (directly,
through an assistant, or as a chain of stages), evaluate saved models, denoise files.

Each job writes its artifacts and a JSON report to its run folder (kd_tf.runs), resumes from its
last completed epoch when rerun with the same run name, and returns its report so that the CLI
(or a notebook) can print it. Exporting is kd_tf.denoise.export_job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
from pathlib import Path

import keras
import numpy as np

from kd_tf import config as cfg
from kd_tf import distribute, schedules
from kd_tf.denoise import config as denoise_config
from kd_tf.complexity import count_params
from kd_tf.images import fixed_crops, load_split, most_textured_window, patch_dataset, with_noise_level
from kd_tf.distiller import Distiller
from kd_tf.denoise.evaluation import evaluate, format_table, methods_for
from kd_tf.tables import render_table
from kd_tf.denoise.export_job import export_student
from kd_tf.metrics import psnr_metric
from kd_tf.photo_corpus import HELDOUT2_CROP, heldout2_photos
from kd_tf.denoise.nets import build_unet, float32_copy
from kd_tf.model_io import (load_float_teacher, load_model, load_teacher, save_model, takes_noise_level,
                            with_dtype_policy)
from kd_tf.denoise.inherit import inherit_from_teacher, inheritance_problem
from kd_tf.denoise.ffdnet_student import (build_blind_ffdnet, ffdnet_inheritance_problem, inherit_from_ffdnet,
                                          is_blind_ffdnet)
from kd_tf.precision import policy_name, with_loss_scaling
from kd_tf.runs import (RunPaths, cosine_optimizer, epochs_for, record_config, record_split, resumed_batches,
                        standard_callbacks, trained_on, worker_report, write_json)
from kd_tf.teacher_cache import cache_teacher_outputs
from kd_tf.errors import InputError

log = logging.getLogger(__name__)


def training_data(config_data: cfg.DataConfig, seed: int):
    """The split, a function giving the training stream from a batch on, and validation crops.

    With data.corpus the photo corpus's training photos join the split's (kd_tf.photo_corpus);
    its second held-out set never trains and is scored beside the first in reports (heldout2_photos).
    `stream(skip, noise_level_for_teacher=True)` yields the teacher's inputs with each patch's sigma."""
    split = _split(config_data)
    train_images = dict(split.train)
    if config_data.corpus:
        from kd_tf.photo_corpus import load_corpus

        corpus = load_corpus(config_data.corpus_dir(), "train")
        train_images.update({f"corpus/{name}": image for name, image in corpus.items()})
        log.info("photo corpus %s: %d training photos", config_data.corpus_dir(), len(corpus))
        split = dataclasses.replace(split, train=train_images)

    def stream(skip_batches: int = 0, noise_level_for_teacher: bool = False):
        return patch_dataset(train_images, config_data.patch_size, config_data.batch_size,
                             (config_data.sigma_min, config_data.sigma_max), seed=seed, skip_batches=skip_batches,
                             noise_level_for_teacher=noise_level_for_teacher, noisy_8bit=config_data.noisy_8bit,
                             min_scale=config_data.min_scale, saturation_boost=config_data.saturation_boost,
                             grey_fraction=config_data.grey_fraction)

    val_noisy, val_clean = fixed_crops(split.heldout, config_data.val_crop, config_data.val_crops_per_image,
                                       config_data.val_sigma, noisy_8bit=config_data.noisy_8bit)
    log.info("training on %d images, holding out %d: %s", len(split.train), len(split.heldout),
             ", ".join(sorted(split.heldout)))
    return split, stream, val_noisy, val_clean


def _split(config_data: cfg.DataConfig):
    """The one split every verb uses: a user's folder read with the same minimum size (the patch
    size) by training, evaluation and export, so that one small image cannot reshuffle it."""
    return load_split(config_data.data_dir, config_data.heldout_fraction, config_data.split_seed,
                      min_size=config_data.patch_size)


def _record_run(paths: RunPaths, config, split) -> None:
    """runs/<run>/split.json (what trained and what is held out, by content) and
    training_config.json; a rerun that resumes the run must match both (kd_tf.runs)."""
    record_config(paths, cfg.to_dict(config), cfg.to_dict(type(config)()))
    record_split(paths, {"train": split.train, "heldout": split.heldout,
                         "heldout2": heldout2_photos(config.data.corpus_dir())})


def train_teacher(config: denoise_config.TeacherJobConfig, strategy=None) -> dict:
    """Trains the residual U-Net teacher on noisy/clean patches and saves it in float32.
    `strategy`: a tf.distribute strategy instead of train.strategy's (a TPUStrategy, say)."""
    config.validate()
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)   # first: may set up collectives
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    paths = RunPaths(config.output, "teacher", chief=distribute.is_chief(strategy))
    split, stream, val_noisy, val_clean = training_data(config.data, config.train.seed)
    _record_run(paths, config, split)
    val_noisy, val_clean, val_batch = distribute.even_validation(val_noisy, val_clean, strategy)

    start = load_model(config.init_from) if config.init_from else None
    non_blind = start is not None and takes_noise_level(start)
    with strategy.scope():                          # the model, optimizer and metrics on every replica
        if non_blind:                               # fine-tune a non-blind denoiser (FFDNet) as it is
            model = with_dtype_policy(start, policy_name(config.train.mixed_precision)) if config.train.mixed_precision else start
            model.trainable = True
            log.info("fine-tuning %s (takes the noise level) from %s", start.name, config.init_from)
        else:
            model = build_net(config.net, "teacher", config.train.mixed_precision)
            if start is not None:
                model.set_weights(start.get_weights())
                log.info("continuing from the weights of %s", config.init_from)
        model.compile(optimizer=with_loss_scaling(cosine_optimizer(config.train), model), loss="mse",
                      metrics=[psnr_metric])
    if non_blind:                                   # fit() takes (image, sigma) pairs: the teacher's inputs
        val_noisy = (val_noisy, np.full((len(val_noisy), 1), config.data.val_sigma / 255.0, np.float32))
        training = lambda skip: stream(skip, noise_level_for_teacher=True).map(
            lambda x, clean: (x["teacher_inputs"], clean))
    else:
        training = stream
    epochs, per_epoch = epochs_for(config.train)
    started = time.time()
    history = model.fit(training(resumed_batches(paths.backup / "teacher", per_epoch)), epochs=epochs,
                        steps_per_epoch=per_epoch,
                        validation_data=(val_noisy, val_clean), validation_batch_size=val_batch, shuffle=False,
                        callbacks=standard_callbacks(paths, val_noisy, val_clean, config.output, "teacher",
                                                     config.train.steps),
                        verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    seconds = time.time() - started
    if not paths.chief:
        return worker_report(paths, "train-teacher", history.history)

    if non_blind:
        teacher = with_dtype_policy(model, "float32") if config.train.mixed_precision else model
    else:
        teacher = float32_net(model, config.net)
    save_model(teacher, paths.root / "teacher.keras")
    if config.save_to:
        save_model(teacher, config.save_to)
    report = _report(config, paths, split, {"teacher": teacher}, "train-teacher")
    report.update(train_seconds=seconds, history=history.history, saved_to=config.save_to,
                  optimizer_steps=int(model.optimizer.iterations.numpy()))
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def build_net(net: denoise_config.NetConfig, name: str, mixed_precision: bool | str = False) -> keras.Model:
    """The network `net` describes: a build_unet U-Net or a blind FFDNet-shaped chain."""
    if net.family == "ffdnet":
        return build_blind_ffdnet(net.features, net.depth, name=name, mixed_precision=mixed_precision)
    return build_unet(net.widths, net.blocks, name=name, mixed_precision=mixed_precision, unshuffle=net.unshuffle,
                      global_context=net.global_context, pointwise=net.pointwise)


def describe_net(net: denoise_config.NetConfig) -> str:
    """A net in a few words, for report tables: its family and what sizes it.

    >>> describe_net(denoise_config.NetConfig(family="ffdnet"))
    'ffdnet: 28 features x 12 layers'
    """
    if net.family == "ffdnet":
        return f"ffdnet: {net.features} features x {net.depth} layers"
    unshuffled = f", at 1/{net.unshuffle} resolution" if net.unshuffle > 1 else ""
    context = f", global context {net.global_context}" if net.global_context else ""
    pointwise = f", pointwise {net.pointwise}" if any(np.atleast_1d(net.pointwise)) else ""
    return f"unet: widths {'-'.join(map(str, net.widths))}, {net.blocks} block(s){unshuffled}{context}{pointwise}"


def float32_net(model: keras.Model, net: denoise_config.NetConfig) -> keras.Model:
    """`model` (built by build_net, perhaps in bfloat16) computing in float32, for export and evaluation."""
    if net.family == "ffdnet":
        copy = build_blind_ffdnet(net.features, net.depth, name=model.name)
        copy.set_weights(model.get_weights())
        return copy
    return float32_copy(model, net.widths, net.blocks)


def student_inheritance_problem(teacher: keras.Model, student: keras.Model) -> str | None:
    """Why `student` cannot start from `teacher`'s weights (either family), or None."""
    if is_blind_ffdnet(student):
        return ffdnet_inheritance_problem(teacher, student)
    return inheritance_problem(teacher, student)


def _limit(heldout: dict, eval_config: denoise_config.EvalConfig) -> dict:
    if eval_config.max_images is None:
        return heldout
    return {name: heldout[name] for name in sorted(heldout)[:eval_config.max_images]}


NEW_BLOCK_CONV = re.compile(r".+_block\d+_conv[12]")
NEW_CONTEXT_CONV = re.compile(r"context_from\d+|film\d+_(scale|shift)")


def _widened(layer, source) -> list | None:
    """`source`'s weights embedded in `layer`'s wider ones so that the wider network computes what the
    narrower one did (Net2WiderNet's idea, Chen et al. 2016, with zeros instead of copies): the old
    kernel and bias fill their corner, weights from a new input channel into an old output channel
    are zero, and a new output channel keeps `layer`'s fresh initial weights, so it carries a signal
    that no old channel reads yet and the loss can reach its zero outgoing weights. Only convolutions
    (Conv2D, Conv2DTranspose) of the same kernel size grow; None for anything else or a narrower layer."""
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)) or len(layer.weights) != len(
            source.weights):
        return None
    in_axis, out_axis = (3, 2) if isinstance(layer, keras.layers.Conv2DTranspose) else (2, 3)
    grown = []
    for mine, theirs in zip(layer.get_weights(), source.get_weights()):
        spatial = [axis for axis in range(mine.ndim) if axis not in (in_axis, out_axis)] if mine.ndim == 4 else []
        if mine.ndim != theirs.ndim or any(a < b for a, b in zip(mine.shape, theirs.shape)) or any(
                mine.shape[axis] != theirs.shape[axis] for axis in spatial):
            return None
        weights = mine.copy()
        weights[tuple(slice(0, n) for n in theirs.shape)] = theirs
        if mine.ndim == 4:                          # a kernel: new inputs must not reach old outputs
            fresh_inputs = [slice(None)] * 4
            fresh_inputs[in_axis] = slice(theirs.shape[in_axis], None)
            fresh_inputs[out_axis] = slice(0, theirs.shape[out_axis])
            weights[tuple(fresh_inputs)] = 0.0
        grown.append(weights)
    return grown


def continue_from(path: str, student: keras.Model, drop_blocks=()) -> dict:
    """Gives `student` the weights of the trained student at `path`, layer by layer by name, and
    returns {"from": path, "sha256": <of the file>, "new_blocks": [...], ...} (the digest keeps the report's
    provenance when a newer student is shipped to the same path). Residual blocks that `path` lacks (the configured
    student has more blocks somewhere) start as identities: their second convolution is zeroed, so
    x + conv2(relu(conv1(x))) = x and the grown student computes exactly what the trained one did,
    then learns what the new blocks add (Net2DeeperNet's idea, Chen et al. 2016). A global context
    (student.global_context) that `path` lacks starts as build_unet builds it, an identity too (its
    FiLM kernels are zero), and is listed as "new_context". Wider levels (student.widths above the
    file's) keep the trained channels and add new ones that no trained channel reads yet (_widened),
    listed as "widened". Blocks and a context are gained whole: a file holding part of one is refused,
    as is any other difference (narrower widths, a layer missing), naming the layers. Residual blocks
    of the file that the student leaves out are refused unless `drop_blocks` names each (e.g.
    ["bottleneck_block1"]: what they computed is lost, so the student no longer computes what the
    file did); listed as "dropped_blocks". The same network (every weight's shape alike, in order)
    takes the weights in order, whatever its layers are named.
    """
    start, digest = load_model(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if not drop_blocks and [tuple(w.shape) for w in start.weights] == [tuple(w.shape) for w in student.weights]:
        student.set_weights(start.get_weights())
        log.info("the student continues from the weights of %s (sha256 %s)", path, digest)
        return {"from": path, "sha256": digest}
    trained = {layer.name: layer for layer in start.layers if layer.weights}
    new_convs, new_context, kept_context, kept_block_convs, widened = [], [], [], [], []
    for layer in student.layers:
        if not layer.weights:
            continue
        source = trained.pop(layer.name, None)
        if source is not None and NEW_CONTEXT_CONV.fullmatch(layer.name):
            kept_context.append(layer.name)
        elif source is not None and NEW_BLOCK_CONV.fullmatch(layer.name):
            kept_block_convs.append(layer.name)
        if source is None and NEW_CONTEXT_CONV.fullmatch(layer.name):
            new_context.append(layer.name)
            continue
        if source is None and NEW_BLOCK_CONV.fullmatch(layer.name):
            new_convs.append(layer.name)
            if layer.name.endswith("conv2"):
                layer.set_weights([np.zeros(w.shape, "float32") for w in layer.weights])
            continue
        shapes = [tuple(w.shape) for w in (source.weights if source else [])], [tuple(w.shape) for w in layer.weights]
        if shapes[0] == shapes[1]:
            layer.set_weights(source.get_weights())
            continue
        grown = _widened(layer, source) if source is not None else None
        if grown is None:
            raise InputError(f"distill.student_init={path}: its weights do not fit the configured student at layer "
                             f"{layer.name} ({shapes[0] or 'absent'} vs {shapes[1]}; check student.widths, blocks and "
                             f"global_context: a student may only gain residual blocks, a global context or width)")
        layer.set_weights(grown)
        widened.append(layer.name)
    dropped = sorted(drop_blocks)
    for block in dropped:
        convs = [f"{block}_conv1", f"{block}_conv2"]
        if not all(name in trained for name in convs):
            blocks = sorted({name.rsplit("_", 1)[0] for name in trained if NEW_BLOCK_CONV.fullmatch(name)})
            raise InputError(f"distill.drop_blocks names {block!r}, which {path} does not hold beyond the configured "
                             f"student; the blocks it could drop: {blocks}")
        for name in convs:
            trained.pop(name)
    if trained:
        raise InputError(f"distill.student_init={path}: its layers {sorted(trained)} have no place in the configured "
                         f"student (check student.widths, blocks and global_context: a student may only gain residual "
                         f"blocks, a global context or width; name residual blocks to leave out in distill.drop_blocks)")
    new_blocks = sorted({name.rsplit("_", 1)[0] for name in new_convs})
    # a half-present block or context would not start as an identity (a trained conv2 after a fresh conv1)
    half_blocks = sorted(name for name in kept_block_convs if name.rsplit("_", 1)[0] in new_blocks)
    if half_blocks or (new_context and kept_context):
        present, missing = ((half_blocks, [n for n in new_convs if n.rsplit("_", 1)[0] in new_blocks]) if half_blocks
                            else (kept_context, new_context))
        raise InputError(f"distill.student_init={path}: it holds only part of a residual block or of the global "
                         f"context (present: {present}; missing: {missing}); a student may gain whole residual "
                         f"blocks or a whole global context only")
    log.info("the student grows from the weights of %s (sha256 %s); new residual blocks and context layers start as "
             "identities: %s %s; widened: %s; dropped: %s", path, digest, new_blocks, new_context, widened, dropped)
    grown = {"from": path, "sha256": digest, "new_blocks": new_blocks}
    for key, names in (("new_context", new_context), ("widened", widened), ("dropped_blocks", dropped)):
        if names:
            grown[key] = names
    return grown


def start_from_teacher(student_init: str, teacher: keras.Model, student: keras.Model, batches,
                       energy_batches: int = 8, drop_blocks=()) -> dict | None:
    """Gives the student its teacher's strongest channels and blocks (kd_tf.denoise.inherit) or,
    for a blind FFDNet-shaped student of an FFDNet teacher, the teacher's channels refitted layer by
    layer (kd_tf.denoise.ffdnet_student), when `student_init` asks for it ("auto": whenever the pair
    fits); returns what was kept, or None when the student keeps its random weights. `batches`:
    (x, clean) pairs, x the noisy patches or, for a non-blind teacher, with_noise_level's dict. A
    .keras path: the student continues from that model's weights (same widths and blocks),
    returned as {"from": path}; a student with more residual blocks or width grows from it, and leaves out
    the residual blocks named in `drop_blocks` (continue_from)."""
    if student_init == "random":
        return None
    if student_init.endswith(".keras"):
        return continue_from(student_init, student, drop_blocks)
    try:
        if is_blind_ffdnet(student):                # the pair first: a blind teacher's batches hold no sigma
            problem = ffdnet_inheritance_problem(teacher, student)
            if problem:
                raise InputError(problem)
            kept = inherit_from_ffdnet(teacher, student, [x["teacher_inputs"] for x, _ in batches.take(energy_batches)])
        else:
            kept = inherit_from_teacher(teacher, student, batches.take(energy_batches).map(
                lambda x, clean: x["inputs"] if isinstance(x, dict) else x))
    except ValueError as error:                     # also Keras' own, e.g. a teacher of other channels
        if student_init == "teacher":
            raise InputError(f"distill.student_init=teacher: {error}") from None
        log.info("the student starts from random weights (distill.student_init=auto: %s)", error)
        return None
    log.info("the student starts from the teacher's strongest channels; %s",
             f"refitted, relative errors {np.round(kept['relative_error'], 4).tolist()}" if "relative_error" in kept
             else f"residual blocks kept: {kept['blocks']}")
    return kept


def inherited_learning_rate(config: denoise_config.DistillJobConfig, student: keras.Model) -> float:
    """The peak rate of a student that starts from its teacher's weights: distill.inherited_learning_rate,
    or by default train.learning_rate for a U-Net (copied channels, holes to relearn) and a tenth of it
    for a refitted FFDNet-shaped student (a close copy of the teacher, fine-tuned)."""
    if config.distill.inherited_learning_rate is not None:
        return config.distill.inherited_learning_rate
    return config.train.learning_rate / 10 if is_blind_ffdnet(student) else config.train.learning_rate


def distill_steps(config: denoise_config.DistillJobConfig) -> int:
    """Steps of the distillation phase: the budget less the fine-tuning phase's."""
    return config.train.steps - config.finetune.steps


def batches_to_cache(config: denoise_config.DistillJobConfig, steps: int | None = None) -> int:
    """Teacher batches for offline distillation of a phase of `steps` steps (default: the
    student's distillation phase): as configured, else min(300, steps) when only outputs are
    distilled (features, attention and Jacobian need the live teacher). 300 batches of 64x64 take 0.35 GB."""
    if config.distill.cache_batches is not None:
        return config.distill.cache_batches
    live = config.distill.features or config.distill.attention or config.distill.jacobian
    return 0 if live else min(300, distill_steps(config) if steps is None else steps)


def train_own_objective(model: keras.Model, train: cfg.TrainConfig, stream, skip: int, paths: RunPaths,
                        validation: tuple, output: cfg.OutputConfig, tag: str, strategy):
    """Trains `model` on its own objective alone (reconstruction MSE, no teacher) for train.steps,
    on the patch stream from batch `skip` on: the from-scratch comparison, and the fine-tuning
    phase after distillation. Resumes from its own checkpoints (`tag`)."""
    epochs, per_epoch = epochs_for(train)
    with strategy.scope():
        model.compile(optimizer=with_loss_scaling(cosine_optimizer(train), model), loss="mse", metrics=[psnr_metric])
    val_noisy, val_clean, val_batch = validation
    return model.fit(stream(skip + resumed_batches(paths.backup / tag, per_epoch)), epochs=epochs,
                     steps_per_epoch=per_epoch, validation_data=(val_noisy, val_clean),
                     validation_batch_size=val_batch, shuffle=False,
                     callbacks=standard_callbacks(paths, val_noisy, val_clean, output, tag, train.steps),
                     verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")


@dataclasses.dataclass
class DistillPhase:
    """What one distillation phase left: the trained network (in the training dtype policy), its
    random starting weights, what it inherited, its history and what it cost."""

    model: keras.Model
    initial_weights: list
    inherited: dict | None
    history: dict
    timings: dict


def distill_phase(config: denoise_config.DistillJobConfig, teacher_path: str, reference_teacher: keras.Model,
                  net: denoise_config.NetConfig, name: str, steps: int, stream, paths: RunPaths, validation: tuple,
                  strategy, tag: str) -> DistillPhase:
    """`teacher_path` teaches a new build_net `net` for `steps` steps with config.distill's losses
    and student_loss_weight (offline, from cached teacher outputs, when only outputs are distilled); the new
    network starts from the strongest channels of `reference_teacher` (the same teacher in
    float32) when distill.student_init allows. Resumes from its own checkpoints (`tag`)."""
    train = dataclasses.replace(config.train, steps=steps)
    weight = config.distill.student_loss_weight
    student_loss_weight = schedules.from_config(weight.kind, weight.start, weight.end, steps)
    features = [(p.teacher, p.student, p.weight) for p in config.distill.features]
    attention = [(p.teacher, p.student, p.weight) for p in config.distill.attention]
    with strategy.scope():                          # teacher (frozen), student, adapters, optimizer on every replica
        teacher = load_teacher(teacher_path, config.train.mixed_precision)
        student = build_net(net, name, config.train.mixed_precision)
    val_noisy, val_clean, val_batch = validation
    if takes_noise_level(teacher):                  # a non-blind teacher (FFDNet) gets each patch's sigma too
        teacher_stream = lambda skip=0: stream(skip, noise_level_for_teacher=True)
        val_noisy = with_noise_level(val_noisy, config.data.val_sigma)
    else:
        teacher_stream = stream
    with strategy.scope():
        initial_weights = student.get_weights()     # the scratch run starts from the very same point
        started = time.time()
        inherited = start_from_teacher(config.distill.student_init, reference_teacher, student, teacher_stream(),
                                       drop_blocks=config.distill.drop_blocks)
        inherit_seconds = time.time() - started
        if inherited and "from" not in inherited:
            train = dataclasses.replace(train, learning_rate=inherited_learning_rate(config, student))
            inherited["learning_rate"] = train.learning_rate
            log.info("inherited weights: peak learning rate %g (distill.inherited_learning_rate)", train.learning_rate)
        distiller = as_input_error(Distiller)(teacher, student, student_loss_weight=student_loss_weight,
                              output_loss=config.distill.output_loss,
                              features=features, attention=attention, jacobian=config.distill.jacobian,
                              jacobian_seed=config.train.seed)          # checks shapes and layer names first
        distiller.compile(optimizer=cosine_optimizer(train))
    epochs, per_epoch = epochs_for(train)
    log.info("distilling: teacher %s -> %s %s, %d steps", teacher_path, name, net, steps)
    started = time.time()
    done, timings = resumed_batches(paths.backup / tag, per_epoch), {"inherit_seconds": inherit_seconds}
    dataset = teacher_stream(done)
    cached = batches_to_cache(config, steps)
    if cached and done < epochs * per_epoch:
        cache = cache_teacher_outputs(teacher, teacher_stream(), cached, progress=log.info)
        dataset = cache.dataset(config.data.batch_size, seed=config.train.seed, skip_batches=done,
                                augment=config.distill.cache_augment)
        timings.update(cache_seconds=cache.seconds, cache_samples=len(cache))
    history = distiller.fit(dataset, epochs=epochs, steps_per_epoch=per_epoch,
                            validation_data=(val_noisy, val_clean), validation_batch_size=val_batch, shuffle=False,
                            callbacks=standard_callbacks(paths, val_noisy, val_clean, config.output, tag, steps),
                            verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    timings["seconds"] = time.time() - started
    return DistillPhase(student, initial_weights, inherited, history.history, timings)


def as_input_error(build):
    """`build` whose ValueErrors are InputErrors: the Distiller checks what the config and the
    models give it (layer names, shapes), which the CLI reports in one line."""
    def checked(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except InputError:
            raise
        except ValueError as error:
            raise InputError(str(error)) from error
    return checked
def assistant_plan(config: denoise_config.DistillJobConfig, teacher: keras.Model) -> tuple[bool, str]:
    """Whether the main job distills through config.assistant, and why (logged and reported)."""
    use = config.assistant.use
    if use != "auto":
        return use == "always", f"assistant.use={use}"
    assistant = build_unet(config.assistant.widths, config.assistant.blocks, name="assistant_probe")
    student = build_net(config.student, "student_probe")
    pairs = ((teacher, assistant, "teacher -> assistant"), (assistant, student, "assistant -> student"))
    for upper, lower, pair in pairs:
        problem = student_inheritance_problem(upper, lower)
        if problem:
            return False, f"assistant.use=auto, skipped: {pair}: {problem}"
    sizes = [count_params(m) for m in (teacher, assistant, student)]
    if not sizes[0] > sizes[1] > sizes[2]:
        return False, (f"assistant.use=auto, skipped: the assistant ({sizes[1]:,} params) is not strictly "
                       f"between the teacher ({sizes[0]:,}) and the student ({sizes[2]:,})")
    return True, f"assistant.use=auto: {sizes[0]:,} -> {sizes[1]:,} -> {sizes[2]:,} params"


def distill(config: denoise_config.DistillJobConfig, strategy=None) -> dict:
    """The main job: distill the teacher into the student (through the assistant first, when
    config.assistant says so; then, optionally, fine-tune it on its own objective), train the same
    student from scratch with the same budget for comparison, evaluate all of them on the held-out photos.
    `strategy`: a tf.distribute strategy instead of train.strategy's (a TPUStrategy, say)."""
    config.validate()
    if config.data.unlabeled:                       # photos with no clean versions: the teacher labels them
        from kd_tf.denoise.unlabeled import distill_unlabeled

        return distill_unlabeled(config)
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)   # first: may set up collectives
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    split, stream, val_noisy, val_clean = training_data(config.data, config.train.seed)
    reference_teacher = load_float_teacher(config.distill.teacher)     # the report's teacher row
    paths = RunPaths(config.output, "distill", chief=distribute.is_chief(strategy))
    _record_run(paths, config, split)
    validation = distribute.even_validation(val_noisy, val_clean, strategy)
    timings, histories, evaluated = {}, {}, {"teacher": reference_teacher}

    use_assistant, why = assistant_plan(config, reference_teacher)
    log.info("assistant: %s", why)
    teacher_path, assistant = config.distill.teacher, None
    if use_assistant:
        steps = config.assistant.steps_for(config.train.steps)
        assistant_net = denoise_config.NetConfig(widths=config.assistant.widths, blocks=config.assistant.blocks)
        phase = distill_phase(config, teacher_path, reference_teacher, assistant_net, "assistant",
                              steps, stream, paths, validation, strategy, "assistant")
        evaluated["assistant"] = float32_copy(phase.model, config.assistant.widths, config.assistant.blocks)
        teacher_path = str(save_model(evaluated["assistant"], paths.root / "assistant.keras"))
        histories["assistant"] = phase.history
        timings.update({f"assistant_{key}": value for key, value in phase.timings.items()})
        assistant = {"widths": config.assistant.widths, "blocks": config.assistant.blocks, "steps": steps,
                     "path": teacher_path, "inherited": phase.inherited is not None}

    phase = distill_phase(config, teacher_path, evaluated.get("assistant", reference_teacher), config.student,
                          "student", distill_steps(config), stream, paths, validation, strategy, "distill")
    student, inherited, histories["distill"] = phase.model, phase.inherited, phase.history
    timings.update(distill_seconds=phase.timings["seconds"], inherit_seconds=phase.timings["inherit_seconds"])
    if "cache_seconds" in phase.timings:
        timings.update(teacher_cache_seconds=phase.timings["cache_seconds"],
                       teacher_cache_samples=phase.timings["cache_samples"])
    if config.finetune.steps:
        log.info("fine-tuning the student on its own objective alone: %d steps", config.finetune.steps)
        finetune_train = dataclasses.replace(
            config.train, steps=config.finetune.steps, learning_rate=config.finetune.learning_rate,
            final_learning_rate_fraction=config.finetune.final_learning_rate_fraction)
        started = time.time()     # fresh patches: the ones after those the distillation phase drew
        histories["finetune"] = train_own_objective(student, finetune_train, stream, distill_steps(config), paths,
                                                    validation, config.output, "finetune", strategy).history
        timings["finetune_seconds"] = time.time() - started
    students = {"student (distilled)": float32_net(student, config.student)}
    student_path = save_model(students["student (distilled)"], paths.root / "student.keras")
    if config.save_to and paths.chief:
        student_path = save_model(students["student (distilled)"], config.save_to)

    if config.distill.compare_scratch:
        with strategy.scope():
            scratch = build_net(config.student, "student_scratch", config.train.mixed_precision)
            scratch.set_weights(phase.initial_weights)
        log.info("training the same student from scratch (its own loss only) with the same budget")
        started = time.time()
        histories["scratch"] = train_own_objective(scratch, config.train, stream, 0, paths, validation,
                                                   config.output, "scratch", strategy).history
        timings["scratch_seconds"] = time.time() - started
        students["student (scratch)"] = float32_net(scratch, config.student)
        save_model(students["student (scratch)"], paths.root / "student_scratch.keras")
    if not paths.chief:
        return worker_report(paths, "distill", histories["distill"])

    report = _report(config, paths, split, {**evaluated, **students}, "distill")
    report.update(timings=timings, history=histories, student_init=(inherited.get("from", "teacher") if inherited else "random"),
                  inherited=inherited, student_path=str(student_path), teacher_path=config.distill.teacher,
                  assistant=assistant, assistant_decision=why)
    report["report_path"] = str(paths.write_json("report.json", report))      # kept even if export fails
    if config.export_formats:
        exported = export_student(denoise_config.ExportJobConfig(
            model=str(paths.root / "student.keras"), out_dir=str(paths.root / "export"),
            formats=config.export_formats, data=config.data, qat_steps=config.qat_steps,
            calibration_batches=config.export_calibration_batches,
            output=dataclasses.replace(config.output, run_name=paths.name)))
        report["export"] = {key: exported[key] for key in ("formats", "float_keras_psnr", "report_path")}
        report["table"] += "\n\nDeployment parity (distilled student):\n" + exported["table"]
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def distill_chain(configs: list[denoise_config.DistillJobConfig]) -> dict:
    """Multi-stage distillation (teacher -> assistant -> ... -> student; Mirzadeh et al., 2020):
    each config is one whole `distill` stage, and from the second on its teacher is the student
    the stage before saved. A run name shared by the stages becomes <name>-stage<k>, so that
    rerunning the chain resumes each stage in its own folder. Each stage is a whole job, its own
    assistant stage included when its config.assistant fits (the built-in assistant is the short
    form of this chain: one job, one report)."""
    if not configs:
        raise ValueError("distill_chain needs at least one config")
    names = [c.output.run_name for c in configs]
    reports, teacher = [], None
    for index, config in enumerate(configs, start=1):
        changes = {}
        if teacher is not None:
            if config.distill.teacher not in (denoise_config.DEFAULT_TEACHER, teacher):
                log.info("stage %d: its teacher is stage %d's student %s (distill.teacher=%s is replaced)",
                         index, index - 1, teacher, config.distill.teacher)
            changes["distill"] = dataclasses.replace(config.distill, teacher=teacher)
        if config.output.run_name is not None and names.count(config.output.run_name) > 1:
            changes["output"] = dataclasses.replace(config.output, run_name=f"{config.output.run_name}-stage{index}")
        config = dataclasses.replace(config, **changes)
        log.info("stage %d of %d: %s -> student %s", index, len(configs), config.distill.teacher, config.student)
        reports.append(distill(config))
        teacher = reports[-1]["student_path"]
    summary = [[str(k), r["teacher_path"], describe_net(denoise_config.NetConfig(**r["config"]["student"])),
                f"{r['methods']['teacher']['macs_512'] / 1e9:.2f}" if r["methods"]["teacher"]["macs_512"] else "-",
                f"{r['methods']['student (distilled)']['macs_512'] / 1e9:.2f}", r["student_path"]]
               for k, r in enumerate(reports, start=1)]
    table = "\n\n".join(f"Stage {k}: {r['teacher_path']} -> {r['student_path']}\n{r['table']}"
                         for k, r in enumerate(reports, start=1))
    report = {"job": "distill (chain)", "stages": [{key: r[key] for key in ("run", "teacher_path", "student_path",
                                                                             "report_path", "methods")}
                                                   for r in reports]}
    report["table"] = render_table(["stage", "teacher", "student", "teacher GMACs@512",
                                    "student GMACs@512", "student saved to"], summary) + "\n\n" + table
    report["report_path"] = str(write_json(Path(reports[-1]["report_path"]).parent / "chain_report.json", report))
    return report


def evaluate_saved(config: denoise_config.DistillJobConfig, teacher: str | None, students: dict[str, str]) -> dict:
    """`python -m kd_tf evaluate`: the held-out report for saved models."""
    config.validate()
    paths = RunPaths(config.output, "evaluate")
    split = _split(config.data)
    teacher = teacher or config.distill.teacher
    if not students and Path(denoise_config.DEFAULT_STUDENT).exists():
        students = {"student": denoise_config.DEFAULT_STUDENT}
    heldout = {**split.heldout, **{f"heldout2/{k}": v for k, v in heldout2_photos(config.data.corpus_dir()).items()}}
    for name, path in {"teacher": teacher, **students}.items():
        seen = trained_on(path, heldout)
        if seen:
            raise InputError(f"refusing to score {name} ({path}) on {len(seen)} image(s) it trained on: "
                             f"{', '.join(seen[:5])} (its run's split.json); evaluate it with the data settings "
                             f"of the run that made it")
    models = {"teacher": load_model(teacher), **{name: load_model(path) for name, path in students.items()}}
    report = _report(config, paths, split, models, "evaluate")
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def _report(config, paths, split, models, job) -> dict:
    report = evaluate(methods_for(models, config.eval.baselines), _limit(split.heldout, config.eval),
                      config.eval.sigmas, config.eval.seed, config.eval.timing_size, config.eval.cbm3d_sigmas,
                      progress=log.info)
    teacher_macs = report["methods"]["teacher"]["macs_512"]
    for entry in report["methods"].values():
        if entry["macs_512"] and teacher_macs:
            entry["teacher_macs_ratio"] = teacher_macs / entry["macs_512"]
    report.update(job=job, run=paths.name, config=cfg.to_dict(config), heldout=sorted(split.heldout),
                  tensorboard=str(paths.logs))
    report["table"] = "held-out set 1:\n" + format_table(report, config.eval.timing_size)
    heldout2 = {name: most_textured_window(image, HELDOUT2_CROP)
                for name, image in heldout2_photos(config.data.corpus_dir()).items()}
    if heldout2:
        second = evaluate(methods_for(models, config.eval.baselines), _limit(heldout2, config.eval),
                          config.eval.sigmas, config.eval.seed, config.eval.timing_size, config.eval.cbm3d_sigmas,
                          progress=log.info, timing=False)
        report["heldout2"] = second
        report["table"] += (f"\n\nheld-out set 2 (photo corpus, the most textured {HELDOUT2_CROP} px window "
                            f"of each):\n" + format_table(second, config.eval.timing_size))
    return report


def denoise(model: str, source: str, output_dir: str, threads: int = 2, overlap: int = 32,
            sigma: float | None = None, upscale: bool = False) -> dict:
    """`python -m kd_tf denoise` (and `upscale`): any exported model over a file or a folder
    (`sigma`, 0-255, for a model that takes the noise level; `upscale`: a super-resolution model)."""
    from kd_tf.inference import denoise_path

    started = time.time()
    result = denoise_path(model, source, output_dir, num_threads=threads, overlap=overlap, sigma=sigma,
                          upscale=upscale)
    report = {"job": "upscale" if upscale else "denoise", "scale": result["scale"], "model": model, "input": source,
              "output": output_dir, "sigma": sigma, "written": len(result["written"]),
              "skipped": len(result["skipped"]), "seconds": time.time() - started, "files": result}
    report["table"] = render_table(["model", "written", "skipped", "seconds"],
                                   [[model, str(report["written"]), str(report["skipped"]), f"{report['seconds']:.1f}"]])
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    report["report_path"] = str(write_json(Path(output_dir) / f"{report['job']}_report.json", report))
    return report
