"""benchmarks.student_selection ranks candidates on training-corpus photos, as they are and smaller."""

import json

import numpy as np
import pytest

from kd_tf.model_io import save_model


def test_downscaled_photos_are_scored_and_ranked_by_their_mean_gap(tmp_path, monkeypatch, photos, tiny_teacher,
                                                                 tiny_student):
    """Each factor scores the photos area-downscaled (8-bit) before the crop; the table gives the gap
    to the teacher at each factor and its mean. A photo whose detail is 2 px wide gets smoother when
    halved, so the two scores must differ."""
    import kd_tf.photo_corpus
    from benchmarks import student_selection

    corpus = {"astronaut": photos["astronaut"], "chelsea": photos["chelsea"]}
    monkeypatch.setattr(kd_tf.photo_corpus, "load_corpus", lambda corpus_dir, role: corpus)
    halved = student_selection.selection_photos(1, 64, downscale=2)
    native = student_selection.selection_photos(1, 64)
    assert {k: v.shape for k, v in halved.items()} == {k: v.shape for k, v in native.items()} == {
        "astronaut": (64, 64, 3), "chelsea": (64, 64, 3)}
    np.testing.assert_array_equal(halved["astronaut"], np.round(halved["astronaut"] * 255) / 255)   # 8 bits
    height, width = photos["astronaut"].shape[:2]
    top, left = (height // 2 - 64) // 2, (width // 2 - 64) // 2
    expected = photos["astronaut"][2 * top:2 * top + 128, 2 * left:2 * left + 128]
    expected = expected.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))           # area averaging of 2x2 blocks
    np.testing.assert_allclose(halved["astronaut"], expected, atol=0.5 / 255 + 1e-6)
    grey = student_selection.selection_photos(1, 64, downscale=2, grey=True)["astronaut"]
    np.testing.assert_allclose(grey, np.repeat(halved["astronaut"].mean(axis=2, keepdims=True), 3, axis=2), atol=1e-6)

    teacher = str(save_model(tiny_teacher, tmp_path / "teacher.keras"))
    student = str(save_model(tiny_student, tmp_path / "student.keras"))
    out = tmp_path / "selection.json"
    assert student_selection.main([student, "--teacher", teacher, "--every", "1", "--crop", "64", "--sigmas", "25",
                                   "--downscale", "1", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    models = results["models"]
    assert results["downscale"] == [1, 2] and set(models) == {"teacher", student}
    assert models[student]["downscaled"]["2"]["25.0"] != models[student]["psnr"]["25.0"]
    gaps = [models["teacher"]["psnr"]["25.0"] - models[student]["psnr"]["25.0"],
            models["teacher"]["downscaled"]["2"]["25.0"] - models[student]["downscaled"]["2"]["25.0"]]
    table = student_selection.render(results)
    assert "mean gap at 25" in table and f"{np.mean(gaps):.2f} |" in table.splitlines()[-1]


def test_clipped_noise_bias_removes_exactly_the_mean_error_on_near_black_and_white_pixels(tmp_path, monkeypatch,
                                                                                          photos, tiny_teacher,
                                                                                          tiny_student):
    """benchmarks.clipped_noise_bias: an output off by +5/255 in red wherever red is near black, and
    right elsewhere, is fully mended by removing its near-black bias; one off by noise too keeps the
    noise; a red channel never near black reports no bias for it. Then the job end to end."""
    from benchmarks import clipped_noise_bias
    import kd_tf.photo_corpus

    clean = np.full((32, 32, 3), 0.5, np.float32)
    clean[:16, :, 0] = 0.0                                   # half the image has no red
    shifted = clean.copy()
    shifted[:16, :, 0] += 5 / 255
    scores = clipped_noise_bias.bias_scores(clean, shifted)
    assert scores["near_black"]["error_255"][0] == pytest.approx(5.0, abs=1e-4)
    assert scores["near_black"]["error_255"][1] is None and scores["near_white"]["error_255"] == [None] * 3
    assert scores["psnr"] < 50 and scores["psnr_bias_removed"] > 100                 # nothing left but rounding
    noisy = shifted + np.random.default_rng(0).normal(0, 2 / 255, shifted.shape).astype(np.float32)
    mended = clipped_noise_bias.bias_scores(clean, noisy)
    assert mended["psnr"] < mended["psnr_bias_removed"] < 45

    monkeypatch.setattr(kd_tf.photo_corpus, "load_corpus", lambda corpus_dir, role: {"chelsea": photos["chelsea"]})
    teacher = str(save_model(tiny_teacher, tmp_path / "teacher.keras"))
    student = str(save_model(tiny_student, tmp_path / "student.keras"))
    out = tmp_path / "bias.json"
    assert clipped_noise_bias.main([student, "--teacher", teacher, "--every", "1", "--crop", "64", "--gamut", "3",
                                    "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["sets"]) == {"selection photos", "gamut images"} and len(results["images"]["gamut images"]) == 3
    for models in results["sets"].values():
        assert set(models) == {"teacher", student}
        assert all(row["psnr_bias_removed"] >= row["psnr"] - 1e-6 for row in models.values())
    assert "gap, near-0/1 bias removed" in results["table"]


def test_self_ensemble_turns_each_output_back_before_averaging():
    """benchmarks.self_ensemble: a 1x1 convolution commutes with flips and rotations, so its x8
    ensemble equals one pass; a 3x3 kernel with no symmetry does not. A transform not undone (or
    undone wrongly) misaligns the eight outputs and breaks the first equality."""
    import doctest

    import keras

    from benchmarks import self_ensemble
    from kd_tf.denoise.evaluation import Method

    assert doctest.testmod(self_ensemble).failed == 0
    noisy = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)     # not square: rotations change shape
    for size, same in ((1, True), (3, False)):
        keras.utils.set_random_seed(size)
        inputs = keras.Input((None, None, 3))
        model = keras.Model(inputs, keras.layers.Conv2D(3, size, padding="same")(inputs))
        one = Method("one", model=model).denoise(noisy, 25.0)
        eight = self_ensemble.self_ensemble_method("eight", model).denoise(noisy, 25.0)
        assert eight.shape == one.shape == noisy.shape
        assert np.allclose(eight, one, atol=1e-5) == same, float(np.abs(eight - one).max())
