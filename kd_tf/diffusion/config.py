"""The diffusion task's job configs (`--task diffusion`), built from the shared sections."""

from __future__ import annotations

import dataclasses

from kd_tf.config import (JOBS, MODELS_DIR, WEIGHT_ROUNDINGS, DigitsConfig, GanEvalConfig, OutputConfig,
                          TrainConfig, _check, _check_writable)

DIFFUSION_DIR = str(MODELS_DIR / "diffusion")
DEFAULT_DIFFUSION_TEACHER = f"{DIFFUSION_DIR}/teacher_denoiser.keras"
INT8_MODES = ("int8", "dynamic")              # kd_tf.generators.export_generator's modes


@dataclasses.dataclass
class DenoiserConfig:
    """The velocity-predicting U-Net (kd_tf.diffusion.nets): channels at 28, 14 and 7 px."""

    widths: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 96])   # channels per level
    blocks: int = 2                          # residual blocks per level
    embedding_dims: int = 32                 # sines and cosines of the noise variance
    classes: int = 0                         # > 0: class-conditional (labeled digits; the class rides in the noise)

    def validate(self):
        _check(len(self.widths) == 3 and all(int(w) >= 1 for w in self.widths), "net.widths", self.widths,
               "three positive ints (channels at 28, 14, 7 px)")
        _check(self.blocks >= 1, "net.blocks", self.blocks, "an int >= 1")
        _check(self.embedding_dims >= 2 and self.embedding_dims % 2 == 0, "net.embedding_dims",
               self.embedding_dims, "an even int >= 2")
        _check(self.classes == 0 or self.classes >= 2, "net.classes", self.classes, "0 (unconditional) or an int >= 2")


@dataclasses.dataclass
class DiffusionTrainConfig(TrainConfig):
    """The teacher's budget: Adam with a cosine decay, float32 (the nets are small)."""

    steps: int = 6000                        # optimizer steps run
    steps_per_epoch: int = 500               # steps between checkpoints, logs and sample grids
    mixed_precision: bool | str = False      # float32: 28x28 nets gain nothing from bfloat16
    ema: float = 0.999                       # momentum of the weights' moving average (what samples)

    def validate(self):
        super().validate()
        _check(0.0 <= self.ema < 1.0, "train.ema", self.ema, "0 <= ema < 1")


@dataclasses.dataclass
class DiffusionTeacherJobConfig:
    """`python -m kd_tf train-teacher --task diffusion`: the DDIM teacher on the training digits."""

    data: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    train: DiffusionTrainConfig = dataclasses.field(default_factory=DiffusionTrainConfig)
    net: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)
    sampler_steps: int = 64                  # DDIM steps of the teacher's sampler (what is scored and taught)
    eval: GanEvalConfig = dataclasses.field(default_factory=GanEvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None               # the run folder only; ship into models/ by naming a path
    warm_start: str | None = None            # a trained denoiser (.keras) whose weights start the same-named layers

    def validate(self):
        self.data.validate()
        self.train.validate()
        self.net.validate()
        _check(self.warm_start is None or str(self.warm_start).endswith(".keras"), "warm_start", self.warm_start,
               "None or a .keras denoiser file")
        _check(self.sampler_steps >= 1, "sampler_steps", self.sampler_steps, "an int >= 1")
        self.eval.validate()
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class DiffusionAdversarialConfig:
    """After progressive distillation, an adversarial fine-tune of chosen few-step students
    (kd_tf.diffusion.adversarial): the GAN loss against a trained digit discriminator beside the
    output MSE to the student's stage teacher (twice its steps, the same noise). What a fine-tuned
    step count ships (generator, int8) is the fine-tuned network; the report keeps the plain row."""

    student_steps: list[int] = dataclasses.field(default_factory=list)   # stages fine-tuned ([]: none)
    discriminator: str | None = None         # a trained discriminator (.keras) to start from, e.g. the GAN task's
    optimizer_steps: int = 600               # fine-tune steps per student
    student_loss_weight: float = 0.1         # weight of the GAN loss; 1 - it on the MSE to the stage teacher
    learning_rate: float = 5e-5              # Adam (beta_1 0.5), decaying along a cosine to
    final_learning_rate_fraction: float = 0.1   # this share of it
    discriminator_learning_rate: float = 2e-4   # the discriminator's Adam (beta_1 0.5), constant

    def validate(self, stages: list[int]):
        _check(all(s in stages[1:] for s in self.student_steps), "adversarial.student_steps", self.student_steps,
               f"students' step counts, any of {stages[1:]}")
        _check(not self.student_steps or str(self.discriminator).endswith(".keras"), "adversarial.discriminator",
               self.discriminator, "a .keras discriminator (needed when adversarial.student_steps is set)")
        _check(self.optimizer_steps >= 1, "adversarial.optimizer_steps", self.optimizer_steps, "an int >= 1")
        _check(0 <= self.student_loss_weight <= 1, "adversarial.student_loss_weight", self.student_loss_weight,
               "a float in [0, 1]")
        _check(self.learning_rate > 0 and self.discriminator_learning_rate > 0, "adversarial learning rates",
               [self.learning_rate, self.discriminator_learning_rate], "floats > 0")
        _check(0 < self.final_learning_rate_fraction <= 1, "adversarial.final_learning_rate_fraction",
               self.final_learning_rate_fraction, "a float in (0, 1]")


@dataclasses.dataclass
class DiffusionDistillJobConfig:
    """`python -m kd_tf distill --task diffusion`: few-step students of the teacher's sampler."""

    data: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    teacher: str = DEFAULT_DIFFUSION_TEACHER  # the teacher's velocity-predicting network (.keras)
    teacher_steps: int = 64                  # the teacher sampler's DDIM steps (a power of two)
    end_steps: int = 1                       # progressive distillation halves the steps down to this
    steps_per_stage: int | list[int] = 1000  # optimizer steps of each halving stage (or one per stage)
    learning_rate: float | list[float] = 1e-4   # Adam's rate in every stage, or one per stage (students start at their teacher)
    final_learning_rate_fraction: float | list[float] = 1.0   # < 1: a stage's rate decays (cosine) to this share of it
    seed: int = 0                            # seed of each stage's noise and times
    eval: GanEvalConfig = dataclasses.field(default_factory=GanEvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    export_int8_steps: list[int] = dataclasses.field(default_factory=lambda: [4, 1])   # students exported to int8
    # "int8": full integer (activations calibrated on noise); "dynamic": int8 weights, activations quantized at run
    # time, the noise kept float (a class-conditional sampler then reads its class code exactly; see export_generator)
    int8_mode: str = "int8"
    # int8_mode "dynamic" only: "gptq" rounds the int8 weights so that the network's outputs move least on its
    # inputs at every sampler step (kd_tf.weight_rounding, calibrated on noise, never on eval data); "nearest": the
    # converter's own rounding
    dynamic_weight_rounding: str = "gptq"
    int8_calibration_samples: int = 512      # noise draws whose sampler steps calibrate the gptq rounding
    score_steps: list[int] | None = None     # stages scored (FID etc. on eval.samples); None: every stage
    save_to: str | None = None               # a folder for the students' generators (None: run folder only)
    adversarial: DiffusionAdversarialConfig = dataclasses.field(default_factory=DiffusionAdversarialConfig)

    def validate(self):
        self.data.validate()
        steps, end = self.teacher_steps, self.end_steps
        _check(steps >= 2 and steps & (steps - 1) == 0, "teacher_steps", steps, "a power of two >= 2")
        _check(1 <= end < steps and end & (end - 1) == 0, "end_steps", end, f"a power of two below {steps}")
        stage_count = (steps // end).bit_length() - 1 if end >= 1 and steps % end == 0 else 0
        budgets = self.steps_per_stage if isinstance(self.steps_per_stage, list) else [self.steps_per_stage]
        _check(all(isinstance(b, int) and b >= 1 for b in budgets) and len(budgets) in (1, stage_count),
               "steps_per_stage", self.steps_per_stage, f"an int >= 1, or {stage_count} of them (one per stage)")
        rates = self.learning_rate if isinstance(self.learning_rate, list) else [self.learning_rate]
        _check(all(isinstance(r, (int, float)) and r > 0 for r in rates) and len(rates) in (1, stage_count),
               "learning_rate", self.learning_rate, f"a float > 0, or {stage_count} of them (one per stage)")
        fractions = (self.final_learning_rate_fraction if isinstance(self.final_learning_rate_fraction, list)
                     else [self.final_learning_rate_fraction])
        _check(all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions)
               and len(fractions) in (1, stage_count),
               "final_learning_rate_fraction", self.final_learning_rate_fraction,
               f"a float in (0, 1], or {stage_count} of them (one per stage)")
        stages = [steps >> k for k in range(steps.bit_length()) if steps >> k >= end]
        for count in self.export_int8_steps:
            _check(count in stages, "export_int8_steps", count, f"step counts of the stages, any of {stages}")
        _check(self.int8_mode in INT8_MODES, "int8_mode", self.int8_mode, f"one of {INT8_MODES}")
        _check(self.dynamic_weight_rounding in WEIGHT_ROUNDINGS, "dynamic_weight_rounding",
               self.dynamic_weight_rounding, f"one of {WEIGHT_ROUNDINGS}")
        _check(isinstance(self.int8_calibration_samples, int) and self.int8_calibration_samples >= 1,
               "int8_calibration_samples", self.int8_calibration_samples, "an int >= 1")
        for count in self.score_steps or []:
            _check(count in stages, "score_steps", count, f"step counts of the stages, any of {stages}")
        self.adversarial.validate(stages)
        self.eval.validate()
        return self


JOBS.update({"train-teacher --task diffusion": DiffusionTeacherJobConfig,
             "distill --task diffusion": DiffusionDistillJobConfig})     # for `python -m kd_tf config`
