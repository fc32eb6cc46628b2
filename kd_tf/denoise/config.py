"""The denoising task's job schemas: `train-teacher`, `distill`, `evaluate` and `export`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kd_tf.config import (JOBS, MODELS_DIR, ConfigError, DataConfig, FeaturePair, OutputConfig, TrainConfig,
                          WEIGHT_ROUNDINGS, WeightConfig, _check, _check_writable)


# FFDNet's published colour weights (kd_tf.denoise.ffdnet, MIT) fine-tuned by kd_tf on 8-bit noisy inputs
# (configs/teacher_ffdnet_8bit.yaml): on both held-out sets the strongest teacher measured
# (models/denoise/MODEL_CARD.md); the U-Net kd_tf trained itself stays models/denoise/teacher.keras
DEFAULT_TEACHER = str(MODELS_DIR / "denoise" / "ffdnet_8bit.keras")
DEFAULT_STUDENT = str(MODELS_DIR / "denoise" / "student.keras")


INT8_CALIBRATIONS = ("percentile", "minmax")
QAT_TARGETS = ("float", "teacher")
# Adam's peak rate of QAT by target, when qat_learning_rate is not set (session 29: towards float, 2e-5 beat 1e-4)
QAT_LEARNING_RATES = {"float": 2e-5, "teacher": 1e-4}
EXPORT_FORMATS = ("keras", "savedmodel", "float32", "float16", "dynamic", "int8", "int16x8")


NET_FAMILIES = ("unet", "ffdnet")


@dataclasses.dataclass
class NetConfig:
    """A denoising network: a residual U-Net of kd_tf.denoise.nets (widths, blocks) or, for
    students of an FFDNet teacher, a blind FFDNet-shaped chain of kd_tf.denoise.ffdnet_student
    (features, depth) that can inherit the teacher's weights."""

    family: str = "unet"                  # unet or ffdnet
    # unet: channels per level, full resolution first
    widths: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    blocks: int | list[int] = 2           # unet: residual blocks per level (one int, or one per level)
    unshuffle: int = 1                    # unet: 2 (or 4) runs it at half (quarter) resolution on the pixel-unshuffled image
    # unet: > 0 pools the whole image into a vector of this many numbers (its noise level above all) that
    # scales and shifts each decoder level (build_unet's global_context); 0: none
    global_context: int = 0
    # unet: > 0 ends each decoder level and the bottleneck with a residual block of two 1x1 convolutions
    # through this many channels (one int, or one per level; build_unet's pointwise); 0: none
    pointwise: int | list[int] = 0
    features: int = 28                    # ffdnet: channels of every hidden convolution (half resolution)
    depth: int = 12                       # ffdnet: 3x3 convolutions, the last one linear

    def validate(self, where):
        _check(self.family in NET_FAMILIES, f"{where}.family", self.family, f"one of {NET_FAMILIES}")
        if self.family == "ffdnet":
            _check(isinstance(self.features, int) and self.features >= 1, f"{where}.features", self.features,
                   "an int >= 1")
            _check(isinstance(self.depth, int) and self.depth >= 2, f"{where}.depth", self.depth, "an int >= 2")
            unet = NetConfig()
            set_for_unet = [f"{where}.{name}={getattr(self, name)}" for name in UNET_FIELDS
                            if getattr(self, name) != getattr(unet, name)]
            if set_for_unet:
                raise ConfigError(f"{' / '.join(set_for_unet)} describe a U-Net, but "
                                  f"{where}.family='ffdnet' (sized by {where}.features and {where}.depth): set "
                                  f"{where}.family=unet to use them")
            return
        ffdnet = NetConfig(family="ffdnet")
        if (self.features, self.depth) != (ffdnet.features, ffdnet.depth):
            raise ConfigError(f"{where}.features={self.features} / {where}.depth={self.depth} size the FFDNet-shaped "
                              f"network, but {where}.family={self.family!r} (sized by {where}.widths and "
                              f"{where}.blocks): set {where}.family=ffdnet to use them")
        _check(len(self.widths) >= 2 and all(int(w) >= 1 for w in self.widths), f"{where}.widths",
               self.widths, "a list of at least two positive ints")
        blocks = [self.blocks] * len(self.widths) if isinstance(self.blocks, int) else self.blocks
        _check(len(blocks) == len(self.widths) and all(int(b) >= 1 for b in blocks), f"{where}.blocks",
               self.blocks, f"a positive int or a list of {len(self.widths)} positive ints")
        _check(self.unshuffle in (1, 2, 4), f"{where}.unshuffle", self.unshuffle,
               "1 (full resolution), 2 or 4")
        _check(type(self.global_context) is int and self.global_context >= 0, f"{where}.global_context",
               self.global_context, "an int >= 0 (0: none)")
        hidden = [self.pointwise] * len(self.widths) if isinstance(self.pointwise, int) else self.pointwise
        _check(len(hidden) == len(self.widths) and all(type(h) is int and h >= 0 for h in hidden),
               f"{where}.pointwise", self.pointwise, f"an int >= 0 or a list of {len(self.widths)} ints >= 0 (0: none)")

    @property
    def stride(self) -> int:
        """What image sides must be divisible by (a U-Net's halvings times its unshuffle; FFDNet pads)."""
        return 1 if self.family == "ffdnet" else self.unshuffle * 2 ** (len(self.widths) - 1)


UNET_FIELDS = ("widths", "blocks", "unshuffle", "global_context", "pointwise")
STUDENT_INITS = ("auto", "teacher", "random")


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
    # blocks, kd_tf.denoise.inherit), "random", "auto" (teacher when both are build_unet networks), or
    # a student .keras file to continue from (a new learning-rate cycle; blocks it lacks start as identities,
    # wider levels keep its channels and add ones nothing reads yet: kd_tf.denoise.jobs.continue_from).
    # The scratch comparison always starts from the random weights.
    student_init: str = "auto"
    # Residual blocks of a student_init .keras file that the configured student leaves out, by name (e.g.
    # [bottleneck_block1], to spend its MACs on width): what they computed is lost, so each must be named.
    drop_blocks: list[str] = dataclasses.field(default_factory=list)
    # Adam's peak rate when the student starts from the teacher's weights (not for a .keras continuation);
    # null: train.learning_rate for a U-Net's copied channels (the dropped ones leave holes to relearn), a
    # tenth of it for a refitted FFDNet-shaped student, a close copy to fine-tune (at 1e-3 one lost 14 dB
    # in its first 10 steps)
    inherited_learning_rate: float | None = None
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
        _check(isinstance(self.drop_blocks, list) and all(
            isinstance(name, str) and re.fullmatch(r"\w+_block\d+", name) for name in self.drop_blocks),
            "distill.drop_blocks", self.drop_blocks, "a list of residual block names such as 'bottleneck_block1'")
        _check(not self.drop_blocks or self.student_init.endswith(".keras"), "distill.drop_blocks",
               self.drop_blocks, f"[] unless distill.student_init is a student's .keras file (it is {self.student_init!r})")
        _check(self.inherited_learning_rate is None or self.inherited_learning_rate > 0,
               "distill.inherited_learning_rate", self.inherited_learning_rate, "a float > 0 or null (train.learning_rate)")
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
        NetConfig(widths=self.widths, blocks=self.blocks).validate("assistant")
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
    # 18.2 k MACs per pixel: 1/11.7 of FFDNet's 212.8 k (the issue asks for at most 1/10); family=ffdnet: a
    # student of the teacher's shape that starts from its weights (19.5 k MACs per pixel, 1/10.9)
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
    export_calibration_batches: int = 32  # the int8 export's calibration (export's calibration_batches)

    def validate(self):
        self.data.validate()
        self.train.validate()
        self.student.validate("student")
        _check(self.data.patch_size % self.student.stride == 0, "data.patch_size", self.data.patch_size,
               f"a multiple of {self.student.stride}, the student's stride")
        self.distill.validate()
        self.assistant.validate()
        self.finetune.validate(self.train.steps)
        self.eval.validate()
        for name in self.export_formats:
            _check(name in EXPORT_FORMATS, "export_formats", name, f"any of {EXPORT_FORMATS}")
        _check(isinstance(self.qat_steps, int) and self.qat_steps >= 0, "qat_steps", self.qat_steps, "an int >= 0")
        _check(isinstance(self.export_calibration_batches, int) and self.export_calibration_batches >= 1,
               "export_calibration_batches", self.export_calibration_batches, "an int >= 1")
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
    # dynamic-range int8's weights: "gptq" (equalized channels, kd_tf.weight_rounding) or the converter's "nearest"
    dynamic_weight_rounding: str = "gptq"
    # > 0: the GPTQ-rounded dynamic-range copy is then fine-tuned through its rounding towards the float
    # student's outputs (kd_tf.int8_tuning), on 8-bit training crops and colour-gamut images; it pays with
    # dynamic_float_layers (alone it made the shipped student's near-white image worse), so off by default
    dynamic_tuning_steps: int = 0
    dynamic_tuning_learning_rate: float = 2e-5   # Adam's peak rate of that tuning (cosine decay)
    # convolutions the dynamic-range file keeps in float, inputs unrounded (kd_tf.float_layers); [] = none
    dynamic_float_layers: list[str] = dataclasses.field(default_factory=list)
    # layers the full-integer file keeps in float (percentile calibration only; kd_tf.fake_quant.quantize_aware):
    # their outputs are never rounded, layers reading them quantize their own input edge; [] = all int8
    int8_float_layers: list[str] = dataclasses.field(default_factory=list)
    qat_steps: int = 0                    # > 0: quantization-aware fine-tuning of the int8 copy (percentile only)
    qat_learning_rate: float | None = None   # Adam's peak rate of the QAT fine-tuning; None: QAT_LEARNING_RATES[qat_target]
    qat_teacher: str | None = None        # qat_target teacher only: None = the one that taught the student's run, else the shipped one
    # what QAT fits: "float" the float student's own outputs, each sample's error divided by float's own
    # (kd_tf.int8_tuning.tune_toward_reference: the loss follows the dB drop that the parity check measures; better
    # in every case measured, session 29); "teacher" distils as the student was trained (the int8 file may drift
    # from float where the teacher differs)
    qat_target: str = "float"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sigma: float = 25.0                   # noise sigma of the parity and latency checks (0-255 scale)
    # image sides the latency table is measured on, px
    latency_sizes: list[int] = dataclasses.field(default_factory=lambda: [256, 512])
    # interpreter thread counts the latency table is measured with
    threads: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    eval_seed: int = 2024                 # seed of the parity check's noise
    # noise draws the parity check averages on the synthetic colour set: its flat images sit 40-50 dB from the
    # truth, where one draw moves the int8 - float difference by tenths of a dB either way (kd_tf.int8_parity)
    parity_colour_draws: int = 8
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def validate(self):
        self.data.validate()
        _check(isinstance(self.parity_colour_draws, int) and self.parity_colour_draws >= 1, "parity_colour_draws",
               self.parity_colour_draws, "an int >= 1")
        for name in self.formats:
            _check(name in EXPORT_FORMATS, "formats", name, f"any of {EXPORT_FORMATS}")
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check(self.int8_calibration in INT8_CALIBRATIONS, "int8_calibration", self.int8_calibration,
               f"one of {INT8_CALIBRATIONS}")
        _check(self.dynamic_weight_rounding in WEIGHT_ROUNDINGS, "dynamic_weight_rounding",
               self.dynamic_weight_rounding, f"one of {WEIGHT_ROUNDINGS}")
        _check(isinstance(self.dynamic_tuning_steps, int) and self.dynamic_tuning_steps >= 0, "dynamic_tuning_steps",
               self.dynamic_tuning_steps, "an int >= 0")
        _check(self.dynamic_tuning_learning_rate > 0, "dynamic_tuning_learning_rate", self.dynamic_tuning_learning_rate,
               "a float > 0")
        _check(isinstance(self.dynamic_float_layers, list) and all(isinstance(n, str) for n in self.dynamic_float_layers),
               "dynamic_float_layers", self.dynamic_float_layers, "a list of Conv2D layer names")
        _check(isinstance(self.int8_float_layers, list) and all(isinstance(n, str) for n in self.int8_float_layers),
               "int8_float_layers", self.int8_float_layers, "a list of layer names")
        if self.int8_float_layers and self.int8_calibration != "percentile":
            raise ConfigError(f"int8_float_layers={self.int8_float_layers} needs int8_calibration='percentile' (the "
                              f"fake-quantized copy carries which tensors stay float), got {self.int8_calibration!r}")
        if self.dynamic_weight_rounding != "gptq" and "dynamic" in self.formats:
            for name, value, off in (("dynamic_tuning_steps", self.dynamic_tuning_steps, "0"),
                                     ("dynamic_float_layers", self.dynamic_float_layers, "[]")):
                if value:
                    raise ConfigError(f"{name}={value} applies to the export's own (GPTQ) rounding: it needs "
                                      f"dynamic_weight_rounding='gptq', got {self.dynamic_weight_rounding!r} "
                                      f"(or set {name} to {off})")
        _check(isinstance(self.qat_steps, int) and self.qat_steps >= 0, "qat_steps", self.qat_steps, "an int >= 0")
        _check(self.qat_learning_rate is None or self.qat_learning_rate > 0, "qat_learning_rate",
               self.qat_learning_rate, f"a float > 0, or None for {QAT_LEARNING_RATES} by qat_target")
        _check(self.qat_target in QAT_TARGETS, "qat_target", self.qat_target, f"one of {QAT_TARGETS}")
        if self.qat_teacher and self.qat_target != "teacher":
            raise ConfigError(f"qat_teacher={self.qat_teacher!r} is used only with qat_target='teacher', got "
                              f"qat_target={self.qat_target!r} (QAT towards float needs no teacher)")
        if self.qat_steps and self.int8_calibration != "percentile":
            raise ConfigError(f"qat_steps={self.qat_steps} needs int8_calibration='percentile' (the fake-quantized "
                              f"copy), got {self.int8_calibration!r}")
        _check(50 < self.calibration_percentile <= 100, "calibration_percentile", self.calibration_percentile,
               "50 < value <= 100")
        _check(0 < self.sigma <= 255, "sigma", self.sigma, "0 < value <= 255 (0-255 scale)")
        _check(all(int(t) >= 1 for t in self.threads), "threads", self.threads, "ints >= 1")
        return self

    @property
    def qat_peak_learning_rate(self) -> float:
        """qat_learning_rate, or the rate measured best for qat_target when it is not set."""
        return self.qat_learning_rate or QAT_LEARNING_RATES[self.qat_target]


JOBS.update({"distill": DistillJobConfig, "train-teacher": TeacherJobConfig, "export": ExportJobConfig,
             "evaluate": DistillJobConfig})     # for `python -m kd_tf config`
