"""The GAN task's job schemas (`--task gan`, `train-classifier`), built from the shared sections."""

from __future__ import annotations

import dataclasses

from kd_tf.config import (GAN_DIR, JOBS, DigitsConfig, FeaturePair, GanEvalConfig, OutputConfig, TrainConfig,
                          WeightConfig, _check, _check_writable)


DEFAULT_GAN_TEACHER = f"{GAN_DIR}/teacher_generator.keras"
DEFAULT_GAN_DISCRIMINATOR = f"{GAN_DIR}/teacher_discriminator.keras"
DEFAULT_GAN_STUDENT = f"{GAN_DIR}/student_generator.keras"
ADVERSARIAL_LOSSES = ("non-saturating", "hinge")


@dataclasses.dataclass
class GeneratorConfig:
    """A DCGAN generator of kd_tf.gan.nets: latent size and channels at 7x7, 14x14, 28x28."""

    latent_dim: int = 64                  # size of the latent z
    widths: list[int] = dataclasses.field(default_factory=lambda: [128, 64, 32]) # channels at 7x7, 14x14 and 28x28
    # class-conditional on this many classes (kd_tf.conditional_gan; the data must be labeled), 0: not;
    # a student must match its teacher
    classes: int = 0

    def validate(self, where):
        _check(self.latent_dim >= 1, f"{where}.latent_dim", self.latent_dim, "an int >= 1")
        _check(self.classes == 0 or 2 <= self.classes <= self.latent_dim, f"{where}.classes", self.classes,
               f"0 (unconditional) or an int from 2 to latent_dim ({self.latent_dim})")
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
class GanTrainConfig(TrainConfig):
    """The teacher GAN's budget: Adam(2e-4, beta_1 0.5) decayed along a cosine to 0.1x, float32
    (1.0: a constant rate; see kd_tf.gan.jobs.gan_optimizer for why it decays)."""

    steps: int = 4000
    steps_per_epoch: int = 500
    learning_rate: float = 2e-4
    final_learning_rate_fraction: float = 0.1
    mixed_precision: bool = False


@dataclasses.dataclass
class GanTeacherTrainConfig(GanTrainConfig):
    """The teacher GAN's budget, and the momentum of its generator's moving average (0: off)."""

    ema: float = 0.0                      # e.g. 0.999: the average is scored, snapshotted and shipped

    def validate(self):
        super().validate()
        _check(0.0 <= self.ema < 1.0, "train.ema", self.ema, "0 (off) or a momentum 0 < ema < 1, e.g. 0.999")


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
    train: GanTeacherTrainConfig = dataclasses.field(default_factory=GanTeacherTrainConfig)
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
    # classes of class-conditional .tflite generators, which cannot say (0: those of the .keras
    # generators scored beside them; none conditional: no class accuracy for .tflite rows)
    classes: int = 0

    def validate(self):
        self.data.validate()
        self.eval.validate()
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check(self.classes == 0 or self.classes >= 2, "classes", self.classes,
               "0 (from the .keras generators) or an int >= 2")
        return self


JOBS.update({"distill --task gan": GanDistillJobConfig, "train-teacher --task gan": GanTeacherJobConfig,
             "train-classifier": ClassifierJobConfig, "evaluate --task gan": GanEvaluateJobConfig})
