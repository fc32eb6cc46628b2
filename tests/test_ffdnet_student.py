"""The blind FFDNet-shaped student (kd_tf.denoise.ffdnet_student): residual from random weights,
and its start from an FFDNet teacher's weights by layer-wise refitting."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.denoise import jobs
from kd_tf.denoise.ffdnet import build_ffdnet
from kd_tf.denoise.ffdnet_student import build_blind_ffdnet, ffdnet_inheritance_problem, inherit_from_ffdnet
from kd_tf.denoise.nets import build_unet
from kd_tf.errors import InputError
from kd_tf.images import noisy_copy, to_8bit
from kd_tf.model_io import load_model


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))


def _teacher_batches(images, sigma, count=3, size=32):
    """(noisy, sigma / 255) batches of random crops of `images` (H, W, 3) at one noise level."""
    rng = np.random.default_rng(0)
    batches = []
    for index in range(count):
        crops = []
        for image in images:
            top, left = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
            crops.append(image[top:top + size, left:left + size])
        noisy = np.stack([to_8bit(noisy_copy(c, sigma, 100 * index + k)) for k, c in enumerate(crops)])
        batches.append((noisy.astype(np.float32), np.full((len(noisy), 1), sigma / 255.0, np.float32)))
    return batches


@pytest.fixture(scope="module")
def photo():
    from kd_tf.images import default_photos

    return default_photos(["chelsea"])["chelsea"][:160, :200]


@pytest.mark.parametrize("height, width", [(16, 16), (15, 21)])
def test_from_random_weights_the_student_is_residual(height, width):
    """The last convolution starts as the identity on the input it reads beside the features: at
    initialisation the output is the input plus a correction computed from the features alone."""
    keras.utils.set_random_seed(0)
    student = build_blind_ffdnet(features=6, depth=4)
    images = np.random.default_rng(1).random((2, height, width, 3)).astype(np.float32)
    output = student(images).numpy()
    last = student.get_layer("conv03")
    kernel, bias = last.get_weights()
    assert np.abs(kernel[..., :6, :]).max() > 0               # the features' part is random
    last.set_weights([np.concatenate([kernel[..., :6, :], 0 * kernel[..., 6:, :]], axis=2), bias])
    correction = student(images).numpy()                       # the features' part alone
    np.testing.assert_allclose(output - correction, images, atol=1e-5)


def test_a_student_as_wide_as_the_teacher_becomes_the_teacher_at_one_noise_level(photo):
    """Same width and one sigma: the noise-level channel is a constant the biases absorb, so the
    refitted blind student computes the teacher (up to the image border, where the constant
    channel meets the zero padding)."""
    keras.utils.set_random_seed(2)
    teacher = build_ffdnet(features=8, depth=3)
    student = build_blind_ffdnet(features=8, depth=3)
    kept = inherit_from_ffdnet(teacher, student, _teacher_batches([photo], 25.0, count=4), ridge=1e-9)
    assert len(kept["channels"]) == 3 and max(kept["relative_error"]) < 1e-3
    noisy, sigma = _teacher_batches([photo], 25.0, count=1, size=48)[0]
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert _psnr(student(noisy).numpy()[inner], teacher([noisy, sigma]).numpy()[inner]) > 50


def test_a_narrow_student_of_the_shipped_teacher_denoises_before_any_training(photo):
    """28 of the 96 channels, refitted: already a denoiser close to the teacher (the plain slice of
    the strongest channels is not: it is measured beside it)."""
    teacher = load_model(denoise_config.DEFAULT_TEACHER)
    student = build_blind_ffdnet(features=28)
    kept = inherit_from_ffdnet(teacher, student, _teacher_batches([photo], 25.0, count=4))
    assert kept["channels"][0] == sorted(kept["channels"][0]) and len(kept["channels"][0]) == 28

    sliced = build_blind_ffdnet(features=28)
    convs = [layer for layer in teacher.layers if isinstance(layer, keras.layers.Conv2D)]
    for index, layer in enumerate(layer for layer in sliced.layers if isinstance(layer, keras.layers.Conv2D)):
        kernel, bias = convs[index].get_weights()
        inputs = kept["channels"][index - 1] if index else list(range(12))
        outputs = kept["channels"][index]
        kernel = kernel[:, :, inputs][..., outputs]
        if index == len(convs) - 1:
            kernel = np.concatenate([kernel, np.zeros((3, 3, 12, 12), np.float32)], axis=2)
        layer.set_weights([kernel, bias[outputs]])

    clean = photo[None, :128, :128]
    noisy = to_8bit(noisy_copy(clean[0], 25.0, 7))[None].astype(np.float32)
    scores = {name: _psnr(np.clip(model(noisy).numpy(), 0, 1), clean)
              for name, model in (("refitted", student), ("sliced", sliced))}
    scores["teacher"] = _psnr(np.clip(teacher([noisy, np.full((1, 1), 25 / 255, np.float32)]).numpy(), 0, 1), clean)
    scores["noisy"] = _psnr(noisy, clean)
    assert scores["refitted"] > scores["noisy"] + 6, scores
    assert scores["refitted"] > scores["sliced"] + 3, scores
    assert scores["refitted"] > scores["teacher"] - 5, scores


@pytest.mark.parametrize("teacher, student, message", [
    (lambda: build_unet((8, 16), 1), lambda: build_blind_ffdnet(8, 3), "the teacher is not a kd_tf.denoise.ffdnet"),
    (lambda: build_ffdnet(features=8, depth=3), lambda: build_unet((4, 8), 1), "the student is not a"),
    (lambda: build_ffdnet(features=8, depth=3), lambda: build_blind_ffdnet(8, 4), "4 convolutions, the teacher 3"),
    (lambda: build_ffdnet(features=8, depth=3), lambda: build_blind_ffdnet(9, 3), r"wider \(9 channels\)"),
])
def test_pairs_that_do_not_fit_are_named(teacher, student, message):
    teacher, student = teacher(), student()
    assert re.search(message, ffdnet_inheritance_problem(teacher, student))
    with pytest.raises(InputError, match=message):
        inherit_from_ffdnet(teacher, student, _teacher_batches([np.zeros((40, 40, 3), np.float32)], 25.0, 1))


def test_the_main_job_inherits_and_fine_tunes_at_a_tenth_of_the_rate(tmp_path, monkeypatch):
    """student.family=ffdnet inherits from the default (FFDNet) teacher; the inherited weights get
    distill.inherited_learning_rate's default, a tenth of train.learning_rate."""
    monkeypatch.setenv("KD_TF_QUIET", "1")
    settings = {"student": {"family": "ffdnet"},
                "data": {"patch_size": 32, "batch_size": 2, "val_crop": 32, "val_crops_per_image": 1},
                "train": {"steps": 2, "steps_per_epoch": 2}, "distill": {"cache_batches": 2},
                "eval": {"sigmas": [25], "baselines": [], "max_images": 1, "timing_size": 32},
                "export_formats": [], "output": {"runs_dir": str(tmp_path), "run_name": "inherit"}}
    report = jobs.distill(cfg.from_dict(denoise_config.DistillJobConfig, settings))
    assert report["student_init"] == "teacher"
    assert report["inherited"]["learning_rate"] == pytest.approx(1e-4)
    assert len(report["inherited"]["relative_error"]) == 12 and max(report["inherited"]["relative_error"]) < 0.5
    student = load_model(tmp_path / "inherit" / "student.keras")
    assert student.count_params() == build_blind_ffdnet().count_params()


def test_with_a_u_net_teacher_auto_keeps_random_weights(tmp_path, monkeypatch):
    """distill.student_init=auto: an FFDNet-shaped student of a blind U-Net teacher cannot inherit;
    the job says why in its log and trains from random weights (it does not fail on the batches,
    which hold no noise level for a blind teacher)."""
    monkeypatch.setenv("KD_TF_QUIET", "1")
    keras.utils.set_random_seed(0)
    build_unet((8, 16), 1, name="teacher").save(tmp_path / "teacher.keras")
    settings = {"student": {"family": "ffdnet", "features": 8, "depth": 3},
                "data": {"patch_size": 32, "batch_size": 2, "val_crop": 32, "val_crops_per_image": 1},
                "train": {"steps": 2, "steps_per_epoch": 2},
                "distill": {"cache_batches": 2, "teacher": str(tmp_path / "teacher.keras")},
                "eval": {"sigmas": [25], "baselines": [], "max_images": 1, "timing_size": 32},
                "export_formats": [], "output": {"runs_dir": str(tmp_path), "run_name": "random"}}
    report = jobs.distill(cfg.from_dict(denoise_config.DistillJobConfig, settings))
    assert report["student_init"] == "random" and report["inherited"] is None
