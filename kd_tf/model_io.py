"""Loading models in the three formats users arrive with, and saving them without half-files."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import keras

from kd_tf.atomic import replace_durably
from kd_tf.errors import InputError

log = logging.getLogger(__name__)

ACCEPTED = "a .keras file, a legacy Keras 2 .h5/.hdf5 file, or a SavedModel directory"


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a model for inference or as a teacher, uncompiled.

    A SavedModel directory is wrapped with `keras.layers.TFSMLayer` into a functional model
    with a (None, None, C) input, so it can teach outputs (not features: it has no layers).
    A file that exists but cannot be loaded (empty, truncated, another format under a Keras
    suffix) raises ValueError naming the file and the loader's complaint, never a raw zipfile,
    HDF5 or protobuf error.
    """
    # Keras finds a saved custom layer only if its class is registered before the file is read, and
    # imports no module outside Keras to find one: the diffusion task's samplers and layers are
    # registered here, the one place the core imports a task (tests/test_layout.py lists it).
    import kd_tf.diffusion.model  # noqa: F401
    import kd_tf.diffusion.nets  # noqa: F401
    import kd_tf.diffusion.progressive  # noqa: F401
    import kd_tf.diffusion.sampler  # noqa: F401

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {str(path)!r} does not exist; expected {ACCEPTED}")
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise InputError(f"cannot load {str(path)!r}: unknown suffix {path.suffix!r}; expected {ACCEPTED}")
    if path.stat().st_size == 0:
        raise InputError(f"model {str(path)!r} is an empty file (0 bytes); expected {ACCEPTED}")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise InputError(f"model {str(path)!r} is not a .keras archive (no complete zip structure: truncated, "
                         f"or another format renamed); expected {ACCEPTED}")
    if path.suffix.lower() != ".keras" and not _is_hdf5(path):
        raise InputError(f"model {str(path)!r} is not an HDF5 file (no HDF5 signature: another format "
                         f"renamed?); expected {ACCEPTED}")
    import kd_tf.layers  # noqa: F401  registers kd_tf's own layers (kd_tf>DepthToSpace, ...: FFDNet's port)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:             # zipfile.BadZipFile, OSError (h5py), KeyError, TypeError...
        raise InputError(_unloadable(path, error)) from error


def takes_noise_level(model) -> bool:
    """Whether `model` is a non-blind denoiser: (image, noise level) in, image out, the level a
    (batch, 1) input on the 0-1 scale (sigma / 255), as FFDNet (kd_tf.denoise.ffdnet) takes it."""
    inputs = getattr(model, "inputs", None) or []
    return len(inputs) == 2 and tuple(inputs[1].shape)[1:] == (1,)


def _is_hdf5(path: Path) -> bool:
    import h5py

    return h5py.is_hdf5(str(path))


def _unloadable(path: Path, error: Exception) -> str:
    reason = " ".join(str(error).split())
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return (f"cannot load model {str(path)!r} ({type(error).__name__}: {reason}); is the file complete and "
            f"saved by Keras? expected {ACCEPTED}")


class _NamedInputsSMLayer(keras.layers.TFSMLayer):
    """A SavedModel signature of several named inputs, called with a list in `input_names` order."""

    def __init__(self, filepath, call_endpoint, input_names, **kwargs):
        super().__init__(filepath, call_endpoint=call_endpoint, **kwargs)
        self.input_names = list(input_names)

    def call(self, inputs, training=False):
        return self.call_endpoint_fn(**dict(zip(self.input_names, inputs)))


def _load_saved_model(path: Path) -> keras.Model:
    if not (path / "saved_model.pb").is_file():
        raise InputError(f"directory {str(path)!r} holds no saved_model.pb; expected {ACCEPTED}")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:             # a truncated saved_model.pb or missing variables
        raise InputError(_unloadable(path, error)) from error
    endpoints = sorted(loaded.signatures.keys())
    endpoint = next((e for e in ("serving_default", "serve") if e in endpoints), None)
    if endpoint is None:
        raise InputError(f"SavedModel {str(path)!r} has no serving signature; found {endpoints}")
    spec = list(loaded.signatures[endpoint].structured_input_signature[1].values())
    if len(spec) == 2:                      # a non-blind denoiser: the image, then its noise level
        spec.sort(key=lambda s: -s.shape.rank)
    if spec[0].shape.rank != 4 or not (len(spec) == 1 or (len(spec) == 2 and tuple(spec[1].shape)[1:] == (1,))):
        raise InputError(f"SavedModel {str(path)!r} must take one NHWC image input (and, for a non-blind denoiser, "
                         f"a (batch, 1) noise level); its signature takes {spec}")
    if len(spec) == 1:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
        inputs = keras.Input(shape=(None, None, spec[0].shape[-1]), name="noisy")
    else:
        layer = _NamedInputsSMLayer(str(path), call_endpoint=endpoint, input_names=[s.name for s in spec])
        inputs = [keras.Input(shape=(None, None, spec[0].shape[-1]), name=spec[0].name),
                  keras.Input(shape=(1,), name=spec[1].name)]
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise InputError(f"SavedModel {str(path)!r} has {len(outputs)} outputs {sorted(outputs)}; expected one")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=path.name)


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves to a temporary file beside `path`, then renames: a crash never leaves a half model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        model.save(temporary)
        replace_durably(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)    # a failed save leaves neither a half file nor a stray one
    return path


def make_trainable(model: keras.Model, what: str = "model") -> keras.Model:
    """Every layer of `model` trainable. A clone of a frozen model keeps its layers frozen while
    Keras 3 reports `clone.trainable == True`, so `clone.trainable = True` changes nothing: set
    on each layer (a model with no trainable variables never learns, and nothing says so)."""
    model.trainable = True                      # the model's own flag (a frozen Sequential's clone keeps it)
    for layer in model.layers:
        layer.trainable = True
    return require_trainable(model, what)


def require_trainable(model: keras.Model, what: str = "model") -> keras.Model:
    """`model`, or an error if it is built and has no trainable variables: it would train nothing,
    silently (a plain clone of a frozen model keeps its layers frozen).

    >>> frozen = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> frozen.trainable = False
    >>> try:
    ...     require_trainable(frozen, "student")
    ... except InputError as error:
    ...     print(str(error).split(": ")[0].replace(frozen.name, "frozen"))
    student 'frozen' has no trainable variables
    """
    if getattr(model, "built", False) and not model.trainable_variables:
        raise InputError(f"{what} {model.name!r} has no trainable variables: a clone of a frozen model keeps its "
                         f"layers frozen; pass kd_tf.model_io.trainable_copy(model) or a model of trainable layers")
    return model


def frozen_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` with its weights, frozen: a moving average of a network in training, or
    a teacher that must not change while its own copy trains.

    >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> copy = frozen_copy(net)
    >>> len(copy.trainable_variables), len(net.trainable_variables), copy is net
    (0, 2, False)
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def trainable_copy(model: keras.Model, what: str = "model") -> keras.Model:
    """A copy of `model` with its weights and every layer trainable, to train while `model` stays.

    A plain keras.models.clone_model of a loaded, frozen teacher trains nothing, silently (kd_tf's
    first progressive distillation trained no stage that way; the GAN's discriminator copies before).

    >>> frozen = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> frozen.trainable = False
    >>> len(keras.models.clone_model(frozen).trainable_variables), len(trainable_copy(frozen).trainable_variables)
    (0, 2)
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return make_trainable(copy, what)


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A functional model cloned with its layers under `policy` (e.g. "mixed_bfloat16"), same weights.

    Used to run a float32 teacher's forward pass in bfloat16, which is 1.6-1.7x faster on CPUs
    with AVX-512 BF16. The layers that produce the outputs stay float32, as build_unet keeps
    them: a residual denoiser's last addition (input + correction) in bfloat16 would round the
    distillation target to 2^-8 steps (2 gray levels near white).
    """
    output_layers = {tensor._keras_history[0].name for tensor in model.outputs}

    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in output_layers else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    copy.trainable = model.trainable
    return copy


def load_frozen(path: str, what: str, how_to_make_one: str) -> keras.Model:
    """A saved model, frozen (a teacher, a discriminator it brings), or an error naming it and how to make one."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path!r} does not exist: {how_to_make_one}")
    model = load_model(path)
    model.trainable = False
    return model


def load_float_teacher(path: str) -> keras.Model:
    """The teacher as saved (float32), frozen: what weight inheritance copies and the report scores."""
    return load_frozen(path, "teacher", "train one with `python -m kd_tf train-teacher` or pass "
                                        "--teacher PATH (.keras, .h5, SavedModel dir)")


def load_teacher(path: str, mixed_precision: bool | str) -> keras.Model:
    """The frozen teacher. With mixed precision it computes in bfloat16 and keeps its weights in
    bfloat16 too: a frozen model needs no float32 master copy, and under `mixed_bfloat16` it would
    cast every kernel on every step. Its outputs are the same to the bit and its output layers stay
    float32; the gain is small (1.02x on the distillation step, benchmarks/RESULTS.md section 6).
    With "float16" it computes under mixed_float16 (float32 weights: float16's range is narrow)."""
    teacher = load_float_teacher(path)
    if mixed_precision and Path(path).is_file():
        try:
            teacher = with_dtype_policy(teacher, "mixed_float16" if mixed_precision == "float16" else "bfloat16")
        except ValueError as error:                  # subclassed models cannot be cloned
            log.warning("teacher stays in float32 (%s)", error)
        teacher.trainable = False
    return teacher


def rebuild_wrapper(cls, config: dict, key: str):
    """`cls.from_config` for a keras.Model that wraps one inner model stored under `key` in its
    config (a sampler around its network, a tiled teacher around its model)."""
    config = dict(config)
    config[key] = keras.saving.deserialize_keras_object(config[key])
    config.pop("trainable", None)
    config.pop("dtype", None)
    return cls(**config)
