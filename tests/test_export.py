"""The student out to SavedModel and TFLite (every mode), run back with LiteRT."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from kd_tf import export, inference
from kd_tf.images import patch_dataset
from kd_tf.denoise.nets import build_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)
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
    # the U-Net's 2x2 stride-2 transposed convolution is traced as conv + depth-to-space: no
    # TRANSPOSE_CONV with a run-time output shape (SHAPE ... PACK), which XNNPACK leaves out
    assert "DEPTH_TO_SPACE" in names and not {"TRANSPOSE_CONV", "SHAPE", "PACK"} & set(names)
    runner = export.LiteRTModel(flatbuffer)
    assert runner.input_signature[1:3] == (-1, -1)
    x = calibration[0][:1]
    reference = np.asarray(model(x))
    # measured: 9e-8, 1e-4, 9e-8, 0.011, 0.003 (mean abs, on [0, 1] images)
    tolerance = {"float32": 1e-6, "float16": 1e-3, "dynamic": 1e-3, "int8": 0.025, "int16x8": 0.01}[mode]
    error = np.abs(runner(x) - reference).mean()
    assert error < tolerance
    # the untrained net is not the identity: a converted model that passed its input through, or
    # lost most of the function, is 0.55 away; the tolerance above is a few % of that
    assert error < 0.05 * np.abs(x - reference).mean()
    wider = np.random.default_rng(1).random((1, 16, 48, 3)).astype("float32")
    assert runner(wider).shape == (1, 16, 48, 3)


def test_int8_needs_real_calibration_data_and_unknown_mode_is_named(exported):
    _, saved = exported
    with pytest.raises(ValueError, match="representative data"):
        export.to_tflite(saved, "int8")
    with pytest.raises(ValueError, match="accepted: float32, float16"):
        export.to_tflite(saved, "int4")


def test_tflite_with_flex_ops_is_refused_in_one_line(tmp_path, capsys):
    """A model converted with SELECT_TF_OPS would need TensorFlow on the phone: the op check
    names the Flex op, and `denoise` stops with one line instead of an interpreter failure."""
    from kd_tf.cli import main

    def flex_model(x):                                   # MatrixDeterminant has no TFLite builtin
        det = tf.linalg.det(tf.eye(3) + 0.0 * x[0, :3, :3, 0][None])
        return x + 0.0 * tf.reshape(det, [1, 1, 1, 1])

    function = tf.function(flex_model, input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flatbuffer = converter.convert()
    with pytest.raises(export.FlexOpsError, match="FlexMatrixDeterminant"):
        export.check_builtin_only(flatbuffer)
    model = tmp_path / "flex.tflite"
    model.write_bytes(flatbuffer)
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    import cv2
    cv2.imwrite(str(image), np.full((16, 16, 3), 128, np.uint8))
    assert main(["denoise", "--model", str(model), "--input", str(image.parent), "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err.strip()
    assert "FlexMatrixDeterminant" in message and "builtin ops only" in message and "\n" not in message


@pytest.mark.parametrize("verb", ["export", "denoise"])
def test_output_directory_that_is_a_file_is_one_line_error(tmp_path, capsys, verb):
    from kd_tf.cli import main

    model = tmp_path / "student.keras"
    build_unet((4, 8), 1, name="student").save(model)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    import cv2
    cv2.imwrite(str(image), np.full((16, 16, 3), 128, np.uint8))
    args = (["export", "--model", str(model), "--out", str(blocker), "--formats", "keras",
             "--set", f"output.runs_dir={tmp_path / 'runs'}"] if verb == "export" else
            ["denoise", "--model", str(model), "--input", str(image.parent), "--output", str(blocker)])
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert str(blocker) in message and "\n" not in message
    assert blocker.read_text() == "a file, not a folder"


def test_shuffle_upsampling_is_the_same_function_and_leaves_overlapping_transposes(tmp_path):
    import doctest

    failed, tried = doctest.testmod(export)
    assert tried >= 3 and failed == 0
    inputs = keras.Input((None, None, 6))
    up = keras.layers.Conv2DTranspose(5, 3, strides=3, use_bias=False, name="up3")(inputs)
    overlapping = keras.layers.Conv2DTranspose(4, 4, strides=2, padding="same", name="gan_up")(up)
    model = keras.Model(inputs, overlapping)
    keras.utils.set_random_seed(2)
    model.get_layer("up3").set_weights([np.random.default_rng(3).normal(size=(3, 3, 5, 6)).astype("float32")])
    rewritten = export.shuffle_upsampling(model)
    kinds = {layer.name: type(layer).__name__ for layer in rewritten.layers}
    assert kinds["up3"] == "Conv2D" and kinds["up3_shuffle"] == "DepthToSpace"
    assert kinds["gan_up"] == "Conv2DTranspose"            # kernel 4, stride 2: it overlaps, kept
    x = np.random.default_rng(4).random((2, 5, 7, 6)).astype("float32")
    np.testing.assert_allclose(rewritten(x), model(x), atol=1e-5)
    assert export.shuffle_upsampling(rewritten) is rewritten   # nothing left to replace


def test_a_global_context_unet_converts_to_int8_with_builtin_ops(tmp_path, photos, context_unet):
    """The blind student's global context (image means, 1x1 convolutions, FiLM) is MEAN, CONV_2D and
    broadcast MUL / ADD in int8: builtin ops, close to Keras, and the whole image still steers every
    pixel (a change far away moves a corner's output, which a fully convolutional U-Net of this depth
    cannot do)."""
    model = context_unet((4, 8), 4, kernel_std=0.3, seed=2)
    calibration = [b[0].numpy() for b in patch_dataset(photos, 32, 4, (25, 25), seed=1).take(8)]
    flatbuffer = export.to_tflite(export.export_saved_model(model, tmp_path / "saved"), "int8",
                                  representative=calibration)
    assert {"MEAN", "MUL", "CONV_2D"} <= set(export.check_builtin_only(flatbuffer))
    (tmp_path / "context.tflite").write_bytes(flatbuffer)
    assert inference.load_runner(tmp_path / "context.tflite").pools_whole_image       # never cut into tiles
    runner = export.LiteRTModel(flatbuffer)
    x = np.concatenate([calibration[0][:1], calibration[1][:1]], axis=2)         # 32 x 64
    reference = np.asarray(model(x))
    assert np.abs(runner(x) - reference).mean() < 0.05 * np.abs(x - reference).mean()
    far = x.copy()
    far[:, :, 48:] = 1.0 - far[:, :, 48:]
    for outputs in (np.asarray(model(x)) - np.asarray(model(far)), runner(x) - runner(far)):
        assert np.abs(outputs[:, :8, :8]).max() > 1e-3


class _ChannelMean(keras.layers.Layer):
    def call(self, x):
        return x - keras.ops.mean(x, axis=-1, keepdims=True)


def test_only_a_spatial_reduction_marks_a_tflite_file_as_whole_image(tmp_path):
    """kd_tf.inference reads the reduction's axes: a mean over height and width (a global context)
    makes every pixel depend on the whole image, a mean over channels does not, so only the first
    file must run untiled."""
    inputs = keras.Input((None, None, 3))
    local = keras.Model(inputs, _ChannelMean()(keras.layers.Conv2D(3, 3, padding="same")(inputs)))
    pooled = keras.Model(inputs, inputs * keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs))
    files = {name: export.to_tflite(export.export_saved_model(model, tmp_path / name)) for name, model in
             (("local", local), ("pooled", pooled))}
    assert "MEAN" in export.op_names(files["local"]) and "MEAN" in export.op_names(files["pooled"])
    assert not inference.tflite_pools_spatially(files["local"])
    assert inference.tflite_pools_spatially(files["pooled"])
