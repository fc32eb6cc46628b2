"""Each run saves its split by content; a resumed run must have the same split, and no model is
scored on images its run trained on."""

import json

import numpy as np
import pytest

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.runs import RunPaths, image_digest, record_split, trained_on


def _images(seed, count=3):
    rng = np.random.default_rng(seed)
    return {f"img{i}": rng.random((40, 48, 3), np.float32) for i in range(count)}


def test_digest_is_by_content_and_8bit_pixels():
    image = np.round(_images(0)["img0"] * 255) / 255                  # an 8-bit photo read as floats
    assert image_digest(image) == image_digest(image.astype(np.float64) + 1e-4)   # same 8-bit pixels
    assert image_digest(image) != image_digest(image[:, ::-1])
    assert image_digest(image) != image_digest(image[:20])


def test_resumed_run_with_another_split_is_refused(tmp_path):
    output = cfg.OutputConfig(run_name="r", runs_dir=str(tmp_path / "runs"), log_dir=str(tmp_path / "tb"))
    train, heldout = _images(0), _images(1, 2)
    record_split(RunPaths(output, "distill"), {"train": train, "heldout": heldout})
    saved = json.loads((tmp_path / "runs" / "r" / "split.json").read_text())
    assert set(saved["train"]) == set(train) and saved["heldout"]["img1"] == image_digest(heldout["img1"])
    record_split(RunPaths(output, "distill"), {"train": train, "heldout": heldout})       # same split: resumes
    moved = {**train, "img9": heldout["img0"]}
    with pytest.raises(ValueError, match="another split.*train"):
        record_split(RunPaths(output, "distill"), {"train": moved, "heldout": {"img1": heldout["img1"]}})


def test_evaluate_refuses_a_model_on_images_it_trained_on(tmp_path):
    from kd_tf.images import write_image
    from kd_tf.denoise.jobs import evaluate_saved
    from kd_tf.denoise.nets import build_unet

    folder = tmp_path / "photos"
    images = _images(2, 4)
    for name, image in images.items():
        write_image(folder / f"{name}.png", image)
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    build_unet((4, 8), 1).save(run / "student.keras")
    # the run trained on every photo (as if with another heldout_fraction): nothing may be scored
    (run / "split.json").write_text(json.dumps({"train": {f"{n}.png": image_digest(i) for n, i in images.items()}}))
    config = cfg.load(denoise_config.DistillJobConfig, None, {
        "data.data_dir": str(folder), "data.patch_size": 32, "data.heldout_fraction": 0.25,
        "eval.sigmas": [25], "eval.baselines": [], "eval.timing_size": 64,
        "output.runs_dir": str(tmp_path / "runs"), "output.log_dir": str(tmp_path / "tb")})
    teacher = tmp_path / "teacher.keras"
    build_unet((4, 8), 1).save(teacher)
    with pytest.raises(ValueError, match="refusing to score student .* 1 image"):
        evaluate_saved(config, str(teacher), {"student": str(run / "student.keras")})
    assert trained_on(teacher, images) == []                     # no split.json: a foreign model is scored
    report = evaluate_saved(config, str(teacher), {})
    assert len(report["images"]) == 1


def test_a_rerun_with_other_training_settings_does_not_resume_silently(tmp_path):
    from kd_tf.runs import record_config

    output = cfg.OutputConfig(run_name="r", runs_dir=str(tmp_path / "runs"), log_dir=str(tmp_path / "tb"))
    config = cfg.to_dict(denoise_config.DistillJobConfig())
    record_config(RunPaths(output, "distill"), config)
    record_config(RunPaths(output, "distill"), {**config, "eval": {"sigmas": [25.0]}})     # evaluation may change
    other = json.loads(json.dumps(config))
    other["distill"]["student_loss_weight"]["start"] = 0.9
    other["train"]["steps"] = 10
    with pytest.raises(ValueError, match=r"other training settings \(distill.student_loss_weight, train.steps"):
        record_config(RunPaths(output, "distill"), other)


def test_a_key_added_after_a_run_started_does_not_block_its_resume_at_its_default(tmp_path):
    from kd_tf.runs import record_config

    output = cfg.OutputConfig(run_name="r", runs_dir=str(tmp_path / "runs"), log_dir=str(tmp_path / "tb"))
    defaults = cfg.to_dict(denoise_config.DistillJobConfig())
    older = json.loads(json.dumps(defaults))
    del older["distill"]["cache_augment"]                      # a run started before the key existed
    record_config(RunPaths(output, "distill"), older)
    record_config(RunPaths(output, "distill"), defaults, defaults)                  # at its default: resumes
    changed = json.loads(json.dumps(defaults))
    changed["distill"]["cache_augment"] = False
    with pytest.raises(ValueError, match=r"distill.cache_augment"):
        record_config(RunPaths(output, "distill"), changed, defaults)


def test_reports_score_the_second_heldout_set_when_the_corpus_is_there(tmp_path, monkeypatch):
    from kd_tf.denoise import jobs
    from kd_tf.denoise.nets import build_unet

    big = np.random.default_rng(3).random((600, 700, 3)).astype(np.float32)
    monkeypatch.setattr(jobs, "heldout2_photos", lambda data: {"wallpaper": big})
    config = cfg.load(denoise_config.DistillJobConfig, None, {"eval.sigmas": [25], "eval.baselines": [], "eval.max_images": 1,
                                                   "eval.timing_size": 64, "output.runs_dir": str(tmp_path)})
    split = type("Split", (), {"heldout": {"tiny": big[:64, :64]}})()
    paths = RunPaths(config.output, "evaluate")
    report = jobs._report(config, paths, split, {"teacher": build_unet((4, 8), 1)}, "evaluate")
    assert report["heldout2"]["images"] == ["wallpaper"] and "held-out set 2" in report["table"]
    assert report["images"] == ["tiny"]
    monkeypatch.setattr(jobs, "heldout2_photos", lambda data: {})
    assert "heldout2" not in jobs._report(config, paths, split, {"teacher": build_unet((4, 8), 1)}, "evaluate")


def test_tests_never_write_into_the_repositorys_runs_or_tensorboard_logs():
    """conftest.py moves the output defaults to a scratch folder ($KD_TF_RUNS_DIR, $KD_TF_LOG_DIR)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    output = cfg.OutputConfig()
    for folder in (output.runs_dir, output.log_dir):
        assert not Path(folder).resolve().is_relative_to(repo), folder
    assert denoise_config.DistillJobConfig().output.log_dir == output.log_dir
