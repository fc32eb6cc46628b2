"""The shared pieces of every task's configs: the sections several tasks use (data, train, output,
digits, generator scoring), YAML loading and validation, and the registry of job schemas.

Each task's own job schemas live in its package (kd_tf.denoise.config, kd_tf.gan.config,
kd_tf.sr.config, kd_tf.diffusion.config) and join `JOBS` when imported. Errors name the bad key or
value and what is accepted, before any training starts.
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

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"   # the shipped models, whatever the working directory
STRATEGIES = ("default", "mirrored", "multiworker")     # tf.distribute, see kd_tf.distribute
WEIGHT_ROUNDINGS = ("gptq", "nearest")     # how dynamic-range int8 rounds the weights (kd_tf.weight_rounding)


class ConfigError(InputError):
    """A configuration value that kd_tf cannot use."""


@dataclasses.dataclass
class DataConfig:
    """Where images come from and how patches and noise are made."""

    data_dir: str | None = None          # None: the embedded photos (see kd_tf.images)
    heldout_fraction: float = 0.2        # for a user's folder only; split by whole image
    split_seed: int = 0                   # seed of the held-out split of a user's folder
    patch_size: int = 64                  # side of the square training patches, px
    batch_size: int = 16                  # patches per step (the global batch under tf.distribute)
    sigma_min: float = 0.0               # 0-255 scale
    sigma_max: float = 55.0               # noise sigma drawn per patch in [sigma_min, sigma_max]
    # each training patch shows its photo downscaled by a factor drawn log-uniformly in [min_scale, 1]
    # (kd_tf.images.patch_dataset): dense detail from large photos; 1: every photo at its own scale
    min_scale: float = 1.0
    # > 1: half the training patches get their colours pushed from grey by a factor drawn in [1, it], clipped
    # (kd_tf.images.patch_dataset): saturated regions, where clipped noise is biased; 1: colours as they are
    saturation_boost: float = 1.0
    # this fraction of the training patches is made grey before the (per-channel) noise: black-and-white photos
    # (kd_tf.images.patch_dataset); 0: colours as they are
    grey_fraction: float = 0.0
    val_sigma: float = 25.0               # noise sigma of the validation crops
    val_crop: int = 128                   # side of the validation crops, px
    val_crops_per_image: int = 4          # validation crops per held-out image
    # clip and round noisy inputs to 8 bits, as cameras and image files store them and as the
    # held-out photos are scored; false: unclipped float noise (the classic AWGN protocol, and
    # kd_tf's default before session 9: configs of older runs say so explicitly)
    noisy_8bit: bool = True
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
        _check(0 < self.min_scale <= 1, "data.min_scale", self.min_scale, "0 < value <= 1 (1: no downscaling)")
        _check(self.saturation_boost >= 1, "data.saturation_boost", self.saturation_boost,
               "a factor >= 1 (1: colours as they are)")
        _check(0 <= self.grey_fraction <= 1, "data.grey_fraction", self.grey_fraction,
               "0 <= fraction <= 1 (0: colours as they are)")
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
    # false (the default): float32. "auto": bfloat16 where the hardware has it (1.6x faster on a CPU
    # with AVX512_BF16, 5-15x slower where it is emulated), float16 with loss scaling on GPUs without
    # it, else float32 (kd_tf.precision); true/bfloat16, float16 force one. Not the default: the main
    # job's student lost 2.54 dB in bfloat16 on an AVX512_BF16 CPU (benchmarks/main_job_time.json)
    mixed_precision: bool | str = False
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
class FeaturePair:
    """One intermediate layer of the teacher matched by one of the student (through an adapter)."""

    teacher: str
    student: str
    weight: float = 1.0


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
class OutputConfig:
    """Where a run writes: its folder, its TensorBoard logs."""

    run_name: str | None = None           # default: <verb>-<timestamp>
    # where run folders go (checkpoints, reports, models); $KD_TF_RUNS_DIR moves the default (the tests do)
    runs_dir: str = dataclasses.field(default_factory=lambda: os.environ.get("KD_TF_RUNS_DIR", "runs"))
    # TensorBoard logs, one folder per run; $KD_TF_LOG_DIR moves the default
    log_dir: str = dataclasses.field(default_factory=lambda: os.environ.get("KD_TF_LOG_DIR", "tensorboard_logs"))
    image_grid_every: int = 1             # epochs between TensorBoard image grids


TASKS = ("denoise", "gan", "diffusion", "sr")


# -- the digit tasks' shared sections (GAN and diffusion, kd_tf.generators) ---------------------

GAN_DIR = str(MODELS_DIR / "gan")
DEFAULT_CLASSIFIER = f"{GAN_DIR}/feature_classifier.keras"


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


def _build(cls, values, where, base=None):
    """Builds dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys fail.

    Keys that `values` leaves out keep `base`'s values (the enclosing section's default, so that a
    partial section like `--set train.learning_rate=5e-4` changes one value of the job's own
    defaults, not of the section class's), or the class defaults without a `base`.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _renamed(values, fields, where)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; accepted: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {} if base is None else {name: getattr(base, name) for name, f in fields.items() if f.init}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key, _section_base(
                _default(fields[name]) if base is None else getattr(base, name), value))
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


def _section_base(base, values):
    """`base`, unless `values` change its `family`: a net of another family starts from that
    family's class defaults (a U-Net's widths mean nothing to an FFDNet-shaped net)."""
    if isinstance(values, dict) and "family" in values and values["family"] != getattr(base, "family", None):
        return None
    return base


def _default(field):
    """A dataclass field's default value, or None when it has none."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


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


# what `python -m kd_tf config JOB` describes: each verb's config schema, added by each task's
# config module when it is imported (kd_tf.cli imports them all)
JOBS: dict[str, type] = {}


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

    >>> rows = dict((key, (default, meaning)) for key, default, meaning in describe(OutputConfig))
    >>> rows["image_grid_every"][0]
    1
    >>> "TensorBoard" in rows["log_dir"][1]
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
