"""Dataclass configs for every CLI verb, loaded from YAML and validated up front.

Errors name the bad key or value and what is accepted, before any training starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import warnings
import typing
from pathlib import Path

import yaml

from kd_tf.errors import InputError

log = logging.getLogger(__name__)

# FFDNet's published colour weights (kd_tf.ffdnet, MIT): on both held-out sets the strongest teacher
# measured (models/denoise/MODEL_CARD.md); the U-Net kd_tf trained itself stays models/denoise/teacher.keras
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"   # the shipped models, whatever the working directory
DEFAULT_TEACHER = str(MODELS_DIR / "denoise" / "ffdnet_color.keras")
DEFAULT_STUDENT = str(MODELS_DIR / "denoise" / "student.keras")
INT8_CALIBRATIONS = ("percentile", "minmax")
EXPORT_FORMATS = ("keras", "savedmodel", "float32", "float16", "dynamic", "int8", "int16x8")
STRATEGIES = ("default", "mirrored", "multiworker")     # tf.distribute, see kd_tf.distribute


class ConfigError(InputError):
    """A configuration value that kd_tf cannot use."""


@dataclasses.dataclass
class DataConfig:
    """Where images come from and how patches and noise are made."""

    data_dir: str | None = None          # None: the embedded photos (see kd_tf.data)
    heldout_fraction: float = 0.2        # for a user's folder only; split by whole image
    split_seed: int = 0                   # seed of the held-out split of a user's folder
    patch_size: int = 64                  # side of the square training patches, px
    batch_size: int = 16                  # patches per step (the global batch under tf.distribute)
    sigma_min: float = 0.0               # 0-255 scale
    sigma_max: float = 55.0               # noise sigma drawn per patch in [sigma_min, sigma_max]
    val_sigma: float = 25.0               # noise sigma of the validation crops
    val_crop: int = 128                   # side of the validation crops, px
    val_crops_per_image: int = 4          # validation crops per held-out image
    # clip and round noisy inputs to 8 bits, as cameras and image files store them and as the
    # held-out photos are scored; false: unclipped float noise (the classic AWGN protocol)
    noisy_8bit: bool = False
    # the photo corpus (`python -m kd_tf photos fetch`): its training photos join the training
    # images; its second held-out set is scored beside the first whenever the corpus is there
    corpus: bool = False
    corpus_path: str | None = None       # None: $KD_TF_PHOTOS or ~/.cache/kd_tf/photos
    # data_dir holds degraded photos with no clean versions (`distill --unlabeled`): the teacher
    # labels them, and the report gives the student's agreement with the teacher on held-out photos
    unlabeled: bool = False

    def corpus_dir(self) -> Path:
        if self.corpus_path is not None:
            return Path(self.corpus_path)
        from kd_tf.photo_corpus import default_corpus_dir

        return Path(default_corpus_dir())

    def validate(self):
        _check(self.patch_size >= 8 and self.patch_size % 8 == 0, "data.patch_size", self.patch_size,
               "a multiple of 8, at least 8")
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an int >= 1")
        _check(0 <= self.sigma_min <= self.sigma_max <= 255, "data.sigma_min/sigma_max",
               (self.sigma_min, self.sigma_max), "0 <= sigma_min <= sigma_max <= 255")
        _check(0 <= self.val_sigma <= 255, "data.val_sigma", self.val_sigma, "0 <= value <= 255 (0-255 scale)")
        _check(0 < self.heldout_fraction < 1, "data.heldout_fraction", self.heldout_fraction, "0 < value < 1")
        _check(self.val_crop >= 8 and self.val_crop % 8 == 0, "data.val_crop", self.val_crop,
               "a multiple of 8, at least 8")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(f"data.data_dir={self.data_dir!r} is not a directory")
        if self.corpus and not (self.corpus_dir() / "manifest.json").is_file():
            raise ConfigError(f"data.corpus=true but {str(self.corpus_dir())!r} holds no photo corpus "
                              f"(manifest.json); run `python -m kd_tf photos fetch` first, or set data.corpus_path")


@dataclasses.dataclass
class TrainConfig:
    """The optimisation budget shared by teacher training and distillation."""

    steps: int = 3000                     # optimizer steps run (exactly; the last epoch is cut)
    steps_per_epoch: int = 250            # steps between checkpoints, logs and image grids
    learning_rate: float = 1e-3           # Adam's peak rate
    final_learning_rate_fraction: float = 0.01   # cosine decay to lr * this
    # "auto": bfloat16 where the hardware has it (1.6x faster on a CPU with AVX512_BF16, 5-15x slower
    # where it is emulated), float16 with loss scaling on GPUs without it, else float32 (kd_tf.precision);
    # true/bfloat16, float16, false/float32 force one
    mixed_precision: bool | str = "auto"
    seed: int = 0                         # seed of weights, patches and noise
    strategy: str = "default"                    # one of STRATEGIES; data.batch_size is the global batch

    def validate(self):
        _check(self.steps >= 1, "train.steps", self.steps, "an int >= 1")
        _check(self.steps_per_epoch >= 1, "train.steps_per_epoch", self.steps_per_epoch, "an int >= 1")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "a float > 0")
        _check(0 <= self.final_learning_rate_fraction <= 1, "train.final_learning_rate_fraction",
               self.final_learning_rate_fraction, "0 <= value <= 1")
        _check(self.strategy in STRATEGIES, "train.strategy", self.strategy, f"one of {STRATEGIES}")
        _check(self.mixed_precision in (True, False, "auto", "bfloat16", "float16", "float32"),
               "train.mixed_precision", self.mixed_precision,
               "auto (what the hardware runs fast), true/bfloat16, float16 (with loss scaling), false/float32")
        if isinstance(self.mixed_precision, str):
            from kd_tf.precision import resolve_mixed_precision

            self.mixed_precision = resolve_mixed_precision(self.mixed_precision)


@dataclasses.dataclass
class NetConfig:
    """A residual U-Net of kd_tf.nets: channels per level and residual blocks per level."""

    # channels per level, full resolution first
    widths: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    blocks: int | list[int] = 2           # residual blocks per level (one int, or one per level)

    def validate(self, where):
        _check(len(self.widths) >= 2 and all(int(w) >= 1 for w in self.widths), f"{where}.widths",
               self.widths, "a list of at least two positive ints")
        blocks = [self.blocks] * len(self.widths) if isinstance(self.blocks, int) else self.blocks
        _check(len(blocks) == len(self.widths) and all(int(b) >= 1 for b in blocks), f"{where}.blocks",
               self.blocks, f"a positive int or a list of {len(self.widths)} positive ints")


@dataclasses.dataclass
class FeaturePair:
    """One intermediate layer of the teacher matched by one of the student (through an adapter)."""

    teacher: str
    student: str
    weight: float = 1.0


STUDENT_INITS = ("auto", "teacher", "random")


@dataclasses.dataclass
class WeightConfig:
    """student_loss_weight (the weight of the student's own loss; the output-matching term gets 1
    minus it, as in keras.distillation) as a constant (kind=constant, start), a ramp from start to
    end over the steps, or adaptive (kind=adaptive: balanced from the loss terms, from start)."""

    kind: str = "constant"                # constant, linear, cosine or adaptive
    start: float = 0.5                    # the weight at step 0 (and the constant's value)
    end: float | None = None              # the weight after the ramp (linear/cosine only)

    def validate(self):
        kinds = ("constant", "linear", "cosine", "adaptive")
        _check(self.kind in kinds, "distill.student_loss_weight.kind", self.kind, f"one of {kinds}")
        for key, value in (("start", self.start), ("end", self.end)):
            if value is not None:
                _check(0.0 <= value <= 1.0, f"distill.student_loss_weight.{key}", value, "0 <= value <= 1")
        if self.kind in ("linear", "cosine"):
            _check(self.end is not None, "distill.student_loss_weight.end", self.end, f"a float for kind={self.kind!r}")


def _alpha_as_weight(alpha):
    """An old `distill.alpha` setting (the output term's weight) as a student_loss_weight (1 - it).

    >>> _alpha_as_weight({"kind": "linear", "start": 1.0, "end": 0.25})
    {'kind': 'linear', 'start': 0.0, 'end': 0.75}
    """
    if not isinstance(alpha, dict):
        return alpha                       # _build names the type error
    return {key: (round(1.0 - value, 12) if key in ("start", "end") and isinstance(value, (int, float))
                  and not isinstance(value, bool) else value) for key, value in alpha.items()}


# keys renamed in a config section: old name -> (new name, how an old value becomes a new one)
RENAMED_KEYS = {"alpha": ("student_loss_weight", _alpha_as_weight)}


@dataclasses.dataclass
class DistillConfig:
    """How the teacher teaches: output loss, student_loss_weight, feature and attention pairs."""

    teacher: str = DEFAULT_TEACHER        # .keras, .h5 or SavedModel dir; non-blind teachers get each patch's sigma
    output_loss: str = "mse"              # distance of student to teacher outputs: mse or l1
    # the weight of the student's own loss (Keras' name); the deprecated `alpha` is 1 - it
    student_loss_weight: WeightConfig = dataclasses.field(default_factory=WeightConfig)
    # [teacher layer, student layer, weight] pairs; adapters where channels differ
    features: list[FeaturePair] = dataclasses.field(default_factory=list)
    # [teacher layer, student layer, weight] pairs matched by attention maps
    attention: list[FeaturePair] = dataclasses.field(default_factory=list)
    # also train the same student on its own loss only (doubles the main job's training time: off by
    # default; benchmarks/distillation_gain.py measures it over seeds)
    compare_scratch: bool = False
    # Where the distilled student's weights start: "teacher" (the teacher's strongest channels and
    # blocks, kd_tf.nets.inherit), "random", "auto" (teacher when both are build_unet networks), or
    # a student .keras file of the same widths and blocks to continue from (a new learning-rate cycle).
    # The scratch comparison always starts from the random weights.
    student_init: str = "auto"
    jacobian: float = 0.0                 # weight of Jacobian matching (kd_tf.losses.JacobianTerm); 0: off
    # Offline distillation: the teacher runs once on this many batches, then its outputs are reused.
    # None: min(300, steps) when only outputs are distilled; 0 (the live teacher) with features/attention.
    cache_batches: int | None = None
    # Serve each cached (input, teacher output, target) in its 8 flip/rot90 variants: 8x the bank's
    # inputs, but the teacher's output is moved, not recomputed; FFDNet is 44 dB from equivariant
    # (benchmarks/teacher_equivariance.json). false: the bank as cached.
    cache_augment: bool = True

    def validate(self):
        _check(self.output_loss in ("mse", "l1"), "distill.output_loss", self.output_loss, "'mse' or 'l1'")
        self.student_loss_weight.validate()
        _check(self.student_init in STUDENT_INITS or self.student_init.endswith(".keras"), "distill.student_init",
               self.student_init, f"one of {STUDENT_INITS} or a student's .keras file")
        _check(self.cache_batches is None or self.cache_batches >= 0, "distill.cache_batches",
               self.cache_batches, "an int >= 0 (0: the teacher runs on every batch) or null (automatic)")
        _check(self.jacobian >= 0, "distill.jacobian", self.jacobian, "a float >= 0 (0: off)")
        if self.cache_batches and (self.features or self.attention or self.jacobian):
            raise ConfigError(f"distill.cache_batches={self.cache_batches} caches only the teacher's output; "
                              f"features/attention/jacobian need the live teacher: set distill.cache_batches=0 "
                              f"or drop them")
        for kind, pairs in (("features", self.features), ("attention", self.attention)):
            for pair in pairs:
                _check(pair.weight >= 0, f"distill.{kind}[{pair.teacher}->{pair.student}].weight",
                       pair.weight, "a float >= 0")


@dataclasses.dataclass
class FinetuneConfig:
    """The optional last phase: the student alone on its own objective (no teacher).

    Its steps come out of train.steps, so the student's budget stays train.steps: distillation
    runs train.steps - finetune.steps steps, then this phase runs its own cosine schedule."""

    steps: int = 0                        # 0: no fine-tuning
    learning_rate: float = 1e-4           # Adam's peak rate of the fine-tuning phase
    final_learning_rate_fraction: float = 0.01 # cosine decay to learning_rate * this

    def validate(self, train_steps: int):
        _check(isinstance(self.steps, int) and 0 <= self.steps < train_steps, "finetune.steps", self.steps,
               f"an int >= 0 and below train.steps={train_steps} (its steps come out of the budget)")
        _check(self.learning_rate > 0, "finetune.learning_rate", self.learning_rate, "a float > 0")
        _check(0 <= self.final_learning_rate_fraction <= 1, "finetune.final_learning_rate_fraction",
               self.final_learning_rate_fraction, "0 <= value <= 1")


ASSISTANT_USES = ("auto", "always", "never")


@dataclasses.dataclass
class AssistantConfig:
    """Multi-stage distillation inside the main job (teacher -> assistant -> student; Mirzadeh et
    al., 2020): the teacher first teaches this mid-sized U-Net, which then teaches the student.
    Its steps are extra: the student keeps train.steps. Off by default: it won issue 9's
    ablation at 1,000 steps, but at the main job's 3,000 it only ties direct distillation and
    costs minutes (benchmarks/ablation3000/ABLATION.md). `use`: "auto" runs it when the assistant fits
    between teacher and student (both build_unet networks, the assistant at most the teacher's
    widths and blocks and at least the student's, and strictly between them in size), "always"
    runs it whatever the networks, "never" skips it."""

    use: str = "never"                    # auto, always or never (see above)
    # the assistant U-Net's channels per level
    widths: list[int] = dataclasses.field(default_factory=lambda: [20, 40, 80, 160])
    blocks: int | list[int] = 2           # the assistant's residual blocks per level
    steps: int | None = None              # None: a sixth of train.steps (500 of the main job's 3,000)

    def validate(self):
        _check(self.use in ASSISTANT_USES, "assistant.use", self.use, f"one of {ASSISTANT_USES}")
        NetConfig(self.widths, self.blocks).validate("assistant")
        _check(self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), "assistant.steps",
               self.steps, "an int >= 1, or null (a sixth of train.steps)")

    def steps_for(self, train_steps: int) -> int:
        return self.steps if self.steps is not None else max(1, train_steps // 6)


@dataclasses.dataclass
class EvalConfig:
    """The held-out report: which noise levels, which classical baselines."""

    # noise levels of the held-out report (0-255 scale)
    sigmas: list[float] = dataclasses.field(default_factory=lambda: [15.0, 25.0, 50.0])
    # classical denoisers scored beside the models: nlmeans, cbm3d
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["nlmeans", "cbm3d"])
    cbm3d_sigmas: list[float] | None = None   # None: every sigma; CBM3D takes ~20 s per photo
    seed: int = 2024                      # seed of the held-out noise (the same for every model)
    max_images: int | None = None         # score only the first N held-out images (None: all)
    timing_size: int = 512                # side of the image the models are timed on, px

    def validate(self):
        known = ("nlmeans", "cbm3d")
        for name in self.baselines:
            _check(name in known, "eval.baselines", name, f"any of {known}")
        _check(all(0 < s <= 255 for s in self.sigmas), "eval.sigmas", self.sigmas, "floats in (0, 255]")
        _check(self.cbm3d_sigmas is None or all(0 < s <= 255 for s in self.cbm3d_sigmas), "eval.cbm3d_sigmas",
               self.cbm3d_sigmas, "null or floats in (0, 255]")


@dataclasses.dataclass
class OutputConfig:
    """Where a run writes: its folder, its TensorBoard logs."""

    run_name: str | None = None           # default: <verb>-<timestamp>
    # where run folders go (checkpoints, reports, models); $KD_TF_RUNS_DIR moves the default (the tests do)
    runs_dir: str = dataclasses.field(default_factory=lambda: os.environ.get("KD_TF_RUNS_DIR", "runs"))
    # TensorBoard logs, one folder per run; $KD_TF_LOG_DIR moves the default
    log_dir: str = dataclasses.field(default_factory=lambda: os.environ.get("KD_TF_LOG_DIR", "tensorboard_logs"))
    image_grid_every: int = 1             # epochs between TensorBoard image grids


@dataclasses.dataclass
class TeacherJobConfig:
    """`python -m kd_tf train-teacher`."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=10000, steps_per_epoch=500))
    net: NetConfig = dataclasses.field(default_factory=NetConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None            # the run folder only; shipping into models/ is asked by name
    init_from: str | None = None          # continue from a saved teacher's weights (a new LR cycle)

    def validate(self):
        self.data.validate()
        self.train.validate()
        self.net.validate("net")
        if self.init_from is not None and not Path(self.init_from).exists():
            raise ConfigError(f"init_from={self.init_from!r} does not exist")
        self.eval.validate()
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class DistillJobConfig:
    """`python -m kd_tf distill`: the main job."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # 1,200 steps: the whole main job within 15 minutes on 2 CPU cores without bfloat16 hardware
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=1200))
    # 18.2 k MACs per pixel: 1/11.7 of FFDNet's 212.8 k (the issue asks for at most 1/10)
    student: NetConfig = dataclasses.field(default_factory=lambda: NetConfig(widths=[11, 22, 44, 88], blocks=1))
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    assistant: AssistantConfig = dataclasses.field(default_factory=AssistantConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(cbm3d_sigmas=[25.0]))
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None            # default: <run dir>/student.keras
    # formats the distilled student is exported to (see `export`)
    export_formats: list[str] = dataclasses.field(default_factory=lambda: ["keras", "savedmodel", "int8"])
    qat_steps: int = 0                    # quantization-aware fine-tuning of the exported int8 student

    def validate(self):
        self.data.validate()
        self.train.validate()
        self.student.validate("student")
        self.distill.validate()
        self.assistant.validate()
        self.finetune.validate(self.train.steps)
        self.eval.validate()
        for name in self.export_formats:
            _check(name in EXPORT_FORMATS, "export_formats", name, f"any of {EXPORT_FORMATS}")
        _check(isinstance(self.qat_steps, int) and self.qat_steps >= 0, "qat_steps", self.qat_steps, "an int >= 0")
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class ExportJobConfig:
    """`python -m kd_tf export`: the student to every deployable format, with a parity report."""

    model: str = DEFAULT_STUDENT          # the float student to export (.keras)
    out_dir: str | None = None            # default: runs/<run>/export
    # any of keras, savedmodel, float32, float16, dynamic, int8, int16x8
    formats: list[str] = dataclasses.field(default_factory=lambda: ["keras", "savedmodel", "float32", "float16",
                                                                     "dynamic", "int8"])
    calibration_batches: int = 32         # x 8 crops of 64x64 from training photos, noise as in training
    int8_calibration: str = "percentile"  # percentile ranges on an equalized copy, or the converter's "minmax"
    calibration_percentile: float = 99.99 # percentile of the activation ranges int8 covers
    qat_steps: int = 0                    # > 0: quantization-aware fine-tuning of the int8 copy (percentile only)
    qat_learning_rate: float = 1e-4       # Adam's peak rate of the QAT fine-tuning
    qat_teacher: str | None = None        # QAT's teacher; None: the one that taught the student's run, else the shipped one
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sigma: float = 25.0                   # noise sigma of the parity and latency checks (0-255 scale)
    # image sides the latency table is measured on, px
    latency_sizes: list[int] = dataclasses.field(default_factory=lambda: [256, 512])
    # interpreter thread counts the latency table is measured with
    threads: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    eval_seed: int = 2024                 # seed of the parity check's noise
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def validate(self):
        self.data.validate()
        for name in self.formats:
            _check(name in EXPORT_FORMATS, "formats", name, f"any of {EXPORT_FORMATS}")
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check(self.int8_calibration in INT8_CALIBRATIONS, "int8_calibration", self.int8_calibration,
               f"one of {INT8_CALIBRATIONS}")
        _check(isinstance(self.qat_steps, int) and self.qat_steps >= 0, "qat_steps", self.qat_steps, "an int >= 0")
        _check(self.qat_learning_rate > 0, "qat_learning_rate", self.qat_learning_rate, "a float > 0")
        if self.qat_steps and self.int8_calibration != "percentile":
            raise ConfigError(f"qat_steps={self.qat_steps} needs int8_calibration='percentile' (the fake-quantized "
                              f"copy), got {self.int8_calibration!r}")
        _check(50 < self.calibration_percentile <= 100, "calibration_percentile", self.calibration_percentile,
               "50 < value <= 100")
        _check(0 < self.sigma <= 255, "sigma", self.sigma, "0 < value <= 255 (0-255 scale)")
        _check(all(int(t) >= 1 for t in self.threads), "threads", self.threads, "ints >= 1")
        return self


# -- the GAN task (kd_tf.gan_jobs) ----------------------------------------------------------------

GAN_DIR = str(MODELS_DIR / "gan")
DEFAULT_CLASSIFIER = f"{GAN_DIR}/feature_classifier.keras"
DEFAULT_GAN_TEACHER = f"{GAN_DIR}/teacher_generator.keras"
DEFAULT_GAN_DISCRIMINATOR = f"{GAN_DIR}/teacher_discriminator.keras"
DEFAULT_GAN_STUDENT = f"{GAN_DIR}/student_generator.keras"
ADVERSARIAL_LOSSES = ("non-saturating", "hinge")
TASKS = ("denoise", "gan", "diffusion", "sr")


@dataclasses.dataclass
class DigitsConfig:
    """Which digit set (kd_tf.digits: auto, pureml, fashion, keras-mnist, keras-fashion, or an image
    folder) and the global batch."""

    source: str = "auto"                  # auto, pureml, fashion, keras-mnist, keras-fashion or an image folder
    batch_size: int = 64                  # digits per step

    def validate(self):
        from kd_tf.digits import SOURCES

        _check(self.source in SOURCES or Path(self.source).is_dir(), "data.source", self.source,
               f"one of {SOURCES} or an existing image folder")
        _check(self.batch_size >= 2, "data.batch_size", self.batch_size, "an int >= 2")


@dataclasses.dataclass
class GeneratorConfig:
    """A DCGAN generator of kd_tf.nets.dcgan: latent size and channels at 7x7, 14x14, 28x28."""

    latent_dim: int = 64                  # size of the latent z
    widths: list[int] = dataclasses.field(default_factory=lambda: [128, 64, 32]) # channels at 7x7, 14x14 and 28x28

    def validate(self, where):
        _check(self.latent_dim >= 1, f"{where}.latent_dim", self.latent_dim, "an int >= 1")
        _check(len(self.widths) == 3 and all(int(w) >= 1 for w in self.widths), f"{where}.widths", self.widths,
               "three positive ints (channels at 7x7, 14x14, 28x28)")


@dataclasses.dataclass
class AdversarialConfig:
    """The adversarial objective: its loss, the discriminator's optimizer, updates, R1 penalty."""

    loss: str = "non-saturating"          # non-saturating or hinge
    d_steps: int = 1                      # discriminator updates per generator step
    r1_weight: float = 0.0                # R1 gradient penalty on real digits (0: off)
    learning_rate: float = 2e-4          # the discriminator's Adam (beta_1 0.5, as DCGAN)
    discriminator_widths: list[int] = dataclasses.field(default_factory=lambda: [64, 128])   # new discriminators only

    def validate(self):
        _check(self.loss in ADVERSARIAL_LOSSES, "adversarial.loss", self.loss, f"one of {ADVERSARIAL_LOSSES}")
        _check(self.d_steps >= 1, "adversarial.d_steps", self.d_steps, "an int >= 1")
        _check(self.r1_weight >= 0, "adversarial.r1_weight", self.r1_weight, "a float >= 0")
        _check(self.learning_rate > 0, "adversarial.learning_rate", self.learning_rate, "a float > 0")
        _check(len(self.discriminator_widths) >= 1 and all(int(w) >= 1 for w in self.discriminator_widths),
               "adversarial.discriminator_widths", self.discriminator_widths, "a list of positive ints")


@dataclasses.dataclass
class GanEvalConfig:
    """FID / KID / precision-recall: how many samples, how often during training, the grids."""

    classifier: str = DEFAULT_CLASSIFIER  # the digit classifier whose features FID/KID use
    samples: int = 10000                 # generated images scored against the 10k test digits
    every_epochs: int = 1                # the TensorBoard callback (fewer samples there: callback_samples)
    callback_samples: int = 2000          # samples the per-epoch TensorBoard scores use
    grid: int = 8                        # fixed-z sample grids: grid x grid per model
    seed: int = 1234                      # seed of the latents scored
    collapse_ratio: float = 0.5          # warn when samples' diversity < ratio x the real digits'

    def validate(self):
        _check(self.samples >= 100, "eval.samples", self.samples, "an int >= 100")
        _check(self.callback_samples >= 100, "eval.callback_samples", self.callback_samples, "an int >= 100")
        _check(self.every_epochs >= 1, "eval.every_epochs", self.every_epochs, "an int >= 1")
        _check(1 <= self.grid <= 32, "eval.grid", self.grid, "1 <= grid <= 32")
        _check(0 < self.collapse_ratio < 1, "eval.collapse_ratio", self.collapse_ratio, "0 < value < 1")


# Nested sections are rebuilt from their own class when a config names any of their keys, so
# the GAN task's different defaults live in subclasses, not in default_factory lambdas.

@dataclasses.dataclass
class GanTrainConfig(TrainConfig):
    """The teacher GAN's budget: Adam(2e-4, beta_1 0.5) decayed along a cosine to 0.1x, float32
    (1.0: a constant rate; see kd_tf.gan_jobs.gan_optimizer for why it decays)."""

    steps: int = 4000
    steps_per_epoch: int = 500
    learning_rate: float = 2e-4
    final_learning_rate_fraction: float = 0.1
    mixed_precision: bool = False


@dataclasses.dataclass
class GanDistillTrainConfig(GanTrainConfig):
    steps: int = 3000


@dataclasses.dataclass
class ClassifierTrainConfig(TrainConfig):
    steps: int = 1500
    steps_per_epoch: int = 500
    mixed_precision: bool = False


@dataclasses.dataclass
class ClassifierDataConfig(DigitsConfig):
    batch_size: int = 128


@dataclasses.dataclass
class StudentGeneratorConfig(GeneratorConfig):
    """The default student: 9.3x fewer MACs than the default teacher generator."""

    # the student generator's channels at 7x7, 14x14, 28x28
    widths: list[int] = dataclasses.field(default_factory=lambda: [40, 20, 10])


@dataclasses.dataclass
class GanWeightConfig(WeightConfig):
    start: float = 0.1


def _check_gan_train(train: TrainConfig):
    train.validate()
    _check(not train.mixed_precision, "train.mixed_precision", train.mixed_precision,
           "false for the GAN task (its float32 models are small; bfloat16 would change the samples)")


@dataclasses.dataclass
class ClassifierJobConfig:
    """`python -m kd_tf train-classifier`: the digit classifier whose features FID/KID use."""

    data: ClassifierDataConfig = dataclasses.field(default_factory=ClassifierDataConfig)
    train: ClassifierTrainConfig = dataclasses.field(default_factory=ClassifierTrainConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None            # the run folder only; configs/gan/classifier.yaml ships it

    def validate(self):
        self.data.validate()
        _check_gan_train(self.train)
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class GanTeacherJobConfig:
    """`python -m kd_tf train-teacher --task gan`: the teacher GAN (generator and discriminator)."""

    data: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    train: GanTrainConfig = dataclasses.field(default_factory=GanTrainConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    adversarial: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    eval: GanEvalConfig = dataclasses.field(default_factory=GanEvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None            # the run folder only; configs/gan/teacher.yaml ships both
    save_discriminator_to: str | None = None # also ship the discriminator here (None: run folder only)

    def validate(self):
        self.data.validate()
        _check_gan_train(self.train)
        self.generator.validate("generator")
        self.adversarial.validate()
        self.eval.validate()
        _check_writable("save_to", self.save_to)
        _check_writable("save_discriminator_to", self.save_discriminator_to)
        return self


@dataclasses.dataclass
class GanDistillConfig:
    """How the teacher GAN teaches: student_loss_weight (adversarial vs image MSE), feature pairs."""

    teacher: str = DEFAULT_GAN_TEACHER                 # the teacher generator (.keras)
    discriminator: str = DEFAULT_GAN_DISCRIMINATOR     # the adversarial objective starts from a copy
    output_loss: str = "mse"                           # distance of student to teacher images: mse or l1
    student_loss_weight: GanWeightConfig = dataclasses.field(default_factory=GanWeightConfig)
    features: list[FeaturePair] = dataclasses.field(default_factory=list)   # [teacher, student, weight] layers
    compare_scratch: bool = True          # the same student as a plain GAN, same steps and seed
    # the scratch student's discriminator: "inherited" (a copy of the teacher's, as the distilled
    # student gets: the arms differ by the distillation term alone), "fresh", or "both"
    scratch_discriminator: str = "inherited"

    def validate(self):
        _check(self.output_loss in ("mse", "l1"), "distill.output_loss", self.output_loss, "'mse' or 'l1'")
        self.student_loss_weight.validate()
        _check(self.scratch_discriminator in ("inherited", "fresh", "both"), "distill.scratch_discriminator",
               self.scratch_discriminator, "inherited, fresh or both")
        for pair in self.features:
            _check(pair.weight >= 0, f"distill.features[{pair.teacher}->{pair.student}].weight", pair.weight,
                   "a float >= 0")


@dataclasses.dataclass
class GanDistillJobConfig:
    """`python -m kd_tf distill --task gan`."""

    data: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    train: GanDistillTrainConfig = dataclasses.field(default_factory=GanDistillTrainConfig)
    student: StudentGeneratorConfig = dataclasses.field(default_factory=StudentGeneratorConfig)
    distill: GanDistillConfig = dataclasses.field(default_factory=GanDistillConfig)
    adversarial: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    eval: GanEvalConfig = dataclasses.field(default_factory=GanEvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None            # default: <run dir>/student_generator.keras
    export_int8: bool = True              # int8 TFLite of the student, scored like the float one
    calibration_batches: int = 16         # x 64 latents from N(0, 1)

    def validate(self):
        self.data.validate()
        _check_gan_train(self.train)
        self.student.validate("student")
        self.distill.validate()
        self.adversarial.validate()
        self.eval.validate()
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class GanEvaluateJobConfig:
    """`python -m kd_tf evaluate --task gan` and `export` of a generator: scores saved generators."""

    data: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    eval: GanEvalConfig = dataclasses.field(default_factory=GanEvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    calibration_batches: int = 16         # x 64 latents from N(0, 1) for the int8 calibration

    def validate(self):
        self.data.validate()
        self.eval.validate()
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        return self


def _check(condition, key, value, accepted):
    if not condition:
        raise ConfigError(f"{key}={value!r} is not accepted; expected {accepted}")


def _check_writable(key, path):
    """A file path whose folder exists and is writable, or can be created in a writable one:
    checked up front so that a read-only destination fails before hours of training."""
    if path is None:
        return
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(path)!r} is not accepted: {str(folder)!r} is not a writable folder; "
                          f"expected a path in a folder you can write to")


def _type_name(hint) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        item = (typing.get_args(hint) or (None,))[0]
        return "a list of " + {int: "ints", float: "numbers", str: "strings"}.get(item, "values")
    return {int: "an int", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _typed(value, hint):
    """`value` as `hint` (an int is a valid float; "1e-3", which YAML 1.1 reads as a string, is
    a valid float too), or raises TypeError."""
    if hint is typing.Any:
        return value
    if hint is type(None):
        if value is None:
            return None
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _typed(value, option)
            except TypeError:
                pass
    elif typing.get_origin(hint) is list:
        if isinstance(value, (list, tuple)):
            item = (typing.get_args(hint) or (typing.Any,))[0]
            return [_typed(v, item) for v in value]
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise TypeError(value)


def _build(cls, values, where):
    """Builds dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys fail."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _renamed(values, fields, where)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; accepted: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        elif typing.get_origin(hint) is list and typing.get_args(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            item_cls = typing.get_args(hint)[0]
            if not isinstance(value, list):
                raise ConfigError(f"{key} must be a list, got {value!r}")
            kwargs[name] = [_coerce_item(item_cls, item, f"{key}[{i}]") for i, item in enumerate(value)]
        else:
            try:
                kwargs[name] = _typed(value, hint)
            except TypeError:
                raise ConfigError(f"{key}={value!r} is not accepted: wrong type {type(value).__name__}; "
                                  f"expected {_type_name(hint)}") from None
    return cls(**kwargs)


def _renamed(values, fields, where):
    """values with deprecated keys (RENAMED_KEYS) under their new names, with a warning."""
    for old, (new, convert) in RENAMED_KEYS.items():
        if old in values and old not in fields and new in fields:
            prefix = f"{where}." if where else ""
            if new in values:
                raise ConfigError(f"{prefix}{old} and {prefix}{new} are both set; {old} is the deprecated "
                                  f"name of 1 - {new}: keep {new}")
            converted = convert(values[old])
            message = (f"{prefix}{old} is deprecated: read as {prefix}{new}={converted!r} (the weight of the "
                       f"student's own loss, as keras.distillation names it); rename it in your config")
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            log.warning(message)
            values = {key: value for key, value in values.items() if key != old}
            values[new] = converted
    return values


def _coerce_item(cls, item, where):
    if isinstance(item, (list, tuple)):
        item = dict(zip([f.name for f in dataclasses.fields(cls)], item))
    return _build(cls, item, where)


def from_dict(cls, values: dict | None):
    """A validated job config from plain values (missing keys keep their defaults)."""
    return _build(cls, values or {}, "").validate()


def load(cls, path: str | os.PathLike | None, overrides: dict | None = None):
    """Reads a YAML file into a validated `cls`, then applies dotted `overrides` ("train.steps": 10)."""
    values = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            with open(path, encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split())
            raise ConfigError(f"config file {str(path)!r} is not valid YAML ({reason}); "
                              f"expected a mapping like the files in configs/") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {str(path)!r} holds a {type(values).__name__}; "
                              f"expected a mapping like the files in configs/")
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {dotted}: {'.'.join(parents[:depth + 1])}={node!r} is not a section")
        node[leaf] = value
    return from_dict(cls, values)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


# what `python -m kd_tf config JOB` describes: each verb's config schema
JOBS = {"distill": DistillJobConfig, "train-teacher": TeacherJobConfig, "export": ExportJobConfig,
        "evaluate": DistillJobConfig, "distill --task gan": GanDistillJobConfig,
        "train-teacher --task gan": GanTeacherJobConfig, "train-classifier": ClassifierJobConfig,
        "evaluate --task gan": GanEvaluateJobConfig}


def _field_comments(cls) -> dict[str, str]:
    """Each field's meaning, read from the comments beside and above it in the class source (and
    its bases'), so the documentation is the code's own and cannot drift from it."""
    import inspect

    comments = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above = []
        for line in lines[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            name = stripped.split(":", 1)[0]
            if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "return")):
                inline = stripped.split("#", 1)[1].strip() if "#" in stripped else ""
                meaning = " ".join(above + ([inline] if inline else []))
                if meaning:
                    comments[name] = meaning
            above = []
    return comments


def describe(cls, prefix: str = "") -> list[tuple[str, object, str]]:
    """(dotted key, default, meaning) for every key of a job config, nested sections flattened.

    >>> rows = dict((key, (default, meaning)) for key, default, meaning in describe(DistillJobConfig))
    >>> rows["train.steps"][0], rows["distill.student_loss_weight.start"][0]
    (1200, 0.5)
    >>> "doubles" in rows["distill.compare_scratch"][1]
    True
    """
    rows, comments, hints = [], _field_comments(cls), typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        key, default = f"{prefix}{field.name}", getattr(defaults, field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            nested = type(default) if dataclasses.is_dataclass(default) else hints[field.name]
            section = (nested.__doc__ or "").strip().splitlines()[0] if nested.__doc__ else ""
            rows.append((key, "", section))
            rows.extend(_with_defaults(describe(nested, key + "."), default, key + "."))
        else:
            rows.append((key, default, comments.get(field.name, "")))
    return rows


def _with_defaults(rows, instance, prefix):
    """A nested section's rows with the defaults its parent sets (a job's own TrainConfig(steps=...))."""
    out = []
    for key, default, meaning in rows:
        node = instance
        for part in key[len(prefix):].split("."):
            node = getattr(node, part, default)
        out.append((key, default if dataclasses.is_dataclass(node) else node, meaning))
    return out
