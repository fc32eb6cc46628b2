"""Selective quantization (kd_tf.float_layers): a convolution named to keep_float computes the same
function, and the dynamic-range TFLite file the converter makes of it keeps it in float."""

import doctest

import keras
import numpy as np
import pytest

import kd_tf.float_layers as float_layers
from kd_tf import export
from kd_tf.errors import InputError
from kd_tf.float_layers import join_float_groups, keep_float


def test_docstring_examples():
    failed, tried = doctest.testmod(float_layers)
    assert tried > 0 and failed == 0


def _net():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="head")(inputs)                  # 432 weights: float anyway
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="wide")(x)    # 3,456: int8 by default
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="next")(x)    # 5,184: int8
    return keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same", name="tail")(x))


def _dynamic_file(model, tmp_path, name):
    export.export_saved_model(model, tmp_path / name)
    return export.LiteRTModel(export.to_tflite(tmp_path / name, "dynamic"))


def test_the_dynamic_file_keeps_the_named_layers_in_float(tmp_path):
    model = _net()
    names, weights = [layer.name for layer in model.layers], model.get_weights()
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32) * 4.0 + 2.0   # offset: coarse int8 steps
    floating = keep_float(model, ["wide", "next"])
    assert "wide" in [layer.name for layer in floating.layers]                  # the concatenation keeps the name
    np.testing.assert_allclose(floating(x), model(x), atol=1e-5)                # the same function
    reference = np.asarray(model(x))
    error_int8 = np.abs(_dynamic_file(model, tmp_path, "int8")(x) - reference).max()
    error_kept = np.abs(_dynamic_file(floating, tmp_path, "kept")(x) - reference).max()
    assert error_int8 > 1e-3 and error_kept < 1e-4, (error_int8, error_kept)
    assert [layer.name for layer in model.layers] == names                   # the source untouched
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))


def test_unknown_names_and_channels_too_wide_to_split_are_refused():
    model = _net()
    with pytest.raises(InputError, match=r"\['nope'\] not among .*accepted: \['head', 'next', 'tail', 'wide'\]"):
        keep_float(model, ["nope"])
    inputs = keras.Input((None, None, 128))
    wide_channels = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="deep")(inputs))  # 1,152 weights per channel
    with pytest.raises(ValueError, match="one output channel holds 1152 weights"):
        keep_float(wide_channels, ["deep"])


def _float32_file(model, tmp_path, name):
    export.export_saved_model(model, tmp_path / name)
    return export.to_tflite(tmp_path / name, "float32")


def test_the_joined_file_keeps_each_float_layer_as_one_op_with_the_converters_rounding_elsewhere(tmp_path):
    model = _net()
    x = np.random.default_rng(1).random((2, 16, 16, 3), dtype=np.float32) * 4.0 + 2.0
    reference = np.asarray(model(x))
    joined = join_float_groups(keep_float(model, ["wide", "next"]), ["wide", "next"])
    assert [layer.name for layer in joined.layers][1:] == [layer.name for layer in model.layers][1:]
    np.testing.assert_allclose(joined(x), reference, atol=1e-5)
    kept = export.dynamic_range_int8(_float32_file(joined, tmp_path, "joined"), ["wide", "next"])
    kernels = export.convolution_kernels(kept)
    assert [row["kernel_type"] for row in kernels] == ["FLOAT32"] * 4     # one op per layer, none quantized
    assert np.abs(export.LiteRTModel(kept)(x) - reference).max() < 1e-4
    # without float layers: the converter's rule and rounding (3,456 and 5,184 weights int8, the rest float)
    plain = export.dynamic_range_int8(_float32_file(model, tmp_path, "plain"), [])
    assert [row["kernel_type"] for row in export.convolution_kernels(plain)] == ["FLOAT32", "INT8", "INT8", "FLOAT32"]
    converted = _dynamic_file(model, tmp_path, "converted")(x)
    assert np.abs(converted - reference).max() > 1e-3                       # int8 does round ...
    np.testing.assert_allclose(export.LiteRTModel(plain)(x), converted, atol=1e-5)   # ... alike in both files
    with pytest.raises(InputError, match="float layer 'nope': no convolution of the file writes it"):
        export.dynamic_range_int8(_float32_file(model, tmp_path, "plain2"), ["nope"])
    with pytest.raises(InputError, match="'wide' has no groups 'wide_float<n>'"):
        join_float_groups(model, ["wide"])
