"""The super-resolution task's job configs (`--task sr`), built from the shared sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kd_tf.config import (JOBS, MODELS_DIR, DataConfig, OutputConfig, TrainConfig, _check, _check_writable)

SR_DIR = str(MODELS_DIR / "sr")
DEFAULT_SR_TEACHER = f"{SR_DIR}/teacher_x2.keras"
DEFAULT_SR_STUDENT = f"{SR_DIR}/student_x2.keras"
SR_EXPORT_FORMATS = ("keras", "savedmodel", "float32", "dynamic", "int8")


@dataclasses.dataclass
class UpscalerConfig:
    """A kd_tf.sr.build_upscaler network: residual blocks at the low resolution, a pixel shuffle up."""

    width: int = 64                          # channels of the residual body
    blocks: int = 8                          # residual blocks (two 3x3 convolutions each)

    def validate(self, where):
        _check(self.width >= 1, f"{where}.width", self.width, "an int >= 1")
        _check(self.blocks >= 0, f"{where}.blocks", self.blocks, "an int >= 0")


@dataclasses.dataclass
class SRDataConfig(DataConfig):
    """High-resolution patches; the model's inputs are their bicubic downscales (antialiased)."""

    patch_size: int = 96                     # side of the high-resolution training patches, px
    val_crop: int = 192                      # side of the high-resolution validation crops, px


def _check_data_and_factor(config):
    config.data.validate()
    _check(config.factor in (2, 3, 4), "factor", config.factor, "2, 3 or 4")
    _check(config.data.patch_size % config.factor == 0, "data.patch_size", config.data.patch_size,
           f"a multiple of factor={config.factor}")
    if hasattr(config, "train"):             # the export job trains nothing
        if config.train.mixed_precision == "auto":   # the SR nets are built in float32 whatever the hardware
            config.train.mixed_precision = False
        _check(config.train.mixed_precision in (False, "float32"), "train.mixed_precision",
               config.train.mixed_precision, "auto, false or float32: the super-resolution jobs train in float32")
        config.train.validate()


@dataclasses.dataclass
class SRTeacherJobConfig:
    """`python -m kd_tf train-teacher --task sr`: the super-resolution teacher."""

    data: SRDataConfig = dataclasses.field(default_factory=SRDataConfig)
    factor: int = 2                          # upscaling factor (2: inputs are half the size)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=20000, steps_per_epoch=500))
    net: UpscalerConfig = dataclasses.field(default_factory=UpscalerConfig)
    loss: str = "l1"                         # the reconstruction loss: l1 (sharper, EDSR's) or mse
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None               # the run folder only; ship into models/ by naming a path
    init_from: str | None = None             # continue from a saved upscaler's weights (a new LR cycle)

    def validate(self):
        _check_data_and_factor(self)
        self.net.validate("net")
        _check(self.loss in ("l1", "mse"), "loss", self.loss, "l1 or mse")
        _check_writable("save_to", self.save_to)
        _check(self.init_from is None or Path(self.init_from).is_file(), "init_from", self.init_from,
               "a saved upscaler (.keras) that exists")
        _check(self.init_from is None or self.save_to is None
               or Path(self.init_from).resolve() != Path(self.save_to).resolve(), "save_to", self.save_to,
               "a path other than init_from's (a shipped model is replaced only after it is beaten)")
        return self


@dataclasses.dataclass
class SRDistillJobConfig:
    """`python -m kd_tf distill --task sr`: a smaller upscaler taught by the teacher."""

    data: SRDataConfig = dataclasses.field(default_factory=SRDataConfig)
    factor: int = 2                          # must match the teacher's
    teacher: str = DEFAULT_SR_TEACHER        # the teacher upscaler (.keras, .h5 or SavedModel dir)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=10000, steps_per_epoch=500))
    student: UpscalerConfig = dataclasses.field(default_factory=lambda: UpscalerConfig(width=28, blocks=4))  # 9.9x fewer MACs
    student_loss_weight: float = 0.5         # the student's own L1 loss; the teacher term gets 1 - it
    cache_batches: int = 300                 # offline distillation: teacher outputs on this many batches (0: live)
    export_int8: bool = True                 # full-integer TFLite of the student, scored like the float one
    calibration_batches: int = 16            # batches of low-resolution patches for the int8 calibration
    calibration_gamut_share: float = 0.25    # share of synthetic colour-gamut images in them (issue 17)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    save_to: str | None = None               # the run folder only; ship into models/ by naming a path

    def validate(self):
        _check_data_and_factor(self)
        self.student.validate("student")
        _check(0.0 <= self.calibration_gamut_share < 1.0, "calibration_gamut_share", self.calibration_gamut_share,
               "0 <= value < 1")
        _check(0.0 <= self.student_loss_weight <= 1.0, "student_loss_weight", self.student_loss_weight, "0..1")
        _check(self.cache_batches >= 0, "cache_batches", self.cache_batches, "an int >= 0")
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check_writable("save_to", self.save_to)
        return self


@dataclasses.dataclass
class SRExportJobConfig:
    """`python -m kd_tf export --task sr`: an upscaler to SavedModel/TFLite, each format scored on
    the held-out photos, the int8 ones (dynamic: int8 weights, activations quantized to int8 per
    inference; int8: full integer) against float on the colour set and both held-out sets."""

    data: SRDataConfig = dataclasses.field(default_factory=SRDataConfig)
    factor: int = 2                          # must match the model's
    model: str = DEFAULT_SR_STUDENT          # the upscaler (.keras, .h5 or SavedModel dir)
    formats: list = dataclasses.field(default_factory=lambda: list(SR_EXPORT_FORMATS))  # any of SR_EXPORT_FORMATS
    out_dir: str | None = None               # default: runs/<run>/export
    calibration_batches: int = 16            # batches of low-resolution patches for the int8 calibration
    calibration_gamut_share: float = 0.25    # share of synthetic colour-gamut images in them (issue 17)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def validate(self):
        _check_data_and_factor(self)
        _check(bool(self.formats) and set(self.formats) <= set(SR_EXPORT_FORMATS), "formats", self.formats,
               f"a non-empty list of {', '.join(SR_EXPORT_FORMATS)}")
        _check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an int >= 1")
        _check(0.0 <= self.calibration_gamut_share < 1.0, "calibration_gamut_share", self.calibration_gamut_share,
               "0 <= value < 1")
        return self


JOBS.update({"train-teacher --task sr": SRTeacherJobConfig,
             "distill --task sr": SRDistillJobConfig,
             "evaluate --task sr": SRDistillJobConfig,       # its teacher, data and factor
             "export --task sr": SRExportJobConfig})     # for `python -m kd_tf config`
