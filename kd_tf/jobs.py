"""The work behind each CLI verb: train a teacher, distill a student, evaluate.

Each job writes its artifacts and a JSON report to a run folder (`runs/<run>`), logs to
`tensorboard_logs/<run>`, resumes from its last completed epoch when rerun with the same run
name, and returns its report so that the CLI (or a notebook) can print it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kd_tf import config as cfg
from kd_tf import distribute, schedules
from kd_tf.callbacks import ImageGridCallback, StopOnNonFiniteLoss
from kd_tf.complexity import count_params
from kd_tf.data import fixed_crops, load_split, patch_dataset
from kd_tf.evaluation import evaluate, format_table, methods_for, render_table
from kd_tf.metrics import psnr_metric
from kd_tf.distiller import Distiller
from kd_tf.model_io import float32_copy, load_model, save_model, with_dtype_policy
from kd_tf.nets import build_unet
from kd_tf.nets.inherit import inherit_from_teacher
from kd_tf.teacher_cache import cache_teacher_outputs

log = logging.getLogger(__name__)


class RunPaths:
    """The folders of one run: artifacts in runs/<name>, TensorBoard logs in tensorboard_logs/<name>.

    On a multi-worker run's other workers (chief=False) artifacts and logs go to a scratch folder
    removed at exit; `backup` stays the chief's, which every worker restores from."""

    def __init__(self, output: cfg.OutputConfig, verb: str, chief: bool = True):
        self.name = output.run_name or f"{verb}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        self.root = Path(output.runs_dir) / self.name
        self.logs = Path(output.log_dir) / self.name
        self.backup = self.root / "backup"
        self.chief = chief
        if not chief:
            scratch = Path(distribute.scratch_dir())
            self.root, self.logs = scratch / "runs" / self.name, scratch / "logs" / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, payload: dict) -> Path:
        path = self.root / name
        temporary = path.with_suffix(".partial")
        temporary.write_text(json.dumps(payload, indent=2, default=_jsonable))
        os.replace(temporary, path)
        return path


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def cosine_optimizer(train: cfg.TrainConfig) -> keras.optimizers.Optimizer:
    """Adam with cosine decay over the whole step budget (the schedule resumes with the step)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        train.learning_rate, decay_steps=train.steps, alpha=train.final_learning_rate_fraction)
    return keras.optimizers.Adam(schedule)


def epochs_for(train: cfg.TrainConfig) -> tuple[int, int]:
    """(epochs, steps_per_epoch) covering at least `train.steps` steps."""
    per_epoch = min(train.steps_per_epoch, train.steps)
    return -(-train.steps // per_epoch), per_epoch


def standard_callbacks(paths: RunPaths, val_noisy, val_clean, output: cfg.OutputConfig, tag: str):
    """TensorBoard scalars, image grids, and BackupAndRestore so a killed run resumes."""
    spread = max(1, len(val_noisy) // 6)                 # grid rows from as many held-out photos as possible
    return [
        keras.callbacks.TensorBoard(log_dir=str(paths.logs / tag), update_freq="epoch", write_graph=False),
        ImageGridCallback(val_noisy[::spread], val_clean[::spread], paths.logs / tag / "images",
                          every=output.image_grid_every),
        distribute.BackupAndRestore(str(paths.backup / tag), chief=paths.chief, delete_checkpoint=False,
                                    double_checkpoint=True),   # a kill mid-save falls back one epoch
        StopOnNonFiniteLoss(paths.backup / tag),
    ]


def _data(config_data: cfg.DataConfig, seed: int):
    """The split, a function giving the training stream from a batch on, and validation crops."""
    split = load_split(config_data.data_dir, config_data.heldout_fraction, config_data.split_seed,
                       min_size=config_data.patch_size)

    def stream(skip_batches: int = 0):
        return patch_dataset(split.train, config_data.patch_size, config_data.batch_size,
                             (config_data.sigma_min, config_data.sigma_max), seed=seed, skip_batches=skip_batches)

    val_noisy, val_clean = fixed_crops(split.heldout, config_data.val_crop, config_data.val_crops_per_image,
                                       config_data.val_sigma)
    log.info("training on %d images, holding out %d: %s", len(split.train), len(split.heldout),
             ", ".join(sorted(split.heldout)))
    return split, stream, val_noisy, val_clean


def resumed_batches(backup_dir: Path, steps_per_epoch: int) -> int:
    """Batches a run already trained on, from its BackupAndRestore metadata (0 for a new run),
    so its data stream continues where it stopped instead of replaying the first batches."""
    metadata = Path(backup_dir) / "training_metadata.json"
    if not metadata.is_file():
        return 0
    epoch = int(json.loads(metadata.read_text()).get("epoch", 0))
    if epoch:
        log.info("resuming %s after epoch %d", backup_dir.name, epoch)
    return epoch * steps_per_epoch


def _worker_report(paths: RunPaths, job: str, history: dict) -> dict:
    """What a multi-worker run's other workers return: the chief evaluates, saves and reports."""
    return {"job": job, "run": paths.name, "history": history, "report_path": None,
            "table": f"{job}: this worker trained in sync with the chief, which writes the run folder"}


def train_teacher(config: cfg.TeacherJobConfig, strategy=None) -> dict:
    """Trains the residual U-Net teacher on noisy/clean patches and saves it in float32.
    `strategy`: a tf.distribute strategy instead of train.strategy's (a TPUStrategy, say)."""
    config.validate()
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)   # first: may set up collectives
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    paths = RunPaths(config.output, "teacher", chief=distribute.is_chief(strategy))
    split, stream, val_noisy, val_clean = _data(config.data, config.train.seed)
    val_noisy, val_clean, val_batch = distribute.even_validation(val_noisy, val_clean, strategy)

    with strategy.scope():                          # the model, optimizer and metrics on every replica
        model = build_unet(config.net.widths, config.net.blocks, name="teacher",
                           mixed_precision=config.train.mixed_precision)
        if config.init_from:
            model.set_weights(load_model(config.init_from).get_weights())
            log.info("continuing from the weights of %s", config.init_from)
        model.compile(optimizer=cosine_optimizer(config.train), loss="mse", metrics=[psnr_metric])
    epochs, per_epoch = epochs_for(config.train)
    started = time.time()
    history = model.fit(stream(resumed_batches(paths.backup / "teacher", per_epoch)), epochs=epochs,
                        steps_per_epoch=per_epoch,
                        validation_data=(val_noisy, val_clean), validation_batch_size=val_batch, shuffle=False,
                        callbacks=standard_callbacks(paths, val_noisy, val_clean, config.output, "teacher"),
                        verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    seconds = time.time() - started
    if not paths.chief:
        return _worker_report(paths, "train-teacher", history.history)

    teacher = float32_copy(model, config.net.widths, config.net.blocks)
    save_model(teacher, paths.root / "teacher.keras")
    if config.save_to:
        save_model(teacher, config.save_to)
    report = _report(config, paths, split, {"teacher": teacher}, "train-teacher")
    report.update(train_seconds=seconds, history=history.history, saved_to=config.save_to)
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def _limit(heldout: dict, eval_config: cfg.EvalConfig) -> dict:
    if eval_config.max_images is None:
        return heldout
    return {name: heldout[name] for name in sorted(heldout)[:eval_config.max_images]}


def load_float_teacher(path: str) -> keras.Model:
    """The teacher as saved (float32), frozen: what weight inheritance copies and the report scores."""
    if not Path(path).exists():
        raise FileNotFoundError(f"teacher {path!r} does not exist: train one with "
                                f"`python -m kd_tf train-teacher` or pass --teacher PATH (.keras, .h5, SavedModel dir)")
    teacher = load_model(path)
    teacher.trainable = False
    return teacher


def load_teacher(path: str, mixed_precision: bool) -> keras.Model:
    """The frozen teacher. With mixed precision it computes in bfloat16 and keeps its weights in
    bfloat16 too: a frozen model needs no float32 master copy, and under `mixed_bfloat16` it would
    cast every kernel on every step. Its outputs are the same to the bit and its output layers stay
    float32; the gain is small (1.02x on the distillation step, benchmarks/RESULTS.md section 6)."""
    teacher = load_float_teacher(path)
    if mixed_precision and Path(path).is_file():
        try:
            teacher = with_dtype_policy(teacher, "bfloat16")
        except ValueError as error:                  # subclassed models cannot be cloned
            log.warning("teacher stays in float32 (%s)", error)
        teacher.trainable = False
    return teacher


def start_from_teacher(student_init: str, teacher: keras.Model, student: keras.Model, batches,
                       energy_batches: int = 8) -> dict | None:
    """Gives the student its teacher's strongest channels and blocks (kd_tf.nets.inherit) when
    `student_init` asks for it ("auto": whenever both are build_unet networks that fit); returns
    what was kept, or None when the student keeps its random weights."""
    if student_init == "random":
        return None
    try:
        kept = inherit_from_teacher(teacher, student, batches.take(energy_batches).map(lambda noisy, clean: noisy))
    except ValueError as error:
        if student_init == "teacher":
            raise ValueError(f"distill.student_init=teacher: {error}") from None
        log.info("the student starts from random weights (distill.student_init=auto: %s)", error)
        return None
    log.info("the student starts from the teacher's strongest channels; residual blocks kept: %s", kept["blocks"])
    return kept


def distill_steps(config: cfg.DistillJobConfig) -> int:
    """Steps of the distillation phase: the budget less the fine-tuning phase's."""
    return config.train.steps - config.finetune.steps


def batches_to_cache(config: cfg.DistillJobConfig, steps: int | None = None) -> int:
    """Teacher batches for offline distillation of a phase of `steps` steps (default: the
    student's distillation phase): as configured, else min(1000, steps) when only outputs are
    distilled (features, attention and Jacobian need the live teacher). 1000 batches of 64x64 take 1.2 GB."""
    if config.distill.cache_batches is not None:
        return config.distill.cache_batches
    live = config.distill.features or config.distill.attention or config.distill.jacobian
    return 0 if live else min(1000, distill_steps(config) if steps is None else steps)


def train_own_objective(model: keras.Model, train: cfg.TrainConfig, stream, skip: int, paths: RunPaths,
                        validation: tuple, output: cfg.OutputConfig, tag: str, strategy):
    """Trains `model` on its own objective alone (reconstruction MSE, no teacher) for train.steps,
    on the patch stream from batch `skip` on: the from-scratch comparison, and the fine-tuning
    phase after distillation. Resumes from its own checkpoints (`tag`)."""
    epochs, per_epoch = epochs_for(train)
    with strategy.scope():
        model.compile(optimizer=cosine_optimizer(train), loss="mse", metrics=[psnr_metric])
    val_noisy, val_clean, val_batch = validation
    return model.fit(stream(skip + resumed_batches(paths.backup / tag, per_epoch)), epochs=epochs,
                     steps_per_epoch=per_epoch, validation_data=(val_noisy, val_clean),
                     validation_batch_size=val_batch, shuffle=False,
                     callbacks=standard_callbacks(paths, val_noisy, val_clean, output, tag),
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


def distill_phase(config: cfg.DistillJobConfig, teacher_path: str, reference_teacher: keras.Model,
                  net: cfg.NetConfig, name: str, steps: int, stream, paths: RunPaths, validation: tuple,
                  strategy, tag: str) -> DistillPhase:
    """`teacher_path` (loaded as `reference_teacher` in float32, which weight inheritance copies) teaches a new build_unet `net` for `steps` steps with config.distill's losses
    and alpha (offline, from cached teacher outputs, when only outputs are distilled); the new
    network starts from its teacher's strongest channels when distill.student_init allows.
    Resumes from its own checkpoints (`tag`)."""
    train = dataclasses.replace(config.train, steps=steps)
    alpha = schedules.from_config(config.distill.alpha.kind, config.distill.alpha.start, config.distill.alpha.end,
                                  steps)
    features = [(p.teacher, p.student, p.weight) for p in config.distill.features]
    attention = [(p.teacher, p.student, p.weight) for p in config.distill.attention]
    with strategy.scope():                          # teacher (frozen), student, adapters, optimizer on every replica
        teacher = load_teacher(teacher_path, config.train.mixed_precision)
        student = build_unet(net.widths, net.blocks, name=name, mixed_precision=config.train.mixed_precision)
        initial_weights = student.get_weights()     # the scratch run starts from the very same point
        inherited = start_from_teacher(config.distill.student_init, reference_teacher, student, stream())
        distiller = Distiller(teacher, student, alpha=alpha, output_loss=config.distill.output_loss,
                              features=features, attention=attention, jacobian=config.distill.jacobian,
                              jacobian_seed=config.train.seed)          # checks shapes and layer names first
        distiller.compile(optimizer=cosine_optimizer(train))
    val_noisy, val_clean, val_batch = validation
    epochs, per_epoch = epochs_for(train)
    log.info("distilling: teacher %s -> %s %s, %d steps", teacher_path, name, net, steps)
    started = time.time()
    done, timings = resumed_batches(paths.backup / tag, per_epoch), {}
    dataset = stream(done)
    cached = batches_to_cache(config, steps)
    if cached and done < epochs * per_epoch:
        cache = cache_teacher_outputs(teacher, stream(), cached, progress=log.info)
        dataset = cache.dataset(config.data.batch_size, seed=config.train.seed, skip_batches=done)
        timings.update(cache_seconds=cache.seconds, cache_samples=len(cache))
    history = distiller.fit(dataset, epochs=epochs, steps_per_epoch=per_epoch,
                            validation_data=(val_noisy, val_clean), validation_batch_size=val_batch, shuffle=False,
                            callbacks=standard_callbacks(paths, val_noisy, val_clean, config.output, tag),
                            verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    timings["seconds"] = time.time() - started
    return DistillPhase(student, initial_weights, inherited, history.history, timings)


def assistant_plan(config: cfg.DistillJobConfig, teacher: keras.Model) -> tuple[bool, str]:
    """Whether the main job distills through config.assistant, and why (logged and reported)."""
    from kd_tf.nets.inherit import inheritance_problem

    use = config.assistant.use
    if use != "auto":
        return use == "always", f"assistant.use={use}"
    assistant = build_unet(config.assistant.widths, config.assistant.blocks, name="assistant_probe")
    student = build_unet(config.student.widths, config.student.blocks, name="student_probe")
    for upper, lower, pair in ((teacher, assistant, "teacher -> assistant"), (assistant, student, "assistant -> student")):
        problem = inheritance_problem(upper, lower)
        if problem:
            return False, f"assistant.use=auto, skipped: {pair}: {problem}"
    sizes = [count_params(m) for m in (teacher, assistant, student)]
    if not sizes[0] > sizes[1] > sizes[2]:
        return False, (f"assistant.use=auto, skipped: the assistant ({sizes[1]:,} params) is not strictly "
                       f"between the teacher ({sizes[0]:,}) and the student ({sizes[2]:,})")
    return True, f"assistant.use=auto: {sizes[0]:,} -> {sizes[1]:,} -> {sizes[2]:,} params"


def distill(config: cfg.DistillJobConfig, strategy=None) -> dict:
    """The main job: distill the teacher into the student (through the assistant first, when
    config.assistant says so; then, optionally, fine-tune it on its own objective), train the same
    student from scratch with the same budget for comparison, evaluate all of them on the held-out photos.
    `strategy`: a tf.distribute strategy instead of train.strategy's (a TPUStrategy, say)."""
    config.validate()
    strategy = strategy or distribute.strategy_from_name(config.train.strategy)   # first: may set up collectives
    distribute.check_batch_size(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.train.seed)
    split, stream, val_noisy, val_clean = _data(config.data, config.train.seed)
    reference_teacher = load_float_teacher(config.distill.teacher)     # the report's teacher row
    paths = RunPaths(config.output, "distill", chief=distribute.is_chief(strategy))
    validation = distribute.even_validation(val_noisy, val_clean, strategy)
    timings, histories, evaluated = {}, {}, {"teacher": reference_teacher}

    use_assistant, why = assistant_plan(config, reference_teacher)
    log.info("assistant: %s", why)
    teacher_path, assistant = config.distill.teacher, None
    if use_assistant:
        steps = config.assistant.steps_for(config.train.steps)
        phase = distill_phase(config, teacher_path, reference_teacher,
                              cfg.NetConfig(config.assistant.widths, config.assistant.blocks), "assistant", steps,
                              stream, paths, validation, strategy, "assistant")
        evaluated["assistant"] = float32_copy(phase.model, config.assistant.widths, config.assistant.blocks)
        teacher_path = str(save_model(evaluated["assistant"], paths.root / "assistant.keras"))
        histories["assistant"] = phase.history
        timings.update({f"assistant_{key}": value for key, value in phase.timings.items()})
        assistant = {"widths": config.assistant.widths, "blocks": config.assistant.blocks, "steps": steps,
                     "path": teacher_path, "inherited": phase.inherited is not None}

    phase = distill_phase(config, teacher_path, evaluated.get("assistant", reference_teacher), config.student,
                          "student", distill_steps(config), stream, paths, validation, strategy, "distill")
    student, inherited, histories["distill"] = phase.model, phase.inherited, phase.history
    timings.update(distill_seconds=phase.timings["seconds"])
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
    students = {"student (distilled)": float32_copy(student, config.student.widths, config.student.blocks)}
    student_path = save_model(students["student (distilled)"], paths.root / "student.keras")
    if config.save_to and paths.chief:
        student_path = save_model(students["student (distilled)"], config.save_to)

    if config.distill.compare_scratch:
        with strategy.scope():
            scratch = build_unet(config.student.widths, config.student.blocks, name="student_scratch",
                                 mixed_precision=config.train.mixed_precision)
            scratch.set_weights(phase.initial_weights)
        log.info("training the same student from scratch (alpha = 0) with the same budget")
        started = time.time()
        histories["scratch"] = train_own_objective(scratch, config.train, stream, 0, paths, validation,
                                                   config.output, "scratch", strategy).history
        timings["scratch_seconds"] = time.time() - started
        students["student (scratch)"] = float32_copy(scratch, config.student.widths, config.student.blocks)
        save_model(students["student (scratch)"], paths.root / "student_scratch.keras")
    if not paths.chief:
        return _worker_report(paths, "distill", histories["distill"])

    report = _report(config, paths, split, {**evaluated, **students}, "distill")
    report.update(timings=timings, history=histories, student_init="teacher" if inherited else "random",
                  inherited=inherited, student_path=str(student_path), teacher_path=config.distill.teacher,
                  assistant=assistant, assistant_decision=why)
    report["report_path"] = str(paths.write_json("report.json", report))      # kept even if export fails
    if config.export_formats:
        exported = export_student(cfg.ExportJobConfig(
            model=str(paths.root / "student.keras"), out_dir=str(paths.root / "export"),
            formats=config.export_formats, data=config.data, qat_steps=config.qat_steps,
            qat_teacher=config.distill.teacher, output=dataclasses.replace(config.output, run_name=paths.name)))
        report["export"] = {key: exported[key] for key in ("formats", "float_keras_psnr", "report_path")}
        report["table"] += "\n\nDeployment parity (distilled student):\n" + exported["table"]
    report["report_path"] = str(paths.write_json("report.json", report))
    return report


def distill_chain(configs: list[cfg.DistillJobConfig]) -> dict:
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
            if config.distill.teacher not in (cfg.DEFAULT_TEACHER, teacher):
                log.info("stage %d: its teacher is stage %d's student %s (distill.teacher=%s is replaced)",
                         index, index - 1, teacher, config.distill.teacher)
            changes["distill"] = dataclasses.replace(config.distill, teacher=teacher)
        if config.output.run_name is not None and names.count(config.output.run_name) > 1:
            changes["output"] = dataclasses.replace(config.output, run_name=f"{config.output.run_name}-stage{index}")
        config = dataclasses.replace(config, **changes)
        log.info("stage %d of %d: %s -> student %s", index, len(configs), config.distill.teacher, config.student)
        reports.append(distill(config))
        teacher = reports[-1]["student_path"]
    summary = [[str(k), r["teacher_path"], str(r["config"]["student"]["widths"]),
                f"{r['methods']['teacher']['macs_512'] / 1e9:.2f}" if r["methods"]["teacher"]["macs_512"] else "-",
                f"{r['methods']['student (distilled)']['macs_512'] / 1e9:.2f}", r["student_path"]]
               for k, r in enumerate(reports, start=1)]
    table = "\n\n".join(f"Stage {k}: {r['teacher_path']} -> {r['student_path']}\n{r['table']}"
                         for k, r in enumerate(reports, start=1))
    report = {"job": "distill (chain)", "stages": [{key: r[key] for key in ("run", "teacher_path", "student_path",
                                                                             "report_path", "methods")}
                                                   for r in reports]}
    report["table"] = render_table(["stage", "teacher", "student widths", "teacher GMACs@512",
                                    "student GMACs@512", "student saved to"], summary) + "\n\n" + table
    last = Path(reports[-1]["report_path"]).parent
    temporary = last / "chain_report.partial"
    temporary.write_text(json.dumps(report, indent=2, default=_jsonable))
    os.replace(temporary, last / "chain_report.json")
    report["report_path"] = str(last / "chain_report.json")
    return report


def evaluate_saved(config: cfg.DistillJobConfig, teacher: str | None, students: dict[str, str]) -> dict:
    """`python -m kd_tf evaluate`: the held-out report for saved models."""
    config.validate()
    paths = RunPaths(config.output, "evaluate")
    split = load_split(config.data.data_dir, config.data.heldout_fraction, config.data.split_seed, min_size=8)
    models = {"teacher": load_model(teacher or config.distill.teacher)}
    if not students and Path(cfg.DEFAULT_STUDENT).exists():
        students = {"student": cfg.DEFAULT_STUDENT}
    models.update({name: load_model(path) for name, path in students.items()})
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
    report["table"] = format_table(report, config.eval.timing_size)
    return report


def calibration_batches(images: dict, batches: int, seed: int = 7, data: cfg.DataConfig | None = None) -> list:
    """Real training crops with training's noise, for full-integer calibration."""
    data = data or cfg.DataConfig()
    stream = patch_dataset(images, data.patch_size, 8, (data.sigma_min, data.sigma_max), seed=seed)
    return [noisy.numpy() for noisy, _ in stream.take(batches)]


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


def quantization_aware_finetune(aware: keras.Model, config: cfg.ExportJobConfig, images: dict) -> keras.Model:
    """Fine-tunes the int8-ready copy with its calibrated ranges frozen, distilling from the
    teacher on cached outputs as the student itself was trained; its weights learn to sit well
    on the int8 grid (1,000 steps: from 0.117 to 0.070 dB lost on the shipped student, see the model card)."""
    from kd_tf.nets.fake_quant import freeze_ranges

    keras.utils.set_random_seed(config.eval_seed)
    teacher = load_teacher(config.qat_teacher, mixed_precision=True)
    stream = patch_dataset(images, config.data.patch_size, config.data.batch_size,
                           (config.data.sigma_min, config.data.sigma_max), seed=config.eval_seed)
    cache = cache_teacher_outputs(teacher, stream, min(config.qat_steps, 300))
    distiller = Distiller(teacher, freeze_ranges(aware), alpha=0.5)
    schedule = keras.optimizers.schedules.CosineDecay(config.qat_learning_rate, config.qat_steps, alpha=0.01)
    distiller.compile(optimizer=keras.optimizers.Adam(schedule))
    log.info("quantization-aware fine-tuning: %d steps", config.qat_steps)
    distiller.fit(cache.dataset(config.data.batch_size, seed=config.eval_seed), epochs=1,
                  steps_per_epoch=config.qat_steps, verbose=2 if os.environ.get("KD_TF_QUIET") else "auto")
    return aware


def export_student(config: cfg.ExportJobConfig) -> dict:
    """Exports the student to every requested format and measures each one against the Keras
    float student: PSNR/SSIM on the held-out photos, size, op count, latency."""
    import tensorflow as tf

    from kd_tf import export
    from kd_tf.data import noisy_copy
    from kd_tf.inference import Runner, load_runner, run_rgb
    from kd_tf.metrics import image_scores

    config.validate()
    paths = RunPaths(config.output, "export")
    out = Path(config.out_dir) if config.out_dir else paths.root / "export"
    out.mkdir(parents=True, exist_ok=True)
    student = load_model(config.model)
    split = load_split(config.data.data_dir, config.data.heldout_fraction, config.data.split_seed,
                       min_size=config.data.patch_size)          # calibration crops need whole patches
    names = sorted(split.heldout)
    pairs = [(split.heldout[n], noisy_copy(split.heldout[n], config.sigma, config.eval_seed + i))
             for i, n in enumerate(names)]
    keras_runner = Runner(lambda batch: np.asarray(student(batch, training=False)))
    reference = [np.clip(run_rgb(keras_runner, noisy), 0.0, 1.0) for _, noisy in pairs]

    saved_dir = out / "savedmodel"
    if any(f != "keras" for f in config.formats):
        export.export_saved_model(student, saved_dir)
    calibration = None
    if {"int8", "int16x8"} & set(config.formats):
        calibration = calibration_batches(split.train, config.calibration_batches, data=config.data)

    rows = {}
    for fmt in config.formats:
        if fmt == "keras":
            path, runner, ops = save_model(student, out / "student.keras"), keras_runner, None
            serve = tf.function(lambda x: student(x, training=False))
            latency = {f"{s}px_all_threads": _latency_ms(lambda b: serve(b).numpy(), s) for s in config.latency_sizes}
        elif fmt == "savedmodel":
            path, runner, ops = saved_dir, load_runner(saved_dir), None
            latency = {f"{s}px_all_threads": _latency_ms(runner.predict, s) for s in config.latency_sizes}
        else:
            source_dir = saved_dir
            if fmt == "int8" and config.int8_calibration == "percentile":
                source_dir = out / "savedmodel_int8_ready.partial"
                ready = export.int8_ready(student, calibration, config.calibration_percentile)
                if config.qat_steps:
                    ready = quantization_aware_finetune(ready, config, split.train)
                export.export_saved_model(ready, source_dir)
            flatbuffer = export.to_tflite(source_dir, fmt, calibration)
            if source_dir != saved_dir:
                shutil.rmtree(source_dir, ignore_errors=True)
            path = out / f"student_{fmt}.tflite"
            temporary = path.with_suffix(".partial")
            temporary.write_bytes(flatbuffer)
            os.replace(temporary, path)
            runner, ops = load_runner(path), export.op_names(flatbuffer)
            latency = {}
            for threads in config.threads:
                timed = load_runner(path, num_threads=threads)
                for size in config.latency_sizes:
                    latency[f"{size}px_{threads}_threads"] = _latency_ms(timed.predict, size)
        scores = [image_scores(clean, run_rgb(runner, noisy)) for clean, noisy in pairs]
        agreement = [image_scores(ref, run_rgb(runner, noisy))[0] for ref, (_, noisy) in zip(reference, pairs)]
        rows[fmt] = {"path": str(path), "bytes": _directory_bytes(Path(path)),
                     "psnr": float(np.mean([p for p, _ in scores])), "ssim": float(np.mean([s for _, s in scores])),
                     "psnr_vs_keras_output": float(np.mean(agreement)),
                     "ops": ops, "op_count": None if ops is None else len(ops), "latency_ms": latency}
        log.info("exported %s: %s", fmt, path)
    float_psnr = float(np.mean([image_scores(c, r)[0] for (c, _), r in zip(pairs, reference)]))
    for row in rows.values():
        row["delta_psnr_vs_float"] = row["psnr"] - float_psnr
    report = {"job": "export", "run": paths.name, "model": config.model, "out_dir": str(out), "sigma": config.sigma,
              "heldout": names, "float_keras_psnr": float_psnr, "formats": rows, "config": cfg.to_dict(config)}
    report["table"] = format_export_table(report, config)
    report["report_path"] = str(paths.write_json("export_report.json", report))
    return report


def format_export_table(report: dict, config: cfg.ExportJobConfig) -> str:
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


def denoise(model: str, source: str, output_dir: str, threads: int = 2, overlap: int = 32) -> dict:
    """`python -m kd_tf denoise`: any exported model over a file or a folder."""
    from kd_tf.inference import denoise_path

    started = time.time()
    result = denoise_path(model, source, output_dir, num_threads=threads, overlap=overlap)
    report = {"job": "denoise", "model": model, "input": source, "output": output_dir,
              "written": len(result["written"]), "skipped": len(result["skipped"]),
              "seconds": time.time() - started, "files": result}
    report["table"] = render_table(["model", "written", "skipped", "seconds"],
                                   [[model, str(report["written"]), str(report["skipped"]), f"{report['seconds']:.1f}"]])
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    path = Path(output_dir) / "denoise_report.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    return report
