"""Class-conditional GANs (kd_tf.conditional_gan): the class rides in z, the step draws z with the
real batch's classes, the discriminator scores (image, label) pairs, and the class survives export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.errors import InputError
from kd_tf.conditional_gan import (ClassLatentSampler, ConditionalAdversarial, ConditionalAdversarialTraining,
                                   ConditionalDistiller, class_accuracy, classes_of, latents_for_classes, with_class)
from kd_tf.gan.nets import build_discriminator, build_generator
from kd_tf.objectives import clone_discriminator

LATENT, CLASSES = 16, 10


@pytest.fixture(scope="module")
def nets():
    keras.utils.set_random_seed(0)
    return {"teacher": build_generator(LATENT, (8, 4, 4), name="teacher_generator", classes=CLASSES),
            "student": build_generator(LATENT, (4, 4, 2), name="student_generator", classes=CLASSES),
            "d": build_discriminator((4, 8), name="teacher_discriminator", classes=CLASSES)}


@pytest.fixture(scope="module")
def batch():
    real = np.tanh(np.random.default_rng(1).normal(0, 1, (8, 28, 28, 1))).astype("float32")
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    return real, np.eye(CLASSES, dtype="float32")[labels], labels


def test_with_class_swaps_two_entries_so_the_argmax_is_the_class():
    z = tf.random.stateless_normal((500, LATENT), seed=[0, 1])
    labels = np.arange(500) % CLASSES
    moved = with_class(z, tf.one_hot(labels, CLASSES)).numpy()
    np.testing.assert_array_equal(np.argmax(moved[:, :CLASSES], axis=1), labels)
    np.testing.assert_array_equal(moved[:, CLASSES:], z.numpy()[:, CLASSES:])          # the rest untouched
    np.testing.assert_array_equal(np.sort(moved, axis=1), np.sort(z.numpy(), axis=1))   # a permutation
    changed = (moved != z.numpy()).sum(axis=1)
    assert set(changed.tolist()) <= {0, 2} and (changed == 0).mean() == pytest.approx(0.1, abs=0.05)
    numpy_draws = latents_for_classes(labels, LATENT, CLASSES, seed=3)
    np.testing.assert_array_equal(np.argmax(numpy_draws[:, :CLASSES], axis=1), labels)
    assert abs(numpy_draws[:, CLASSES:].std() - 1.0) < 0.05
    with pytest.raises(InputError, match="0..9"):
        latents_for_classes([10], LATENT, CLASSES)


def test_the_generator_reads_its_class_from_z_and_plain_z_draws_every_class(nets):
    generator = nets["teacher"]
    assert classes_of(generator) == CLASSES and classes_of(build_generator(LATENT, (4, 4, 2))) == 0
    z = latents_for_classes(np.zeros(4, int), LATENT, CLASSES, seed=0)
    other = z.copy()
    other[:, [0, 7]] = other[:, [7, 0]]                      # the same numbers, class 7 instead of 0
    assert np.abs(generator(z) - generator(other)).max() > 1e-3
    plain = np.random.default_rng(0).standard_normal((5000, LATENT))
    counts = np.bincount(np.argmax(plain[:, :CLASSES], axis=1), minlength=CLASSES)
    assert counts.min() > 400                                 # N(0, I) latents: uniform classes


def test_the_step_draws_z_with_the_batch_classes_and_teacher_and_student_share_it(nets, batch):
    real, one_hot, labels = batch
    objective = ConditionalAdversarial(clone_discriminator(nets["d"]), keras.optimizers.SGD(0.05))
    distiller = ConditionalDistiller(nets["teacher"], nets["student"], student_loss_weight=0.5, objective=objective,
                                     latent_sampler=ClassLatentSampler(LATENT, CLASSES, seed=3))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    z, targets = distiller._latents(tf.constant(real), tf.constant(one_hot))
    np.testing.assert_array_equal(np.argmax(z.numpy()[:, :CLASSES], axis=1), labels)
    assert targets[0] is not None and np.array_equal(targets[1].numpy(), one_hot)
    embedding = objective.discriminator.get_layer("label_embedding").kernel
    before = embedding.numpy().copy()
    logs = distiller.train_on_batch(real, one_hot, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["distill"] > 0
    moved = np.abs(embedding.numpy() - before).max(axis=1)        # the discriminator step used the labels:
    assert (moved[sorted(set(labels))] > 0).all() and (moved[[0, 7, 8]] == 0).all()   # only theirs moved


def test_the_discriminator_is_told_the_class(nets, batch):
    """The generator's adversarial loss scores (fake, its class): other labels give other losses,
    and they are exactly the discriminator's logits on (fake, label)."""
    real, one_hot, labels = batch
    discriminator = clone_discriminator(nets["d"])
    discriminator.get_layer("label_embedding").set_weights([np.random.default_rng(0).normal(
        0, 1, discriminator.get_layer("label_embedding").get_weights()[0].shape).astype("float32")])
    objective = ConditionalAdversarial(discriminator, keras.optimizers.SGD(0.05))
    fake = tf.constant(real[::-1].copy())
    loss = objective(None, (tf.constant(real), tf.constant(one_hot)), fake).numpy()
    expected = tf.nn.softplus(-tf.reshape(discriminator([fake, tf.constant(one_hot)]), [-1])).numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    shifted = np.roll(one_hot, 1, axis=1)
    assert np.abs(objective(None, (tf.constant(real), tf.constant(shifted)), fake).numpy() - loss).max() > 1e-3
    with pytest.raises(InputError, match="pairs"):
        ConditionalAdversarial(build_discriminator((4, 8)), keras.optimizers.SGD(0.05)).check_prediction_shape(
            (None, 28, 28, 1))


def test_conditional_teacher_training_moves_generator_average_and_discriminator(nets, batch):
    real, one_hot, _ = batch
    generator = keras.models.clone_model(nets["student"])
    generator.set_weights(nets["student"].get_weights())
    objective = ConditionalAdversarial(clone_discriminator(nets["d"]), keras.optimizers.SGD(0.05))
    gan = ConditionalAdversarialTraining(generator, objective, ClassLatentSampler(LATENT, CLASSES, 1), ema=0.5)
    gan.compile(optimizer=keras.optimizers.SGD(0.05))
    average = [w.numpy().copy() for w in gan.ema_generator.weights]
    logs = gan.train_on_batch(real, one_hot, return_dict=True)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["d_loss"])
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(average, gan.ema_generator.weights))


def test_class_accuracy_counts_the_class_asked_for():
    """A fake 'generator' that draws the class asked for as a bright column index: a classifier
    reading that column is right on every class; one that always answers 0 is right on a tenth."""
    def generate(z):
        images = -np.ones((len(z), 28, 28, 1), np.float32)
        images[np.arange(len(z)), 0, np.argmax(z[:, :CLASSES], axis=1), 0] = 1.0
        return images

    def reads_column(images01):
        return tf.one_hot(tf.argmax(images01[:, 0, :CLASSES, 0], axis=1), CLASSES) * 20.0

    right = class_accuracy(generate, reads_column, LATENT, CLASSES, per_class=20)
    assert right["accuracy"] == right["confident_accuracy"] == 1.0 and right["samples"] == 200
    wrong = class_accuracy(generate, lambda x: tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int32), CLASSES) * 20.0,
                           LATENT, CLASSES, per_class=20)
    assert wrong["accuracy"] == pytest.approx(0.1) and wrong["worst_class"] == 1 and wrong["per_class"][0] == 1.0


def test_the_class_survives_saving_and_int8_export(nets, tmp_path):
    from kd_tf.generators import export_generator, tflite_generate
    from kd_tf.model_io import load_model, save_model

    save_model(nets["student"], tmp_path / "g.keras")
    loaded = load_model(tmp_path / "g.keras")
    assert classes_of(loaded) == CLASSES
    z = latents_for_classes(np.arange(20) % CLASSES, LATENT, CLASSES, seed=5)
    np.testing.assert_array_equal(loaded(z).numpy(), nets["student"](z).numpy())
    runner, generate = tflite_generate(export_generator(loaded, tmp_path / "export", calibration_batches=2))
    ops = {d["op_name"] for d in runner.interpreter._get_ops_details()}
    assert {"ARG_MAX", "GATHER", "QUANTIZE"} <= ops and "ONE_HOT" not in ops   # the class code, in the int8 file
    other = latents_for_classes((np.arange(20) + 5) % CLASSES, LATENT, CLASSES, seed=5)   # same noise, other class
    int8 = generate(z)
    same = np.abs(int8 - loaded(z).numpy()).reshape(20, -1).mean(axis=1)
    swapped = np.abs(int8 - loaded(other).numpy()).reshape(20, -1).mean(axis=1)
    assert (same < swapped).all()                                         # each image follows its class
    # int8 stays close to float next to how much images differ: 0.09 of the spread here; 0.6 with a one-hot
    # code through TFLite's int8 ONE_HOT, which writes 1.0 as 4.74 and drowns the noise half of z
    assert same.mean() < 0.25 * loaded(z).numpy().std(axis=0).mean()


def test_a_tie_in_the_class_entries_still_names_one_class():
    """An int8 file rounds z first, so two class entries can tie: the code must stay one class."""
    from kd_tf.layers import ClassCode

    z = np.zeros((2, LATENT), np.float32)
    z[:, [2, 5]] = 1.5                                     # an exact tie between classes 2 and 5
    z[1, 7] = 2.0                                           # no tie: class 7
    np.testing.assert_array_equal(ClassCode(CLASSES)(z).numpy(), [2, 7])


def test_docstring_examples_run():
    import doctest

    import kd_tf.class_latents
    import kd_tf.conditional_gan

    for module in (kd_tf.class_latents, kd_tf.conditional_gan):
        failed, tried = doctest.testmod(module)
        assert tried and not failed, module.__name__
