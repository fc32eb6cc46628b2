"""The int8 sensitivity table names the tensor that costs the int8 model its quality."""

import doctest

import keras
import numpy as np
import pytest

import kd_tf.int8_sensitivity
from kd_tf.export import int8_ready
from kd_tf.fake_quant import FakeQuant, quant_name
from kd_tf.int8_sensitivity import ALL_ROW, WEIGHTS_ROW, format_sensitivity, quantization_sensitivity


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="middle")(x)
    outputs = keras.layers.Conv2D(3, 3, padding="same", name="last")(x)
    return keras.Model(inputs, outputs)


def test_a_clipping_range_is_named_worst_and_widths_are_restored(rng):
    model = _model()
    batches = [rng.random((2, 16, 16, 3)).astype("float32") for _ in range(2)]
    ready = int8_ready(model, batches)
    middle = ready.get_layer(quant_name("middle"))
    low, high = float(middle.range_min.numpy()), float(middle.range_max.numpy())
    middle.set_range(low, high / 20)                 # most of "middle" now saturates
    table = quantization_sensitivity(model, ready, {"a": batches[0], "b": batches[1]})
    rows = {row["tensor"]: row for row in table["rows"]}
    assert [row["tensor"] for row in table["rows"][:3]] == [ALL_ROW, WEIGHTS_ROW, "middle"]
    tap = keras.Model(model.inputs, model.get_layer("middle").output)
    beyond = np.mean(np.concatenate([np.ravel(tap(b)) for b in batches]) > high / 20)
    assert beyond > 0.1 and rows["middle"]["clipped_share"] == pytest.approx(beyond, abs=0.01)
    assert rows["first"]["clipped_share"] < 0.01
    # alone at 8 bits, the clipped tensor loses far more than any other single tensor
    assert rows["middle"]["fidelity_db"] < min(rows[t]["fidelity_db"] for t in ("first", "last")) - 10
    # the weights-only row keeps every activation wide, so it is far closer to float than the int8 model
    assert rows[WEIGHTS_ROW]["fidelity_db"] > rows[ALL_ROW]["fidelity_db"] + 10
    assert set(rows["last"]["per_input_db"]) == {"a", "b"}
    assert all(layer.num_bits == 8 for layer in ready.layers if isinstance(layer, FakeQuant))
    assert "middle" in format_sensitivity(table, limit=1) and "last" not in format_sensitivity(table, limit=1)


def test_an_output_transform_forgives_what_the_user_never_sees(rng):
    """Compared after the task's own clipping, the output's clipping range costs nothing."""
    model = _model()
    batch = rng.random((2, 16, 16, 3)).astype("float32")
    ready = int8_ready(model, [batch])
    ready.get_layer(quant_name("last")).set_range(0.0, 0.05)          # the output clipped at 0.05
    clip = lambda outputs: np.clip(outputs, 0.0, 0.05)                # noqa: E731 - so is what the user gets
    raw = {row["tensor"]: row for row in quantization_sensitivity(model, ready, {"a": batch})["rows"]}
    seen = {row["tensor"]: row for row in quantization_sensitivity(model, ready, {"a": batch},
                                                                   output_transform=clip)["rows"]}
    assert raw["last"]["clipped_share"] > 0.1 and raw["last"]["fidelity_db"] < 30
    assert seen["last"]["fidelity_db"] > raw["last"]["fidelity_db"] + 20
    # both outputs go through the transform: one that forgets everything leaves no difference at all
    blind = quantization_sensitivity(model, ready, {"a": batch}, output_transform=np.zeros_like)["rows"]
    assert all(row["fidelity_db"] == float("inf") for row in blind)


def test_bad_arguments_are_named(rng):
    model = _model()
    batch = rng.random((1, 8, 8, 3)).astype("float32")
    with pytest.raises(ValueError, match="FakeQuant"):
        quantization_sensitivity(model, model, {"a": batch})
    with pytest.raises(ValueError, match="wide_bits=8"):
        quantization_sensitivity(model, int8_ready(model, [batch]), {"a": batch}, wide_bits=8)
    with pytest.raises(ValueError, match="at least one"):
        quantization_sensitivity(model, int8_ready(model, [batch]), {})


def test_docstring_examples_run():
    failed, tried = doctest.testmod(kd_tf.int8_sensitivity)
    assert tried and not failed
