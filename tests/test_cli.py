"""The main job end to end through the CLI, on a tiny teacher and a tiny config."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from kd_tf import export
from kd_tf.cli import main
from kd_tf.denoise.nets import build_unet

TINY = """
data: {patch_size: 32, batch_size: 4, val_crop: 32, val_crops_per_image: 1}
train: {steps: 6, steps_per_epoch: 3, seed: 1}
student: {family: unet, widths: [4, 8], blocks: 1}
distill:
  student_loss_weight: {kind: linear, start: 0.1, end: 0.5}
  features: [[bottleneck, bottleneck, 0.1]]
  compare_scratch: true
eval: {sigmas: [25], baselines: [nlmeans], max_images: 1, timing_size: 64}
export_formats: [keras, int8]
export_calibration_batches: 2
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    teacher = build_unet((8, 16), 1, name="teacher")
    teacher.save(root / "teacher.keras")
    config = root / "tiny.yaml"
    config.write_text(TINY + f"output: {{runs_dir: {root / 'runs'}, log_dir: {root / 'tb'}}}\n")
    code = main(["distill", "--config", str(config), "--teacher", str(root / "teacher.keras"),
                 "--run-name", "tiny", "--steps", "6"])
    return root, code


def _score(model_path, images):
    """PSNR at sigma 25 of a saved model on the held-out photos `images`, through kd_tf.denoise.evaluation."""
    from kd_tf.images import load_split
    from kd_tf.denoise.evaluation import Method, evaluate
    from kd_tf.model_io import load_model

    heldout = load_split(min_size=32).heldout
    result = evaluate([Method("m", model=load_model(model_path))], {n: heldout[n] for n in images}, sigmas=(25,),
                      progress=lambda *_: None, timing=False)
    return result["methods"]["m"]["scores"]["25.0"]["psnr"]


def test_distill_cli_writes_report_student_and_logs(tiny_run, capsys):
    root, code = tiny_run
    assert code == 0
    report = json.loads((root / "runs" / "tiny" / "report.json").read_text())
    methods = report["methods"]
    assert set(methods) == {"noisy input", "teacher", "student (distilled)", "student (scratch)", "nlmeans"}
    noisy = methods["noisy input"]["scores"]["25.0"]["psnr"]
    assert 19.9 < noisy < 20.6            # sigma 25 in 8 bits: 20.17 dB, a little more where clipping cuts noise
    assert methods["nlmeans"]["scores"]["25.0"]["psnr"] > noisy + 2
    for name, file in (("student (distilled)", "student.keras"), ("student (scratch)", "student_scratch.keras")):
        rescored = _score(root / "runs" / "tiny" / file, report["images"])        # each row is its saved model
        assert methods[name]["scores"]["25.0"]["psnr"] == pytest.approx(rescored, abs=1e-4), name
    assert methods["teacher"]["macs_512"] > methods["student (distilled)"]["macs_512"] > 0
    assert methods["student (distilled)"]["ms_per_64"] > 0
    assert report["history"]["distill"]["student_loss_weight"][0] > 0.1 and "feature_bottleneck" in report["history"]["distill"]
    assert len(report["history"]["scratch"]["loss"]) == 2
    assert (root / "runs" / "tiny" / "student.keras").is_file()
    assert (root / "runs" / "tiny" / "student_scratch.keras").is_file()
    assert list((root / "tb" / "tiny" / "distill").rglob("events.out.tfevents.*"))
    assert list((root / "tb" / "tiny" / "distill" / "images").rglob("events.out.tfevents.*"))
    assert set(report["export"]["formats"]) == {"keras", "int8"}
    assert (root / "runs" / "tiny" / "export" / "student_int8.tflite").is_file()


def test_saved_student_has_no_adapters_and_evaluates(tiny_run):
    import keras

    root, _ = tiny_run
    student = keras.models.load_model(root / "runs" / "tiny" / "student.keras")
    assert not [w for w in student.weights if "adapter" in w.path]
    assert student.get_layer("head").dtype_policy.name == "float32"


def test_bad_config_value_exits_2_with_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kd_tf", "distill", "--set", "distill.output_loss=huber",
                             "--run-name", "bad", "--set", f"output.runs_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "distill.output_loss='huber'" in result.stderr and "'mse' or 'l1'" in result.stderr


def test_missing_teacher_is_a_clear_error(tmp_path, capsys):
    code = main(["distill", "--teacher", str(tmp_path / "none.keras"), "--set", f"output.runs_dir={tmp_path}",
                 "--set", f"output.log_dir={tmp_path}"])
    assert code == 2
    assert "train-teacher" in capsys.readouterr().err


def test_export_cli_writes_every_format_and_parity_report(tiny_run):
    root, _ = tiny_run
    student = root / "runs" / "tiny" / "student.keras"
    code = main(["export", "--model", str(student), "--out", str(root / "export"), "--run-name", "exp",
                 "--formats", "keras", "savedmodel", "float32", "dynamic", "int8",
                 "--set", f"output.runs_dir={root / 'runs'}",
                 "--set", "calibration_batches=2", "--set", "latency_sizes=[64]", "--set", "threads=[1, 2]",
                 "--set", "dynamic_tuning_steps=5", "--set", "dynamic_float_layers=[enc0_block0_conv1]",
                 "--set", "parity_colour_draws=2"])
    assert code == 0
    report = json.loads((root / "runs" / "exp" / "export_report.json").read_text())
    rows = report["formats"]
    assert list(rows) == ["keras", "savedmodel", "float32", "dynamic", "int8"]
    for fmt in ("dynamic", "int8"):                   # both int8 kinds checked image by image (issue 17)
        assert set(rows[fmt]["parity"]["sets"]) == {"colour", "heldout"} and f"{fmt} against float" in report["table"]
        colour, heldout = rows[fmt]["parity"]["sets"]["colour"], rows[fmt]["parity"]["sets"]["heldout"]
        assert colour["noise_draws"] == 2 and "noise_draws" not in heldout      # flat images: judged on an average
        assert all(len(row["drop_db_draws"]) == 2 for row in colour["per_image"].values())
    assert "parity" not in rows["float32"]
    assert rows["dynamic"]["weight_rounding"]["method"] == "gptq"     # the default: kd_tf.weight_rounding
    assert isinstance(rows["dynamic"]["weight_rounding"]["layer_errors"], dict)
    assert rows["dynamic"]["weight_rounding"]["tuning"]["steps"] == 5           # then tuned: kd_tf.int8_tuning
    # the float layer, split for the rounding and tuning, is written as one float op (kd_tf.export.dynamic_range_int8)
    assert rows["dynamic"]["quantized_by"].startswith("ai-edge-quantizer")
    kernels = export.convolution_kernels((root / "export" / "student_dynamic.tflite").read_bytes())
    assert [row["kernel_type"] for row in kernels if "enc0_block0_conv1_" in row["output"] or
            "enc0_block0_conv1/" in row["output"]] == ["FLOAT32"]
    assert rows["float32"]["psnr_vs_keras_output"] > 60
    assert rows["int8"]["bytes"] < rows["float32"]["bytes"]
    assert "QUANTIZE" in rows["int8"]["ops"] and rows["int8"]["op_count"] == len(rows["int8"]["ops"])
    assert set(rows["int8"]["latency_ms"]) == {"64px_1_threads", "64px_2_threads"}
    assert (root / "export" / "student_int8.tflite").is_file() and (root / "export" / "savedmodel").is_dir()


def test_denoise_cli_on_tflite(tiny_run, tmp_path):
    import cv2
    import numpy as np

    root, _ = tiny_run
    source = tmp_path / "photos"
    source.mkdir()
    cv2.imwrite(str(source / "a.jpg"), np.random.default_rng(0).integers(0, 255, (45, 61, 3), np.uint8))
    (source / "b.png").write_bytes(b"broken")
    code = main(["denoise", "--model", str(root / "export" / "student_int8.tflite"), "--input", str(source),
                 "--output", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "denoise_report.json").read_text())
    assert report["written"] == 1 and report["skipped"] == 1
    assert cv2.imread(str(tmp_path / "out" / "a.png")).shape == (45, 61, 3)


def test_train_teacher_cli_saves_float32_teacher_and_report(tmp_path):
    import keras

    config = tmp_path / "teacher.yaml"
    config.write_text(
        "data: {patch_size: 32, batch_size: 4, val_crop: 32, val_crops_per_image: 1}\n"
        "train: {steps: 4, steps_per_epoch: 2}\n"
        "net: {widths: [4, 8], blocks: 1}\n"
        "eval: {sigmas: [15, 50], baselines: [], max_images: 1, timing_size: 64}\n"
        f"output: {{runs_dir: {tmp_path / 'runs'}, log_dir: {tmp_path / 'tb'}, run_name: t}}\n"
        f"save_to: {tmp_path / 'teacher.keras'}\n")
    assert main(["train-teacher", "--config", str(config)]) == 0
    teacher = keras.models.load_model(tmp_path / "teacher.keras")
    assert teacher.get_layer("head").dtype_policy.name == "float32"
    report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
    assert set(report["methods"]["teacher"]["scores"]) == {"15.0", "50.0"}
    assert len(report["history"]["val_psnr"]) == 2


def test_train_teacher_runs_the_steps_asked_and_ships_nothing_unless_asked(tmp_path):
    """--steps 5 with 2 steps per epoch: 5 optimizer steps, not 6 (the schedule decays over 5); with
    no save_to the teacher stays in its run folder and models/ is not touched."""
    import hashlib

    shipped = Path(__file__).resolve().parents[1] / "models"
    digests = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped.rglob("*") if p.is_file()}
    before = digests()
    config = tmp_path / "teacher.yaml"
    config.write_text(
        "data: {patch_size: 32, batch_size: 4, val_crop: 32, val_crops_per_image: 1}\n"
        "train: {steps: 5, steps_per_epoch: 2, mixed_precision: false}\n"
        "net: {widths: [4, 8], blocks: 1}\n"
        "eval: {sigmas: [25], baselines: [], max_images: 1, timing_size: 64}\n"
        f"output: {{runs_dir: {tmp_path / 'runs'}, log_dir: {tmp_path / 'tb'}, run_name: t}}\n")
    assert main(["train-teacher", "--config", str(config)]) == 0
    report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
    assert report["optimizer_steps"] == 5
    assert report["saved_to"] is None and (tmp_path / "runs" / "t" / "teacher.keras").is_file()
    assert digests() == before


def test_distill_on_a_user_folder_splits_by_image(tiny_run, tmp_path):
    from kd_tf.images import default_photos, write_image

    root, _ = tiny_run
    folder = tmp_path / "my_photos"
    for name, image in default_photos(["astronaut", "coins", "moon", "brick"]).items():
        write_image(folder / f"{name}.png", image[:96, :96])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    code = main(["distill", "--config", str(root / "tiny.yaml"), "--teacher", str(root / "teacher.keras"),
                 "--data", str(folder), "--run-name", "mine", "--steps", "2",
                 "--set", "distill.compare_scratch=false", "--set", "export_formats=[]",
                 "--set", "data.heldout_fraction=0.25", "--set", f"output.runs_dir={tmp_path / 'runs'}"])
    assert code == 0
    report = json.loads((tmp_path / "runs" / "mine" / "report.json").read_text())
    assert len(report["heldout"]) == 1 and report["heldout"][0].endswith(".png")
    assert report["config"]["data"]["data_dir"] == str(folder)


def test_divergence_stops_with_the_step_and_term_and_keeps_no_student(tiny_run, capsys):
    """A learning rate that blows the weights up: exit 3, a message naming the step and the
    terms, and no student saved from the broken weights."""
    root, _ = tiny_run
    code = main(["distill", "--config", str(root / "tiny.yaml"), "--teacher", str(root / "teacher.keras"),
                 "--run-name", "diverged", "--steps", "6", "--set", "train.learning_rate=1e30",
                 "--set", "train.mixed_precision=false", "--set", "distill.cache_batches=0"])
    message = capsys.readouterr().err
    assert code == 3
    assert "training diverged at step" in message and "loss=" in message
    assert not (root / "runs" / "diverged" / "student.keras").exists()


def test_same_seed_and_config_give_the_same_metrics(tiny_run):
    """Determinism on this machine: a second run of the same config reproduces the first's
    training history and held-out scores (tolerance: 1e-5 relative)."""
    root, _ = tiny_run
    code = main(["distill", "--config", str(root / "tiny.yaml"), "--teacher", str(root / "teacher.keras"),
                 "--run-name", "again", "--steps", "6", "--set", "export_formats=[]"])
    assert code == 0
    first = json.loads((root / "runs" / "tiny" / "report.json").read_text())
    again = json.loads((root / "runs" / "again" / "report.json").read_text())
    for phase in ("distill", "scratch"):
        for key, values in first["history"][phase].items():
            assert again["history"][phase][key] == pytest.approx(values, rel=1e-5), (phase, key)
    for name in ("student (distilled)", "student (scratch)"):
        assert again["methods"][name]["scores"]["25.0"]["psnr"] == pytest.approx(
            first["methods"][name]["scores"]["25.0"]["psnr"], rel=1e-5)


def test_a_verb_prints_no_tensorflow_start_up_lines(tmp_path):
    """The absl preamble and CUDA probes come from C++ before any log level applies: the CLI keeps
    them off the terminal, so a user error is the one line the user sees."""
    import os

    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "kd_tf", "denoise", "--model", "missing.keras", "--input",
                             str(tmp_path), "--output", str(tmp_path / "out")], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")


def test_only_input_errors_become_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    from kd_tf.denoise import export_job

    model = tmp_path / "student.keras"
    build_unet((4, 8), 1, name="student").save(model)
    common = ["export", "--model", str(model), "--set", f"output.runs_dir={tmp_path / 'runs'}",
              "--set", f"output.log_dir={tmp_path / 'tb'}"]
    assert main(common + ["--set", "formats=[jpeg]"]) == 2                 # the user's input: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "formats" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(common + ["--set", "dynamic_weight_rounding=best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dynamic_weight_rounding" in err and "best" in err and "gptq" in err and "nearest" in err
    assert main(common + ["--set", "dynamic_weight_rounding=nearest", "--set", "dynamic_tuning_steps=10"]) == 2
    err = capsys.readouterr().err.strip()                                  # tuning needs the GPTQ-rounded copy
    assert "dynamic_tuning_steps=10" in err and "'nearest'" in err and len(err.splitlines()) == 1

    def deep_bug(*args, **kwargs):
        raise ValueError("an internal invariant broke")                   # a bug, not the user's input
    monkeypatch.setattr(export_job, "load_split", deep_bug)
    with pytest.raises(ValueError, match="an internal invariant broke"):   # propagates: the traceback shows
        main(common + ["--formats", "keras"])
    # a float layer the model lacks: named before any work (load_split, broken above, is never reached)
    assert main(common + ["--set", "dynamic_float_layers=[enc0_block0_conv1, nope]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "['nope']" in err and "enc0_block0_conv1" in err and "accepted" in err and len(err.splitlines()) == 1
