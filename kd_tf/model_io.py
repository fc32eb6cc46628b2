"""Loading models in the three formats users arrive with, and saving them without half-files."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from kd_tf.nets.unet import build_unet

ACCEPTED = "a .keras file, a legacy Keras 2 .h5/.hdf5 file, or a SavedModel directory"


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a model for inference or as a teacher, uncompiled.

    A SavedModel directory is wrapped with `keras.layers.TFSMLayer` into a functional model
    with a (None, None, C) input, so it can teach outputs (not features: it has no layers).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {str(path)!r} does not exist; expected {ACCEPTED}")
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        return keras.models.load_model(path, compile=False)
    raise ValueError(f"cannot load {str(path)!r}: unknown suffix {path.suffix!r}; expected {ACCEPTED}")


def _load_saved_model(path: Path) -> keras.Model:
    if not (path / "saved_model.pb").is_file():
        raise ValueError(f"directory {str(path)!r} holds no saved_model.pb; expected {ACCEPTED}")
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    endpoints = sorted(loaded.signatures.keys())
    endpoint = next((e for e in ("serving_default", "serve") if e in endpoints), None)
    if endpoint is None:
        raise ValueError(f"SavedModel {str(path)!r} has no serving signature; found {endpoints}")
    spec = list(loaded.signatures[endpoint].structured_input_signature[1].values())
    if len(spec) != 1 or spec[0].shape.rank != 4:
        raise ValueError(f"SavedModel {str(path)!r} must take one NHWC image input; its signature takes {spec}")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    inputs = keras.Input(shape=(None, None, spec[0].shape[-1]), name="noisy")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(f"SavedModel {str(path)!r} has {len(outputs)} outputs {sorted(outputs)}; expected one")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=path.name)


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves to a temporary file beside `path`, then renames: a crash never leaves a half model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    model.save(temporary)
    os.replace(temporary, path)
    return path


def float32_copy(model: keras.Model, widths, blocks) -> keras.Model:
    """The same U-Net computing in float32 (for export and evaluation after bf16 training)."""
    copy = build_unet(widths, blocks, channels=model.input_shape[-1], name=model.name, mixed_precision=False)
    copy.set_weights(model.get_weights())
    return copy


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A functional model cloned with every layer under `policy` (e.g. "mixed_bfloat16"), same weights.

    Used to run a float32 teacher's forward pass in bfloat16, which is 1.6-1.7x faster on CPUs
    with AVX-512 BF16; the outputs are cast back to float32 by the caller.
    """
    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    copy.trainable = model.trainable
    return copy
