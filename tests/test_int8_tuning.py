"""Tuning a GPTQ-rounded dynamic-range copy through its rounding (kd_tf.int8_tuning): its int8
computation moves closer to the float model on images it never saw, its kernels stay on the
converter's grid with the same scales, and what it cannot tune it leaves as given."""

import doctest

import keras
import numpy as np
import pytest

import kd_tf.int8_tuning as int8_tuning
from kd_tf.int8_tuning import tune_dynamic_int8
from kd_tf.weight_rounding import gptq_int8_weights, int8_grid_scale, on_int8_grid, simulated_dynamic_int8


def test_docstring_examples():
    failed, tried = doctest.testmod(int8_tuning)
    assert tried > 0 and failed == 0


def _net(seed=0):
    """A small residual denoiser: convolutions the converter quantizes (>= 1,024 weights), a Dense
    one it quantizes too (not tuned here), and small ones it keeps in float."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3), name="noisy")
    x = keras.layers.Conv2D(16, 3, padding="same", name="head")(inputs)                  # 432: float
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="a")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="b")(x)
    x = keras.layers.Dense(48, activation="relu", name="mix")(x)                          # 1,152: not tuned
    outputs = keras.layers.Add()([inputs, keras.layers.Conv2D(3, 3, padding="same", name="tail")(x)])   # 1,296
    return keras.Model(inputs, outputs)


def _pairs(count, seed, size=32):
    """(noisy 8-bit, clean) batches: flat and smooth colour fields, the images int8 hurts most."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    def field():     # per channel: a level in [-0.2, 1] and gentle slopes (clipped: many flat parts)
        planes = [a + b * x + c * y for a, b, c in rng.uniform(-0.2, 1, (3, 3)) * [1, 0.3, 0.3]]
        return np.clip(np.stack(planes, -1), 0, 1)

    clean = np.asarray([field() for _ in range(count)], np.float32)
    noisy = np.round(np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1) * 255) / 255
    return noisy.astype(np.float32), clean


def _int8_error(reference, copy, batches):
    simulated = simulated_dynamic_int8(copy)
    return float(np.mean([np.mean((np.asarray(simulated(x)) - np.asarray(reference(x))) ** 2) for x, _ in batches]))


@pytest.fixture(scope="module")
def tuned():
    model = _net()
    rounded = simulated_dynamic_int8(model, activations=False)       # nearest rounding: plain layers on the grid
    stream = (_pairs(8, 100 + step) for step in range(10_000))
    copy, record = tune_dynamic_int8(model, rounded, stream, steps=300, learning_rate=3e-4)
    return model, rounded, copy, record


def test_tuning_brings_the_int8_computation_closer_to_float_on_unseen_images(tuned):
    model, rounded, copy, record = tuned
    unseen = [_pairs(8, seed) for seed in (7_000, 7_001, 7_002)]
    before, after = _int8_error(model, rounded, unseen), _int8_error(model, copy, unseen)
    assert after < 0.8 * before, (before, after)
    assert record["loss_last_steps"] < record["loss_first_steps"]


def test_tuned_kernels_stay_on_the_grid_with_the_converters_scales(tuned):
    model, rounded, copy, record = tuned
    assert record["tuned_layers"] == ["a", "b", "tail"] and record["left_as_rounded"] == ["mix"]
    for name in ("a", "b", "tail"):
        kernel = copy.get_layer(name).kernel.numpy()
        assert on_int8_grid(kernel), name
        np.testing.assert_allclose(int8_grid_scale(kernel), int8_grid_scale(rounded.get_layer(name).kernel.numpy()),
                                   rtol=1e-6)
        assert not np.array_equal(kernel, rounded.get_layer(name).kernel.numpy()), f"{name} was not tuned"
    np.testing.assert_array_equal(copy.get_layer("mix").kernel.numpy(), rounded.get_layer("mix").kernel.numpy())
    assert type(copy.get_layer("a")) is keras.layers.Conv2D          # plain layers: it saves and converts as any


def test_unrounded_kernels_and_short_datasets_are_refused():
    model = _net()
    with pytest.raises(ValueError, match="not on the int8 grid"):
        tune_dynamic_int8(model, model, iter([_pairs(8, 0)]), steps=1)
    rounded, _ = gptq_int8_weights(model, [_pairs(8, 0)[0]])
    with pytest.raises(ValueError, match="ended after 2 batches; 5 steps"):
        tune_dynamic_int8(model, rounded, [_pairs(8, 0), _pairs(8, 1)], steps=5)


def test_full_integer_copy_tuned_toward_float_gets_closer_on_unseen_images():
    """The export's qat_target="float": a fake-quantized copy (frozen calibrated ranges, int8
    weights) fitted to the float model's outputs, each sample weighted by float's own error,
    computes closer to float on images it never saw; its ranges stay as calibrated."""
    from kd_tf.fake_quant import FakeQuant, calibrate_ranges, freeze_ranges, quantize_aware
    from kd_tf.int8_tuning import tune_toward_reference

    model = _net()
    calibration = [_pairs(8, seed)[0] for seed in (1, 2)]
    aware = freeze_ranges(calibrate_ranges(quantize_aware(model), model, calibration, percentile=99.9))
    ranges = [layer.get_weights() for layer in aware.layers if isinstance(layer, FakeQuant)]
    unseen = [_pairs(8, seed)[0] for seed in (7_000, 7_001, 7_002)]

    def error():
        return float(np.mean([np.mean((np.asarray(aware(x)) - np.asarray(model(x))) ** 2) for x in unseen]))

    before = error()
    losses = tune_toward_reference(model, aware, (_pairs(8, 100 + step) for step in range(10_000)), 200, 3e-4)
    assert len(losses) == 200 and np.mean(losses[-50:]) < np.mean(losses[:50])
    assert error() < 0.8 * before, (before, error())
    for old, layer in zip(ranges, [layer for layer in aware.layers if isinstance(layer, FakeQuant)]):
        for a, b in zip(old, layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="steps=0"):
        tune_toward_reference(model, aware, iter([]), 0, 1e-4)
