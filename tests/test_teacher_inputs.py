"""A teacher that takes more than its student (FFDNet: image and noise level) teaches a blind
student: each model gets its own inputs, live and through the teacher cache, and the report scores
a non-blind model with the true sigma."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_tf.images
import kd_tf.teacher_cache
from kd_tf.images import patch_dataset, to_8bit, with_noise_level
from kd_tf.distiller import Distiller
from kd_tf.denoise.evaluation import evaluate, methods_for
from kd_tf.model_io import takes_noise_level
from kd_tf.teacher_cache import cache_teacher_outputs, split_inputs


def level_teacher():
    """Outputs its noise-level input as a constant image: what it returns says what it was given."""
    image = keras.Input((None, None, 3), name="image")
    level = keras.Input((1,), name="level")
    ones = keras.layers.Lambda(lambda x: tf.ones_like(x))(image)
    out = keras.layers.Lambda(lambda t: t[0] * t[1][:, None, None, :])([ones, level])
    return keras.Model([image, level], out, name="level_teacher")


@pytest.fixture(scope="module")
def images(photos):
    return {name: photo[:96, :96] for name, photo in photos.items()}


def test_docstring_examples_run():
    for module in (kd_tf.images, kd_tf.teacher_cache):
        failed, tried = doctest.testmod(module)
        assert tried and not failed, module.__name__


def test_patch_stream_gives_the_teacher_each_patchs_sigma(images):
    x, clean = next(iter(patch_dataset(images, 32, 4, (5, 50), seed=3, noise_level_for_teacher=True)))
    plain, _ = next(iter(patch_dataset(images, 32, 4, (5, 50), seed=3)))
    student_inputs, (teacher_image, level) = split_inputs(x)
    np.testing.assert_array_equal(student_inputs, plain)          # the same stream, the student blind
    np.testing.assert_array_equal(teacher_image, student_inputs)
    residual_sigma = np.std(np.asarray(student_inputs) - np.asarray(clean), axis=(1, 2, 3)) * 255
    np.testing.assert_allclose(np.asarray(level)[:, 0] * 255, residual_sigma, rtol=0.2)
    assert len(set(np.round(np.asarray(level)[:, 0], 5))) == 4    # one sigma per patch


def test_live_step_and_cache_give_the_teacher_its_own_inputs(images, tiny_student):
    teacher = level_teacher()
    assert takes_noise_level(teacher) and not takes_noise_level(tiny_student)
    distiller = Distiller(teacher, tiny_student, student_loss_weight=0.0)       # the probe gives the teacher a level too
    distiller.compile(optimizer="adam")
    stream = patch_dataset(images, 32, 4, (10, 40), seed=1, noise_level_for_teacher=True)
    x, clean = next(iter(stream))
    _, level = x["teacher_inputs"]
    student_inputs, teacher_out = distiller._teacher_outputs(x)
    np.testing.assert_array_equal(student_inputs, x["inputs"])
    np.testing.assert_allclose(teacher_out[0][:, 0, 0, 0], np.asarray(level)[:, 0], rtol=1e-6)
    cache = cache_teacher_outputs(teacher, stream, num_batches=2)
    np.testing.assert_allclose(cache.teacher_outputs[:4, 5, 7, 1], np.asarray(level)[:, 0], rtol=1e-3)
    assert cache.inputs.shape == (8, 32, 32, 3)                  # the student's inputs, not the levels
    history = distiller.fit(stream, steps_per_epoch=2, epochs=1, verbose=0,
                            validation_data=(with_noise_level(np.asarray(x["inputs"]), 25.0), np.asarray(clean)))
    assert np.isfinite(history.history["val_distill"][0])


def test_report_scores_a_non_blind_model_with_the_true_sigma(images):
    teacher = level_teacher()
    report = evaluate(methods_for({"level": teacher}, ()), images, sigmas=(20,), timing=False, progress=lambda _: None)
    clean = next(iter(images.values()))
    expected = 10 * np.log10(1.0 / np.mean((clean - to_8bit(np.full_like(clean, 20 / 255))) ** 2))
    first = sorted(images)[0]
    assert report["methods"]["level"]["scores"]["20.0"]["per_image"][first]["psnr"] == pytest.approx(expected, abs=0.05)


def test_blind_teacher_benchmark_gives_the_teacher_the_estimated_sigma(images):
    import benchmarks.blind_teacher as blind
    from kd_tf.images import noisy_copy

    failed, tried = doctest.testmod(blind)
    assert tried and not failed
    estimates = {}
    method = blind.estimating_method("estimating", level_teacher(), estimates)
    report = evaluate([method], images, sigmas=(20,), timing=False, progress=lambda _: None)
    first = sorted(images)[0]
    noisy = to_8bit(noisy_copy(images[first], 20, 2024))                 # what evaluate gave image 0
    given = estimates["20.0"][0]
    assert len(estimates["20.0"]) == len(images) and given == pytest.approx(blind.estimated_sigma(noisy))
    assert abs(given - 20) > 1e-3                                         # read from the image, not told
    expected = 10 * np.log10(1.0 / np.mean((images[first] - to_8bit(np.full_like(images[first], given / 255))) ** 2))
    assert report["methods"]["estimating"]["scores"]["20.0"]["per_image"][first]["psnr"] == pytest.approx(expected, abs=0.01)


def test_noise_level_is_required_for_a_non_blind_model():
    from kd_tf.inference import run_on_image

    with pytest.raises(ValueError, match="noise level"):
        run_on_image(level_teacher(), np.zeros((16, 16, 3), np.float32))


def test_denoise_cli_gives_a_non_blind_model_its_sigma(tmp_path, capsys):
    import cv2

    from kd_tf.cli import main

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    rng = np.random.default_rng(0)
    clean = np.clip(np.indices((40, 52)).sum(0)[..., None] * np.array([2, 3, 4]), 0, 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(image), noisy)
    model = tmp_path / "level.keras"
    from kd_tf.denoise.ffdnet import build_ffdnet

    build_ffdnet(features=8, depth=3).save(model)
    assert main(["denoise", "--model", str(model), "--input", str(image), "--output", str(tmp_path / "no")]) == 2
    assert "--sigma" in capsys.readouterr().err
    assert main(["denoise", "--model", str(model), "--input", str(image), "--output", str(tmp_path / "out"),
                 "--sigma", "25"]) == 0
    assert cv2.imread(str(tmp_path / "out" / "a.png")).shape == (40, 52, 3)
