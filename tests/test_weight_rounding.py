"""GPTQ int8 weight rounding (kd_tf.weight_rounding): on the converter's grid, and closer to float
than nearest rounding, in Keras and in the dynamic-range TFLite file the converter makes of it."""

import doctest

import keras
import numpy as np
import pytest

import kd_tf.weight_rounding as weight_rounding
from kd_tf.weight_rounding import (dynamic_int8, gptq_int8_weights, int8_grid_scale, on_int8_grid,
                                   round_to_int8_grid, simulated_dynamic_int8)


def test_docstring_examples():
    failed, tried = doctest.testmod(weight_rounding)
    assert tried > 0 and failed == 0


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="a")(inputs)
    x = keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="b")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="down")(x)
    x = keras.layers.Conv2D(12, 1, name="pointwise")(x)
    x = keras.layers.Conv2DTranspose(12, 2, strides=2, name="up")(x)     # left to the converter
    outputs = keras.layers.Add()([inputs, keras.layers.Conv2D(3, 3, padding="same", name="tail")(x)])
    return keras.Model(inputs, outputs)


def _images(count, seed, size=32):
    """Smooth colour fields with noise: inputs with structure, so the Hessians are not isotropic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    fields = [np.clip(np.stack([a + b * x + c * y for a, b, c in rng.uniform(-0.5, 1, (3, 3))], -1)
                      + 0.1 * rng.standard_normal((size, size, 3)), 0, 1) for _ in range(count)]
    return np.asarray(fields, np.float32)


@pytest.fixture(scope="module")
def rounded():
    model = _net()
    calibration = [_images(8, seed) for seed in range(6)]
    copy, stats = gptq_int8_weights(model, calibration)
    nearest = keras.models.clone_model(model)
    nearest.set_weights(model.get_weights())
    for layer in nearest.layers:
        if layer.name in stats:
            layer.kernel.assign(round_to_int8_grid(layer.kernel.numpy()))
    return model, copy, nearest, stats


def test_kernels_lie_on_the_converters_grid_with_the_same_scales(rounded):
    model, copy, _, stats = rounded
    assert set(stats) == {"a", "b", "down"}      # pointwise (384) and tail (324) < 1024: TFLite keeps them float
    for name in stats:
        before, after = model.get_layer(name).kernel.numpy(), copy.get_layer(name).kernel.numpy()
        assert on_int8_grid(after), name
        np.testing.assert_allclose(int8_grid_scale(after), int8_grid_scale(before), rtol=1e-5)
        assert not np.allclose(after, round_to_int8_grid(before)), f"{name}: GPTQ changed no rounding"


def test_each_layer_is_closer_to_float_than_nearest_rounding(rounded):
    *_, stats = rounded
    for name, errors in stats.items():
        assert errors["gptq"] < 0.8 * errors["nearest"], (name, errors)


def _simulated(model):
    """Keras copy rounding every eligible layer's input ("a", "b", "down") as dynamic-range kernels do."""
    return simulated_dynamic_int8(model, weights=False)


def test_the_whole_network_and_its_tflite_file_are_closer_to_float(rounded, tmp_path):
    from kd_tf import export

    model, copy, nearest, _ = rounded
    held = _images(6, 99)
    reference = np.asarray(model(held))
    keras_error = {name: float(np.mean((np.asarray(_simulated(m)(held)) - reference) ** 2))
                   for name, m in (("gptq", copy), ("nearest", nearest))}
    assert keras_error["gptq"] < 0.7 * keras_error["nearest"], keras_error
    tflite_error = {}
    for name, m in (("gptq", copy), ("nearest", nearest)):
        export.export_saved_model(m, tmp_path / name)
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(export.to_tflite(tmp_path / name, "dynamic"))
        tflite_error[name] = float(np.mean((export.LiteRTModel(path)(held) - reference) ** 2))
    assert tflite_error["gptq"] < 0.7 * tflite_error["nearest"], tflite_error


def test_the_keras_simulation_computes_as_the_dynamic_range_file(tmp_path):
    from kd_tf import export

    model = _net()
    held = _images(6, 98)
    export.export_saved_model(model, tmp_path / "float")
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(export.to_tflite(tmp_path / "float", "dynamic"))
    file_output = export.LiteRTModel(path)(held)

    def distance(keras_model):
        return float(np.mean((np.asarray(keras_model(held)) - file_output) ** 2))

    both = distance(simulated_dynamic_int8(model))
    assert both < 0.05 * distance(model), (both, distance(model))
    for half in (simulated_dynamic_int8(model, weights=False), simulated_dynamic_int8(model, activations=False)):
        assert distance(half) > 3 * both


def test_dynamic_int8_rounds_per_sample_over_a_range_holding_zero():
    x = np.array([[0.2, 0.5, 1.0], [-2.0, 0.0, 2.0]], np.float32)
    out = np.asarray(dynamic_int8(x))
    np.testing.assert_allclose(out[0], x[0], atol=1.0 / 255 / 2 + 1e-7)       # step 1/255 on [0, 1]
    np.testing.assert_allclose(out[1], x[1], atol=4.0 / 255 / 2 + 1e-7)       # step 4/255 on [-2, 2]
    assert out[1, 1] == 0.0


def test_a_channel_whose_peak_the_error_feedback_lowers_keeps_its_scale():
    """The first weight rounds up by 0.45 steps; the second input is 0.4 x the first, so GPTQ
    lowers the second weight (the channel's largest) by 1.1 steps to compensate: the converter
    would then derive a smaller scale from it and round everything anew."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="dense")(inputs))
    kernel = np.array([[63.55], [127.0]], np.float32) / 127.0
    model.get_layer("dense").set_weights([kernel])
    rng = np.random.default_rng(0)
    base = rng.standard_normal((256, 1)).astype(np.float32)
    batches = [np.concatenate([base, 0.4 * base], 1) + 0.001 * rng.standard_normal((256, 2)).astype(np.float32)]
    copy, _ = gptq_int8_weights(model, batches, dynamic_activations=False, min_elements=1)
    after = copy.get_layer("dense").kernel.numpy()
    assert on_int8_grid(after)
    np.testing.assert_allclose(int8_grid_scale(after), int8_grid_scale(kernel), rtol=1e-6)
