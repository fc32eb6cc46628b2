"""Class-conditional diffusion with tiny models: the class rides in the noise (the argmax of its
first values, as a conditional GAN's latent), a conditional network started from an unconditional
one samples exactly as it did, the teacher and each progressive stage learn from labeled digits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.class_latents import classes_of, latents_for_classes
from kd_tf.diffusion import DDIMSampler, DiffusionModel, build_denoiser, progressive_distillation, stage_dataset
from kd_tf.diffusion.jobs import as_generator, int8_rounded, macs_per_image
from kd_tf.diffusion.nets import denoiser_classes, warm_start
from kd_tf.diffusion.schedule import ddim_step, rates, step_times, to_pixels

CLASSES = 4


def _network(seed=0, classes=CLASSES, name="denoiser"):
    keras.utils.set_random_seed(seed)
    network = build_denoiser(28, 1, (8, 16), 1, embedding_dims=8, classes=classes, name=name)
    rng = np.random.default_rng(seed)
    kernel, bias = network.get_layer("velocity").get_weights()          # zero at the start: make v depend on x
    network.get_layer("velocity").set_weights([rng.normal(0, 0.05, kernel.shape), bias])
    if classes:                                                         # zero at the start: make classes differ
        table = network.get_layer("class_embedding")
        table.set_weights([rng.normal(0, 1.0, table.get_weights()[0].shape)])
    return network


@pytest.fixture(scope="module")
def labeled():
    """Digits whose brightness says their label (-1 + 2 * label / 3 in the model's [-1, 1])."""
    labels = np.arange(64) % CLASSES
    images = np.broadcast_to((labels / (CLASSES - 1)).reshape(-1, 1, 1, 1), (64, 28, 28, 1)).astype(np.float32)
    return images.copy(), labels


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _changed(before, model):
    return any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


def test_a_conditional_network_started_from_an_unconditional_one_samples_as_it_did():
    plain = _network(1, classes=0)
    conditional = build_denoiser(28, 1, (8, 16), 1, embedding_dims=8, classes=CLASSES)
    assert warm_start(conditional, plain) == ["class_embedding"]
    z = latents_for_classes(np.arange(6) % CLASSES, 784, CLASSES, seed=0)
    np.testing.assert_array_equal(as_generator(plain, 2)(z).numpy(), as_generator(conditional, 2)(z).numpy())
    assert macs_per_image(conditional, 1) == macs_per_image(plain, 1)
    with pytest.raises(ValueError, match=r"layer 'head' has weights of shapes \[\(1, 1, 1, 16\), \(16,\)\]"):
        warm_start(build_denoiser(28, 1, (16, 16), 1, embedding_dims=8, classes=CLASSES), plain)
    with pytest.raises(ValueError, match="classes=1; accepted: 0 .unconditional. or an int >= 2"):
        build_denoiser(28, 1, (8, 16), 1, classes=1)


def test_the_sampler_draws_the_class_its_noise_asks_for():
    network = _network(2)
    sampler = DDIMSampler(network, steps=3)
    labels = np.array([0, 1, 2, 3, 3, 2])
    z = latents_for_classes(labels, 784, CLASSES, seed=1)
    noise = z.reshape(-1, 28, 28, 1)
    noisy, image = tf.constant(noise), None                     # the DDIM loop, told the labels by hand
    times = step_times(3, 1) + [tf.zeros([1, 1, 1, 1])]
    for now, after in zip(times[:-1], times[1:]):
        noisy, image = ddim_step(lambda x: network([*x, tf.constant(labels, tf.int32)]), noisy, now, after)
    np.testing.assert_allclose(sampler(noise).numpy(), to_pixels(image).numpy(), atol=1e-5)
    other = latents_for_classes((labels + 1) % CLASSES, 784, CLASSES, seed=1)      # same noise, other class code
    assert np.abs(sampler(other.reshape(noise.shape)).numpy() - sampler(noise).numpy()).max() > 1e-2
    generator = as_generator(network, 2)
    assert classes_of(generator) == CLASSES and denoiser_classes(network) == CLASSES
    assert classes_of(as_generator(_network(2, classes=0), 2)) == 0


def test_the_sampler_records_what_it_gives_its_network_at_each_step():
    network = _network(3)
    labels = np.array([0, 1, 2, 3, 2])
    noise = latents_for_classes(labels, 784, CLASSES, seed=2).reshape(-1, 28, 28, 1)
    sampler = DDIMSampler(network, steps=3)
    seen = sampler.network_inputs(noise, batch_size=3)
    assert len(seen) == 6                                       # 2 batches x 3 steps, batch by batch
    times = step_times(3, 1)
    noisy, given = tf.constant(noise[3:]), []                   # the second batch's DDIM loop, by hand
    for now, after in zip(times, times[1:] + [tf.zeros([1, 1, 1, 1])]):
        given.append(noisy.numpy())
        noisy, _ = ddim_step(lambda x: network([*x, tf.constant(labels[3:], tf.int32)]), noisy, now, after)
    for k, (image, variance, classes) in enumerate(seen[3:]):
        np.testing.assert_allclose(image, given[k], atol=1e-5)
        np.testing.assert_allclose(variance, rates(times[k])[0].numpy() ** 2, atol=1e-6)
        np.testing.assert_array_equal(classes, labels[3:])
    np.testing.assert_array_equal(seen[0][0], noise[:3])


def test_gptq_rounds_a_samplers_network_closer_to_float_than_the_converter_would(tmp_path):
    from kd_tf.generators import export_generator, tflite_generate
    from kd_tf.weight_rounding import on_int8_grid

    network = build_denoiser(28, 1, (16, 32), 1, embedding_dims=8, classes=CLASSES)
    rng = np.random.default_rng(4)
    for layer in network.layers:                     # a trained-like network: no zero-initialised layer
        layer.set_weights([rng.normal(0, 0.3 / np.sqrt(np.prod(w.shape[:-1]) if w.ndim > 1 else 1), w.shape)
                           .astype(np.float32) if w.ndim > 1 else w for w in layer.get_weights()])
    rounded, errors = int8_rounded(network, 2, 64, seed=0)
    eligible = [name for name in errors]
    assert eligible and all(on_int8_grid(rounded.get_layer(name).get_weights()[0]) for name in eligible)
    assert all(e["gptq"] < e["nearest"] for e in errors.values())
    z = latents_for_classes(np.arange(32) % CLASSES, 784, CLASSES, seed=7)      # not the calibration noise
    float_images = as_generator(network, 2)(z).numpy()
    distance = {}
    for name, model in (("nearest", network), ("gptq", rounded)):
        path = export_generator(as_generator(model, 2), tmp_path / name, mode="dynamic")
        distance[name] = float(np.mean((tflite_generate(path)[1](z) - float_images) ** 2))
    assert distance["gptq"] < distance["nearest"], distance


def test_the_conditional_teacher_learns_its_class_embedding_from_labels(labeled):
    images, labels = labeled
    model = DiffusionModel(_network(3), ema=0.5)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    table = model.network.get_layer("class_embedding")
    before = table.get_weights()[0].copy()
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    moved = np.abs(table.get_weights()[0] - before).max(axis=1)
    assert (moved > 1e-4).all(), moved                      # every class's row: each image told its own label
    with pytest.raises(ValueError, match="conditioned on 4 classes; accepted: .images, int labels. batches"):
        model.fit(images, batch_size=16, epochs=1, verbose=0)


def test_stage_data_keep_each_image_with_its_label(labeled):
    images, labels = labeled
    (z, times, batch_labels), = next(iter(stage_dataset(images, 2, 64, seed=5, labels=labels)))
    half = times.numpy().ravel() == 0.5                     # signal rate 0.59: the brightness shows through
    assert half.sum() > 10
    brightness = z.numpy()[half].mean(axis=(1, 2, 3))
    expected = 0.587 * (-1 + 2 * batch_labels.numpy()[half] / (CLASSES - 1))
    assert np.abs(brightness - expected).max() < 0.1        # a wrong pairing is off by 0.39 or more


def test_each_conditional_stage_trains_only_its_student_and_needs_labels(labeled):
    images, labels = labeled
    network = _network(4)
    network.trainable = False
    before = _weights(network)
    stages = progressive_distillation(network, images, start_steps=4, end_steps=1, steps_per_stage=3,
                                      batch_size=8, learning_rate=1e-2, labels=labels)
    assert [steps for steps, _ in stages] == [4, 2, 1] and not _changed(before, network)
    two_step, one_step = stages[1][1], stages[2][1]
    moved = np.abs(network.get_layer("class_embedding").get_weights()[0]
                   - two_step.get_layer("class_embedding").get_weights()[0]).max(axis=1)
    assert (moved > 1e-4).all(), moved                      # every class's row learned
    assert _changed(_weights(two_step), one_step) and denoiser_classes(one_step) == CLASSES
    with pytest.raises(ValueError, match="conditioned on 4 classes; accepted: the images' int labels"):
        progressive_distillation(network, images, start_steps=4, steps_per_stage=1)


def test_the_dynamic_range_file_reads_the_class_code_exactly_where_full_integer_rounds_it(tmp_path):
    """Noise whose asked-for entry beats a lower-indexed rival by 0.001: the full-integer file
    rounds both to one int8 value (steps of ~0.04) and ARG_MAX takes the first, the rival; the
    dynamic-range file keeps the noise float and reads the class asked for. The generator here
    draws only its class (an image of brightness class / 3), so the file's class shows exactly."""
    from kd_tf.export import LiteRTModel
    from kd_tf.generators import export_generator
    from kd_tf.layers import ClassCode

    latent = keras.Input((784,), name="latent")
    brightness = np.repeat(np.arange(CLASSES, dtype="float32")[:, None] / (CLASSES - 1), 784, axis=1)
    code = keras.layers.Embedding(CLASSES, 784, embeddings_initializer=keras.initializers.Constant(brightness))
    generator = keras.Model(latent, keras.layers.Reshape((28, 28, 1))(code(ClassCode(CLASSES)(latent))))
    asked = np.array([1, 2, 3, 1, 2, 3])
    z = latents_for_classes(asked, 784, CLASSES, seed=2)
    z[np.arange(6), asked - 1] = z[np.arange(6), asked] - 1e-3           # a near tie with a lower class

    def drawn(path):
        return np.round(LiteRTModel(path)(z).mean((1, 2, 3)) * (CLASSES - 1)).astype(int)

    np.testing.assert_array_equal(np.round(np.asarray(generator(z)).mean((1, 2, 3)) * 3), asked)
    dynamic = export_generator(generator, tmp_path / "dynamic", mode="dynamic")
    assert dynamic.name == "student_generator_int8_dynamic.tflite"
    np.testing.assert_array_equal(drawn(dynamic), asked)
    full = export_generator(generator, tmp_path / "full", calibration_batches=2)
    assert (drawn(full) == asked - 1).sum() >= 5, drawn(full)
    with pytest.raises(ValueError, match="int8 mode 'int16x8'; accepted: int8, dynamic"):
        export_generator(generator, tmp_path / "other", mode="int16x8")


def test_the_adversarial_finetune_trains_only_the_student_and_its_gan_term_moves_it(labeled, tmp_path):
    from kd_tf.diffusion.adversarial import adversarial_finetune
    from kd_tf.gan.nets import build_discriminator

    images, labels = labeled
    digits = np.round(images[..., 0] * 255).astype(np.uint8)
    network, critic = _network(5), build_discriminator((8, 16), classes=CLASSES)
    before, critic_before = _weights(network), _weights(critic)
    # the student's own sampler as its target: the MSE term is 0, so only the GAN term can move it
    common = dict(steps=1, teacher=network, teacher_steps=1, discriminator=critic, images=digits, labels=labels,
                  optimizer_steps=3, batch_size=8, learning_rate=1e-3)
    still = adversarial_finetune(network, student_loss_weight=0.0, **common)
    assert not _changed(before, still)
    saved = tmp_path / "tuned.keras"
    moved = adversarial_finetune(network, student_loss_weight=0.5, saved=saved, **common)
    assert _changed(before, moved) and not _changed(before, network) and not _changed(critic_before, critic)
    record = json.loads(saved.with_suffix(".json").read_text())
    assert record["optimizer_steps"] == 3 and record["final"]["d_loss"] > 0
    again = adversarial_finetune(network, student_loss_weight=0.5, saved=saved, **{**common, "discriminator": None})
    assert not _changed(_weights(moved), again)               # loaded, not trained (it has no discriminator)
    with pytest.raises(ValueError, match=r"takes 1 input\(s\); accepted .* \(image, one-hot label\) pairs"):
        adversarial_finetune(network, **{**common, "discriminator": build_discriminator((8, 16))})
    with pytest.raises(ValueError, match="accepted: the images' int labels"):
        adversarial_finetune(network, **{**common, "labels": None})
