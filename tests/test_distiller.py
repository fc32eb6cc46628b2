"""The Distiller's loss, gradients and validation, on tiny models and fixed tensors."""

import numpy as np
import pytest
import keras
import tensorflow as tf
from keras import layers

from kd_tf.distiller import Distiller
from kd_tf.schedules import LinearRamp


def _pointwise(name, in_ch, mid_ch, seed):
    """input -> 1x1 conv 'feat' -> 1x1 conv 'out': small enough to compute by hand with numpy."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((None, None, in_ch))
    feat = layers.Conv2D(mid_ch, 1, name="feat")(inputs)
    out = layers.Conv2D(in_ch, 1, name="out")(feat)
    model = keras.Model(inputs, out, name=name)
    for layer in (model.get_layer("feat"), model.get_layer("out")):
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(size=kernel.shape).astype("float32") * 0.5,
                           rng.normal(size=bias.shape).astype("float32") * 0.1])
    return model


def _apply(layer, x):
    kernel, bias = layer.get_weights()
    return np.einsum("bhwc,cd->bhwd", x, kernel[0, 0]) + bias


def test_loss_equals_hand_computation():
    teacher, student = _pointwise("t", 3, 6, 0), _pointwise("s", 3, 2, 1)
    x = np.random.default_rng(2).random((4, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(3).random((4, 8, 8, 3)).astype("float32")
    weights = np.array([1.0, 0.5, 2.0, 0.0], "float32")
    distiller = Distiller(teacher, student, student_loss_weight=0.7, features=[("feat", "feat", 0.7)], probe_size=8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))

    t_feat = _apply(teacher.get_layer("feat"), x)
    t_out = _apply(teacher.get_layer("out"), t_feat)
    s_feat = _apply(student.get_layer("feat"), x)
    s_out = _apply(student.get_layer("out"), s_feat)
    adapted = _apply(distiller.adapters[0], s_feat)
    per_sample = lambda a, b: np.mean((a - b) ** 2, axis=(1, 2, 3)) * weights
    distill = per_sample(s_out, t_out).mean()
    own = per_sample(s_out, y).mean()
    feature = per_sample(adapted, t_feat).mean()
    expected = 0.3 * distill + 0.7 * own + 0.7 * feature

    logs = distiller.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["distill"] == pytest.approx(distill, rel=1e-4)
    assert logs["own"] == pytest.approx(own, rel=1e-4)
    assert logs["feature_feat"] == pytest.approx(feature, rel=1e-4)
    assert logs["student_loss_weight"] == pytest.approx(0.7)
    step_logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    assert step_logs["loss"] == pytest.approx(expected, rel=1e-4)


def test_l1_output_loss_and_unlabeled_inputs():
    teacher, student = _pointwise("t", 3, 4, 0), _pointwise("s", 3, 4, 1)
    x = np.random.default_rng(2).random((2, 8, 8, 3)).astype("float32")
    distiller = Distiller(teacher, student, student_loss_weight=0.8, output_loss="l1", probe_size=8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    expected = np.mean(np.abs(student.predict(x, verbose=0) - teacher.predict(x, verbose=0)))
    logs = distiller.train_on_batch(x, return_dict=True)          # no targets: pure distillation
    assert logs["student_loss_weight"] == pytest.approx(0.0)
    assert logs["own"] == 0.0
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


def test_only_student_and_adapters_change(tiny_teacher, tiny_student):
    teacher_before = [w.copy() for w in tiny_teacher.get_weights()]
    student = keras.models.clone_model(tiny_student)
    student_before = [w.copy() for w in student.get_weights()]
    tiny_teacher.trainable = True                                   # the user forgot to freeze it
    distiller = Distiller(tiny_teacher, student, student_loss_weight=0.5, features=[("bottleneck", "bottleneck")])
    assert not tiny_teacher.trainable
    adapter_before = [w.copy() for w in distiller.adapters[0].get_weights()]
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    distiller.fit(x, x, epochs=2, batch_size=2, verbose=0)
    for before, after in zip(teacher_before, tiny_teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.allclose(b, a) for b, a in zip(student_before, student.get_weights()))
    assert any(not np.allclose(b, a) for b, a in zip(adapter_before, distiller.adapters[0].get_weights()))
    assert {id(v) for v in distiller.trained_variables}.isdisjoint({id(v) for v in tiny_teacher.weights})


def test_adapters_never_reach_the_saved_student(tmp_path, tiny_teacher, tiny_student):
    """The student saved after the Distiller trained it (and its adapters) holds its trained weights
    and nothing of the adapters."""
    student = keras.models.clone_model(tiny_student)
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(tiny_teacher, student, features=[("enc0", "enc0"), ("bottleneck", "bottleneck")])
    assert len(distiller.adapters) == 2
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    distiller.fit(x, x, epochs=1, batch_size=2, verbose=0)
    assert any(not np.array_equal(b, a) for b, a in zip(before, student.get_weights())), "the student never trained"
    path = tmp_path / "student.keras"
    student.save(path)
    reloaded = keras.models.load_model(path)
    assert not [w.path for w in reloaded.weights if "adapter" in w.path]
    assert [w.path for w in reloaded.weights] == [w.path for w in student.weights]
    for saved, trained in zip(reloaded.get_weights(), student.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    np.testing.assert_allclose(reloaded(x), student(x), atol=1e-6)


def test_unknown_layer_lists_available_names(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match=r"teacher has no layer named \['nope'\].*available layers: .*bottleneck"):
        Distiller(tiny_teacher, tiny_student, features=[("nope", "bottleneck")])
    with pytest.raises(ValueError, match=r"student has no layer named \['missing'\]"):
        Distiller(tiny_teacher, tiny_student, features=[("bottleneck", "missing")])


def test_spatial_mismatch_and_output_mismatch_are_clear(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match="spatial sizes differ"):
        Distiller(tiny_teacher, tiny_student, features=[("enc0", "bottleneck")])
    gray = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(1, 1)])
    with pytest.raises(ValueError, match="output shape"):
        Distiller(tiny_teacher, gray)


def test_weight_schedule_is_followed_by_step(tiny_teacher, tiny_student):
    student = keras.models.clone_model(tiny_student)
    distiller = Distiller(tiny_teacher, student, student_loss_weight=LinearRamp(0.0, 1.0, steps=4))
    distiller.compile(optimizer=keras.optimizers.SGD(1e-3))
    x = np.zeros((1, 16, 16, 3), "float32")
    seen = [distiller.train_on_batch(x, x, return_dict=True)["student_loss_weight"] for _ in range(6)]
    np.testing.assert_allclose(seen, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_call_runs_the_student(tiny_teacher, tiny_student):
    distiller = Distiller(tiny_teacher, tiny_student)
    x = tf.random.uniform((1, 16, 16, 3))
    np.testing.assert_allclose(distiller(x), tiny_student(x), atol=1e-6)
    assert set(distiller.panels(x)) == {"teacher", "student"}


class _CountingIdentity(layers.Layer):
    """Counts how often it is placed in a graph: once per forward pass in a traced step."""

    calls = 0

    def call(self, x):
        type(self).calls += 1
        return x


def test_student_and_teacher_run_once_per_step_with_features(tiny_teacher):
    inputs = keras.Input((None, None, 3))
    counted = _CountingIdentity(name="count")(inputs)
    feat = layers.Conv2D(4, 3, padding="same", name="feat")(counted)
    student = keras.Model(inputs, layers.Conv2D(3, 3, padding="same", name="out")(feat))
    distiller = Distiller(tiny_teacher, student, features=[("enc0", "feat")], probe_size=16)
    distiller.compile(optimizer="sgd", jit_compile=False)
    _CountingIdentity.calls = 0
    x = np.zeros((2, 16, 16, 3), "float32")
    distiller.train_on_batch(x, x)
    assert _CountingIdentity.calls == 1


def test_attention_transfer_term_matches_hand_computation():
    teacher, student = _pointwise("t", 3, 6, 0), _pointwise("s", 3, 2, 1)
    x = np.random.default_rng(2).random((3, 8, 8, 3)).astype("float32")
    distiller = Distiller(teacher, student, student_loss_weight=0.0, attention=[("feat", "feat", 2.0)], probe_size=8)
    assert distiller.adapters == []
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))

    def attention(features):
        energy = np.mean(features ** 2, axis=-1).reshape(len(features), -1)
        return energy / np.linalg.norm(energy, axis=1, keepdims=True)

    t_map = attention(_apply(teacher.get_layer("feat"), x))
    s_map = attention(_apply(student.get_layer("feat"), x))
    expected_term = np.mean(np.sum((t_map - s_map) ** 2, axis=1))
    distill = np.mean((student.predict(x, verbose=0) - teacher.predict(x, verbose=0)) ** 2)
    logs = distiller.evaluate(x, x, batch_size=3, verbose=0, return_dict=True)
    assert logs["attention_feat"] == pytest.approx(expected_term, rel=1e-4)
    assert logs["loss"] == pytest.approx(distill + 2.0 * expected_term, rel=1e-4)
