"""Teachers arrive as .keras, legacy .h5 and SavedModel directories; saving is atomic."""

import numpy as np
import pytest
import keras

from kd_tf.distiller import Distiller
from kd_tf.denoise.nets import float32_copy
from kd_tf.model_io import load_model, save_model, with_dtype_policy
from kd_tf.denoise.nets import build_unet


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    teacher = build_unet((8, 16), 1, name="teacher")
    teacher.save(folder / "teacher.keras")
    teacher.save(folder / "teacher.h5")                      # the legacy Keras 2 HDF5 format
    teacher.export(str(folder / "teacher_savedmodel"), format="tf_saved_model", verbose=False)
    return teacher, folder


@pytest.mark.parametrize("name", ["teacher.keras", "teacher.h5", "teacher_savedmodel"])
def test_teacher_loads_from_every_format_and_teaches(saved_teacher, tiny_student, name):
    teacher, folder = saved_teacher
    loaded = load_model(folder / name)
    x = np.random.default_rng(0).random((2, 16, 24, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), teacher(x), atol=1e-5)
    distiller = Distiller(loaded, keras.models.clone_model(tiny_student), student_loss_weight=0.5)
    distiller.compile(optimizer="adam")
    logs = distiller.train_on_batch(x, x, return_dict=True)
    assert np.isfinite(logs["loss"])


@pytest.mark.parametrize("name", ["ffdnet.keras", "ffdnet.h5", "ffdnet_savedmodel"])
def test_a_non_blind_teacher_loads_from_every_format_and_teaches_a_blind_student(tmp_path, tiny_student, name):
    """An (image, noise level) teacher, as kd_tf exports it (export_saved_model keeps both inputs)."""
    from kd_tf.images import with_noise_level
    from kd_tf.export import export_saved_model
    from kd_tf.denoise.ffdnet import build_ffdnet
    from kd_tf.model_io import takes_noise_level

    keras.utils.set_random_seed(1)
    teacher = build_ffdnet(3, features=8, depth=3)
    teacher.save(tmp_path / "ffdnet.keras")
    teacher.save(tmp_path / "ffdnet.h5")
    export_saved_model(teacher, tmp_path / "ffdnet_savedmodel")
    loaded = load_model(tmp_path / name)
    assert takes_noise_level(loaded)
    x = np.random.default_rng(0).random((2, 16, 24, 3)).astype("float32")
    level = np.array([[15 / 255], [40 / 255]], np.float32)
    np.testing.assert_allclose(loaded([x, level]), teacher([x, level]), atol=1e-5)
    assert not np.allclose(loaded([x, level]), loaded([x, level[::-1]]), atol=1e-4), "the level is not used"
    distiller = Distiller(loaded, keras.models.clone_model(tiny_student), student_loss_weight=0.5)
    distiller.compile(optimizer="adam")
    logs = distiller.train_on_batch(with_noise_level(x, [15.0, 40.0]), x, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_missing_and_unknown_formats_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected a .keras file"):
        load_model(tmp_path / "absent.keras")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown suffix '.onnx'"):
        load_model(tmp_path / "model.onnx")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no saved_model.pb"):
        load_model(tmp_path / "empty_dir")


def test_save_is_atomic_and_leaves_no_partial(tmp_path, tiny_student):
    path = save_model(tiny_student, tmp_path / "deep" / "student.keras")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["student.keras"]


def test_bf16_model_has_same_weights_as_float32_copy():
    mixed = build_unet((8, 16), 1, name="m", mixed_precision=True)
    plain = float32_copy(mixed, (8, 16), 1)
    assert plain.get_layer("head").dtype_policy.name == "float32"
    for a, b in zip(mixed.weights, plain.weights):              # the same weights, bit for bit, by name
        assert a.path == b.path and a.dtype == b.dtype == "float32"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    assert np.abs(np.asarray(plain(x)) - np.asarray(mixed(x))).mean() < 0.02    # bfloat16 compute only
    back = with_dtype_policy(plain, "mixed_bfloat16")
    assert back.get_layer("head").dtype_policy.name == "mixed_bfloat16"
    for a, b in zip(back.weights, plain.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(back(x), np.float32) - np.asarray(plain(x))).mean() < 0.02


def test_teacher_is_stored_in_bfloat16_and_computes_what_mixed_precision_did(tmp_path, rng):
    """kd_tf.model_io.load_teacher keeps a frozen teacher's weights in bfloat16 (no per-step casts)."""
    import keras

    from kd_tf.model_io import load_teacher
    from kd_tf.denoise.nets import build_unet

    keras.utils.set_random_seed(0)
    build_unet((8, 16), 1, name="teacher").save(tmp_path / "teacher.keras")
    teacher = load_teacher(str(tmp_path / "teacher.keras"), mixed_precision=True)
    mixed = with_dtype_policy(load_model(tmp_path / "teacher.keras"), "mixed_bfloat16")
    assert not teacher.trainable and not teacher.trainable_weights
    float32 = [w.path for w in teacher.weights if w.dtype == "float32"]
    output_layers = {t._keras_history[0].name for t in teacher.outputs}
    assert all(path.split("/")[0] in output_layers for path in float32)
    assert sum(w.dtype == "bfloat16" for w in teacher.weights) > len(float32)
    batch = rng.random((2, 32, 32, 3), dtype=np.float32)
    assert np.array_equal(np.asarray(teacher(batch)), np.asarray(mixed(batch)))
    assert teacher.output.dtype == "float32"
