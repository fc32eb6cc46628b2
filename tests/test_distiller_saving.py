"""`distiller.save()` and `keras.saving.load_model()` round-trip a Distiller: teacher, student,
adapters, the weight's schedule (an adaptive weight's state too) and its terms."""

import doctest

import keras
import numpy as np
import pytest

import kd_tf.schedules
from kd_tf import schedules
from kd_tf.distiller import Distiller
from kd_tf.denoise.nets import build_unet


def test_schedule_docstring_examples_run():
    failed, tried = doctest.testmod(kd_tf.schedules)
    assert tried and not failed


@pytest.mark.parametrize("weight", [0.3, schedules.LinearRamp(0.9, 0.5, steps=10), schedules.LossRatio(0.6)])
def test_saved_distiller_loads_back_and_continues(tmp_path, weight, rng):
    teacher = build_unet((8, 16), 1, name="teacher")
    student = build_unet((4, 8), 1, name="student")
    distiller = Distiller(teacher, student, student_loss_weight=weight, output_loss="l1", features=[("dec0", "dec0", 0.2)])
    distiller.compile(optimizer="adam")
    x = rng.random((4, 32, 32, 3)).astype(np.float32)
    y = rng.random((4, 32, 32, 3)).astype(np.float32)
    distiller.fit(x, y, epochs=1, batch_size=2, verbose=0)
    distiller.save(tmp_path / "d.keras")

    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    assert isinstance(loaded, Distiller) and loaded.output_loss_kind == "l1"
    assert [(t.teacher_layer, t.student_layer, t.weight) for t in loaded.layer_terms] == [("dec0", "dec0", 0.2)]
    assert type(loaded.student_loss_weight) is type(distiller.student_loss_weight)
    np.testing.assert_allclose(loaded.student(x), distiller.student(x), atol=1e-6)
    np.testing.assert_allclose(loaded.teacher(x), distiller.teacher(x), atol=1e-6)
    np.testing.assert_allclose(loaded.adapters[0].get_weights()[0], distiller.adapters[0].get_weights()[0])
    np.testing.assert_allclose(float(loaded.student_loss_weight(5)), float(distiller.student_loss_weight(5)), atol=1e-6)
    assert not loaded.teacher.trainable
    loaded.compile(optimizer="adam")
    assert np.isfinite(loaded.fit(x, y, epochs=1, batch_size=2, verbose=0).history["loss"][0])


def test_a_plain_callable_weight_says_why_it_cannot_be_saved(tmp_path):
    distiller = Distiller(build_unet((8, 16), 1), build_unet((4, 8), 1), student_loss_weight=lambda step: 0.5)
    with pytest.raises(NotImplementedError, match="kd_tf.schedules"):
        distiller.get_config()


def test_compile_loss_sets_the_students_own_loss_and_metrics_are_logged(rng):
    import tensorflow as tf

    teacher, student = build_unet((8, 16), 1, name="teacher"), build_unet((4, 8), 1, name="student")
    x = rng.random((4, 32, 32, 3)).astype(np.float32)
    y = rng.random((4, 32, 32, 3)).astype(np.float32)
    distiller = Distiller(teacher, student, student_loss_weight=1.0, output_loss=keras.losses.Huber(delta=0.05))
    distiller.compile(optimizer="adam", loss="mae", metrics=["mse", keras.metrics.MeanAbsoluteError(name="l1")])
    logs = distiller.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    prediction = student(x)
    np.testing.assert_allclose(logs["own"], float(tf.reduce_mean(tf.abs(prediction - y))), rtol=1e-4)
    np.testing.assert_allclose(logs["mse"], float(tf.reduce_mean(tf.square(prediction - y))), rtol=1e-4)
    np.testing.assert_allclose(logs["l1"], logs["own"], rtol=1e-4)
    huber = keras.losses.Huber(delta=0.05)(teacher(x), prediction)
    np.testing.assert_allclose(logs["distill"], float(huber), rtol=1e-4)
    history = distiller.fit(x, y, epochs=1, batch_size=2, verbose=0, validation_data=(x, y))
    assert {"mse", "l1", "val_mse", "val_l1"} <= set(history.history)


def test_compile_loss_is_refused_for_an_adversarial_objective():
    from kd_tf.generators import LatentSampler
    from kd_tf.gan.nets import build_discriminator, build_generator
    from kd_tf.objectives import Adversarial

    generator = build_generator(latent_dim=8, name="g")
    distiller = Distiller(generator, build_generator(latent_dim=8, name="s"), latent_sampler=LatentSampler(8),
                          objective=Adversarial(build_discriminator()))
    with pytest.raises(ValueError, match="Adversarial"):
        distiller.compile(optimizer="adam", loss="mae")


def test_keras_loss_objects_and_compiled_metrics_survive_saving(tmp_path, rng):
    distiller = Distiller(build_unet((8, 16), 1), build_unet((4, 8), 1), output_loss=keras.losses.Huber(delta=0.05))
    distiller.compile(optimizer="adam", loss="mae", metrics=["mse"])
    x = rng.random((2, 32, 32, 3)).astype(np.float32)
    distiller.fit(x, x, epochs=1, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    assert isinstance(loaded.output_loss_kind, keras.losses.Huber)
    np.testing.assert_allclose(loaded.output_term(x, x + 0.5), distiller.output_term(x, x + 0.5))   # the same delta
    assert loaded.objective.kind == "mae" and [m.name for m in loaded.student_metrics] == ["mse"]


def test_loss_scaling_optimizer_trains_like_the_plain_one(rng):
    """A LossScaleOptimizer divides the gradients by its scale in apply(): unless the step scales the
    loss up first, every update is 32768x too small (float16 mixed precision would not learn)."""
    x = rng.random((4, 16, 16, 3)).astype(np.float32)
    y = rng.random((4, 16, 16, 3)).astype(np.float32)
    teacher = build_unet((4, 8), 1, name="teacher")
    changes = []
    for optimizer in (keras.optimizers.SGD(0.5),
                      keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=2.0 ** 15)):
        keras.utils.set_random_seed(1)
        student = build_unet((4, 8), 1, name="student")
        before = [w.copy() for w in student.get_weights()]
        distiller = Distiller(teacher, student, student_loss_weight=0.5)
        distiller.compile(optimizer=optimizer)
        distiller.train_on_batch(x, y)
        changes.append(np.concatenate([(a - b).ravel() for a, b in zip(student.get_weights(), before)]))
    assert np.abs(changes[0]).max() > 1e-6
    np.testing.assert_allclose(changes[1], changes[0], rtol=1e-3, atol=1e-8)
