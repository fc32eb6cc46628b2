"""benchmarks.student_selection ranks candidates on training-corpus photos, as they are and smaller."""

import json

import numpy as np

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
