"""The student out to SavedModel and TFLite (every mode), run back with LiteRT."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from kd_tf import export
from kd_tf.data import patch_dataset
from kd_tf.nets import build_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    model = build_unet((4, 8), 1, name="student")
    saved = export.export_saved_model(model, folder / "saved")
    return model, saved


def test_saved_model_has_named_dynamic_signature_and_reloads(exported):
    model, saved = exported
    x = np.random.default_rng(0).random((1, 24, 40, 3)).astype("float32")
    loaded = tf.saved_model.load(str(saved))
    for name in ("serve", "serving_default"):
        assert name in loaded.signatures
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1]
    assert list(spec) == ["noisy"] and spec["noisy"].shape.as_list() == [None, None, None, 3]
    out = list(signature(noisy=tf.constant(x)).values())[0]
    np.testing.assert_allclose(out, model(x), atol=1e-5)
    layer = keras.layers.TFSMLayer(str(saved), call_endpoint="serve")
    np.testing.assert_allclose(layer(x), model(x), atol=1e-5)


@pytest.mark.parametrize("mode", export.TFLITE_MODES)
def test_tflite_modes_are_builtin_and_close_to_keras(exported, photos, mode):
    model, saved = exported
    calibration = [b[0].numpy() for b in patch_dataset(photos, 32, 4, (25, 25), seed=1).take(8)]
    flatbuffer = export.to_tflite(saved, mode, representative=calibration)
    names = export.check_builtin_only(flatbuffer)
    assert "CONV_2D" in names
    runner = export.LiteRTModel(flatbuffer)
    assert runner.input_signature[1:3] == (-1, -1)
    x = calibration[0][:1]
    reference = np.asarray(model(x))
    tolerance = {"float32": 1e-5, "float16": 5e-3, "dynamic": 3e-2, "int8": 6e-2, "int16x8": 3e-2}[mode]
    assert np.abs(runner(x) - reference).mean() < tolerance
    wider = np.random.default_rng(1).random((1, 16, 48, 3)).astype("float32")
    assert runner(wider).shape == (1, 16, 48, 3)


def test_int8_needs_real_calibration_data_and_unknown_mode_is_named(exported):
    _, saved = exported
    with pytest.raises(ValueError, match="representative data"):
        export.to_tflite(saved, "int8")
    with pytest.raises(ValueError, match="accepted: float32, float16"):
        export.to_tflite(saved, "int4")
