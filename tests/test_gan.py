"""The GAN task: the adversarial objective inside the Distiller, latents, metrics, export, the CLI.

Tiny generators (latent 8) and a tiny discriminator keep this file fast; the end-to-end CLI run
reads digits from an image folder of 120 MNIST test digits written by the fixture.
"""

import gzip
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.generators import LatentSampler
from kd_tf.distiller import Distiller
from kd_tf.metrics import diversity, frechet_distance, kernel_inception_distance, precision_recall_coverage
from kd_tf.classifier import build_classifier
from kd_tf.gan.nets import build_discriminator, build_generator
from kd_tf.objectives import Adversarial, clone_discriminator

LATENT = 8


@pytest.fixture(scope="module")
def nets():
    keras.utils.set_random_seed(0)
    return {"teacher": build_generator(LATENT, (8, 4, 4), name="teacher_generator"),
            "teacher_d": build_discriminator((4, 8), name="teacher_discriminator"),
            "student": build_generator(LATENT, (4, 4, 2), name="student_generator")}


@pytest.fixture(scope="module")
def real():
    return np.tanh(np.random.default_rng(1).normal(0, 1, (8, 28, 28, 1))).astype("float32")


def _distiller(nets, g_lr=0.05, d_lr=0.05, features=(("up1", "up1", 0.5),), seed=3, **objective):
    student = keras.models.clone_model(nets["student"])
    student.set_weights(nets["student"].get_weights())
    adversarial = Adversarial(clone_discriminator(nets["teacher_d"]), keras.optimizers.SGD(d_lr), **objective)
    distiller = Distiller(nets["teacher"], student, student_loss_weight=0.5, features=features, objective=adversarial,
                          latent_sampler=LatentSampler(LATENT, seed))
    distiller.compile(optimizer=keras.optimizers.SGD(g_lr))
    return distiller


def _snapshot(model):
    """Trainable weights, plus every weight of a frozen model (the teacher's batch-norm statistics
    too); a student's moving statistics follow its forward pass in training mode, whatever the phase."""
    weights = model.weights if not model.trainable else model.trainable_weights
    return [np.array(w.numpy()) for w in weights]


def _changed(before, model):
    return any(not np.array_equal(a, b) for a, b in zip(before, _snapshot(model)))


# -- the two phases -----------------------------------------------------------------------------

def test_discriminator_phase_updates_only_the_discriminator(nets, real):
    distiller = _distiller(nets, g_lr=0.0, r1_weight=1.0, d_steps=2)     # the generator phase moves nothing
    discriminator = distiller.objective.discriminator
    before = {name: _snapshot(model) for name, model in
              (("teacher", nets["teacher"]), ("teacher_d", nets["teacher_d"]), ("student", distiller.student),
               ("adapter", distiller.adapters[0]), ("d", discriminator))}
    logs = distiller.train_on_batch(real, return_dict=True)
    assert _changed(before["d"], discriminator)
    for name, model in (("teacher", nets["teacher"]), ("teacher_d", nets["teacher_d"]),
                        ("student", distiller.student), ("adapter", distiller.adapters[0])):
        assert not _changed(before[name], model), name
    assert int(distiller.objective.optimizer.iterations) == 2            # d_steps updates
    assert {"d_loss", "d_real_logit", "d_fake_logit", "r1", "distill", "own", "feature_up1"} <= set(logs)
    assert discriminator is not nets["teacher_d"]


def test_generator_phase_updates_only_the_student_and_adapters(nets, real):
    distiller = _distiller(nets, d_lr=0.0)                                # the discriminator phase moves nothing
    discriminator = distiller.objective.discriminator
    before = {name: _snapshot(model) for name, model in
              (("teacher", nets["teacher"]), ("student", distiller.student), ("adapter", distiller.adapters[0]),
               ("d", discriminator))}
    distiller.fit(real, batch_size=4, epochs=1, verbose=0)
    assert _changed(before["student"], distiller.student)
    assert _changed(before["adapter"], distiller.adapters[0])
    assert not _changed(before["d"], discriminator)
    assert not _changed(before["teacher"], nets["teacher"])
    trained = {id(v) for v in distiller.trained_variables}
    assert trained.isdisjoint({id(v) for v in discriminator.weights})
    assert trained.isdisjoint({id(v) for v in nets["teacher"].weights})


def test_the_teacher_gan_keeps_a_moving_average_of_its_generator(nets, real):
    from kd_tf.objectives import AdversarialTraining

    from kd_tf.model_io import trainable_copy

    adversarial = Adversarial(clone_discriminator(nets["teacher_d"]), keras.optimizers.SGD(0.05))
    nets["teacher"].trainable = False               # as a Distiller leaves it: a plain clone would train nothing
    with pytest.raises(ValueError, match="generator 'teacher_generator' has no trainable variables"):
        AdversarialTraining(keras.models.clone_model(nets["teacher"]), adversarial, LatentSampler(LATENT, 0))
    generator = trainable_copy(nets["teacher"])
    gan = AdversarialTraining(generator, adversarial, LatentSampler(LATENT, 0), ema=0.75)
    gan.compile(optimizer=keras.optimizers.SGD(0.05))
    start = [w.numpy().copy() for w in generator.weights]
    gan.train_on_batch(real)
    trained = [w.numpy() for w in generator.weights]
    assert any(not np.array_equal(a, b) for a, b in zip(start, trained))
    for first, last, average in zip(start, trained, gan.ema_generator.weights):
        np.testing.assert_allclose(average.numpy(), 0.75 * first + 0.25 * last, rtol=1e-5, atol=1e-6)
    assert not gan.ema_generator.trainable and list(gan.panels(LatentSampler(LATENT, 0)(2, 0))) == [
        "generator", "generator (EMA)"]
    with pytest.raises(ValueError, match=r"ema=1.0; accepted: 0 \(off\)"):
        AdversarialTraining(generator, adversarial, LatentSampler(LATENT, 0), ema=1.0)


def test_teacher_and_student_get_the_same_latents(nets, real):
    distiller = _distiller(nets, g_lr=0.0, d_lr=0.0, features=())
    z = LatentSampler(LATENT, 3)(4, 0)                                   # what step 0 draws for a batch of 4
    fakes = distiller.student(z, training=True).numpy()              # batch statistics, as in the step
    expected = np.mean((fakes - nets["teacher"](z, training=False).numpy()) ** 2)
    logs = distiller.train_on_batch(real[:4], return_dict=True)
    assert logs["distill"] == pytest.approx(expected, rel=1e-5)
    discriminator_logits = distiller.objective.discriminator(fakes).numpy().ravel()
    assert logs["own"] == pytest.approx(np.mean(np.log1p(np.exp(-discriminator_logits))), rel=1e-5)


def test_the_same_seed_gives_the_same_samples_and_training(nets, real):
    sampler = LatentSampler(LATENT, seed=5)
    np.testing.assert_array_equal(sampler(6, 3), LatentSampler(LATENT, seed=5)(6, 3))
    assert not np.array_equal(sampler(6, 3), sampler(6, 4))
    assert not np.array_equal(sampler(6, 3), LatentSampler(LATENT, seed=6)(6, 3))
    np.testing.assert_array_equal(sampler.fixed(4, seed=9), LatentSampler(LATENT, seed=0).fixed(4, seed=9))
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(2)                                   # the adapter's initial weights
        distiller = _distiller(nets, seed=5)
        distiller.fit(real, batch_size=4, epochs=1, verbose=0, shuffle=False)
        runs.append(np.concatenate([w.ravel() for w in distiller.student.get_weights()]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_checkpoint_restores_the_discriminator_and_its_optimizer(nets, real, tmp_path):
    adversarial = Adversarial(clone_discriminator(nets["teacher_d"]), keras.optimizers.Adam(1e-2))
    trained = Distiller(nets["teacher"], keras.models.clone_model(nets["student"]), objective=adversarial,
                        latent_sampler=LatentSampler(LATENT, 1))
    trained.compile(optimizer=keras.optimizers.Adam(1e-2))
    trained.fit(real, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "gan.weights.h5"
    trained.save_weights(path)

    fresh_adversarial = Adversarial(clone_discriminator(nets["teacher_d"]), keras.optimizers.Adam(1e-2))
    fresh = Distiller(nets["teacher"], keras.models.clone_model(nets["student"]), objective=fresh_adversarial,
                      latent_sampler=LatentSampler(LATENT, 1))
    fresh.compile(optimizer=keras.optimizers.Adam(1e-2))
    fresh.optimizer.build(fresh.trained_variables)
    assert _changed(_snapshot(fresh_adversarial.discriminator), adversarial.discriminator)
    fresh.load_weights(path)
    for a, b in zip(adversarial.discriminator.get_weights(), fresh_adversarial.discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved, restored = adversarial.optimizer.variables, fresh_adversarial.optimizer.variables
    assert int(restored[0].numpy()) == 2                                 # iterations: 2 steps of batch 4
    for a, b in zip(saved, restored):                                    # Adam moments too
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- bad input ----------------------------------------------------------------------------------

def test_wrong_latent_size_and_mismatched_discriminator_are_clear(nets):
    other = build_generator(LATENT + 2, (4, 4, 2), name="wide_latent")
    with pytest.raises(ValueError, match=r"latent size differs: teacher takes z of size 8, student takes z of size 10"):
        Distiller(nets["teacher"], other, objective=Adversarial(clone_discriminator(nets["teacher_d"])))
    with pytest.raises(ValueError, match=r"the latent sampler draws z of size 6, but the student takes inputs of "
                                         r"shape \(None, 8\)"):
        Distiller(nets["teacher"], nets["student"], latent_sampler=LatentSampler(6))
    small = build_discriminator((4,), input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match=r"the discriminator takes inputs of shape \(32, 32, 1\), but the generator "
                                         r"makes \(28, 28, 1\)"):
        Distiller(nets["teacher"], nets["student"], objective=Adversarial(small), latent_sampler=LatentSampler(LATENT))
    with pytest.raises(ValueError, match=r"adversarial loss 'wgan' is not accepted; expected one of "
                                         r"\('non-saturating', 'hinge'\)"):
        Adversarial(small, loss="wgan")
    with pytest.raises(ValueError, match=r"d_steps=0 is not accepted; expected an int >= 1"):
        Adversarial(small, d_steps=0)


def test_hinge_loss_values(nets):
    adversarial = Adversarial(clone_discriminator(nets["teacher_d"]), loss="hinge")
    fake = np.zeros((2, 28, 28, 1), "float32")
    logits = adversarial.discriminator(fake).numpy().ravel()
    np.testing.assert_allclose(adversarial(None, None, fake), -logits, rtol=1e-6)
    per_sample, real_logits, fake_logits, _ = adversarial._discriminator_terms(tf.constant(fake), tf.constant(fake))
    np.testing.assert_allclose(per_sample, np.maximum(0, 1 - logits) + np.maximum(0, 1 + logits), rtol=1e-6)


# -- metrics ------------------------------------------------------------------------------------

def test_fid_kid_precision_recall_on_known_distributions():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 4))
    b = rng.normal(0, 1, (4000, 4))
    shifted = rng.normal(0, 1, (4000, 4)) + np.array([2.0, 0, 0, 0])
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=0.05)     # ||mu||^2, same covariance
    assert abs(kernel_inception_distance(a, b)[0]) < 0.01
    assert kernel_inception_distance(a, shifted)[0] > 0.5
    same = precision_recall_coverage(a[:500], a[:500])
    assert same == {"precision": 1.0, "recall": 1.0, "coverage": 1.0}
    far = precision_recall_coverage(a[:500], a[:500] + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "coverage": 0.0}
    assert diversity(np.ones((50, 4))) == 0.0 and diversity(a) > 1.0


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    keras.utils.set_random_seed(0)
    build_classifier().save(path)
    return path


def test_mode_collapse_is_warned(classifier_path, caplog):
    from kd_tf.digits import as_signed, load_digits
    from kd_tf.generators import Scorer

    digits = load_digits("pureml")
    scorer = Scorer(str(classifier_path), digits.test_images[:300], collapse_ratio=0.5,
                    collapse_advice="Train the stage longer")
    one = as_signed(digits.test_images[:1])
    with caplog.at_level(logging.WARNING, logger="kd_tf.gan.jobs"):
        collapsed = scorer(lambda z: np.repeat(one, len(z), axis=0), 300, LATENT, name="collapsed")
    assert collapsed["diversity_ratio"] < 0.05
    assert "mode collapse suspected for collapsed" in caplog.text
    assert "Train the stage longer" in caplog.text          # the task's own advice, not a GAN setting
    caplog.clear()
    real_like = as_signed(digits.test_images[300:600])
    with caplog.at_level(logging.WARNING, logger="kd_tf.gan.jobs"):
        healthy = scorer(lambda z: real_like[:len(z)], 300, LATENT, name="healthy")
    assert healthy["diversity_ratio"] > 0.8 and "mode collapse" not in caplog.text
    assert healthy["fid"] < collapsed["fid"]
    with pytest.raises(FileNotFoundError, match=r"feature classifier 'nope.keras' does not exist: train it with "
                                                r"`python -m kd_tf train-classifier`"):
        Scorer("nope.keras", digits.test_images[:10])


# -- data and export ----------------------------------------------------------------------------

def test_digits_offline_and_idx_files(tmp_path):
    from kd_tf.digits import load_digits

    digits = load_digits("auto")
    assert digits.train_images.shape == (60000, 28, 28) and digits.test_images.shape == (10000, 28, 28)
    assert digits.train_images.dtype == np.uint8 and set(np.unique(digits.test_labels)) == set(range(10))
    for stem, array in (("train-images-idx3-ubyte", digits.test_images[:5]), ("t10k-images-idx3-ubyte", digits.test_images[5:8]),
                        ("train-labels-idx1-ubyte", digits.test_labels[:5]), ("t10k-labels-idx1-ubyte", digits.test_labels[5:8])):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as handle:
            handle.write(header + np.asarray(array, np.uint8).tobytes())
    idx = load_digits(str(tmp_path))
    np.testing.assert_array_equal(idx.train_images, digits.test_images[:5])
    np.testing.assert_array_equal(idx.test_labels, digits.test_labels[5:8])
    with pytest.raises(ValueError, match=r"digit source 'nope' is not accepted; expected one of \('auto', 'pureml'"):
        load_digits("nope")


def test_int8_tflite_generator_takes_latents(nets, tmp_path):
    from kd_tf.export import LiteRTModel
    from kd_tf.generators import export_generator

    path = export_generator(nets["student"], tmp_path, calibration_batches=4)
    assert tf.saved_model.load(str(tmp_path / "savedmodel")).signatures["serving_default"] \
        .structured_input_signature[1]["latent"].shape.as_list() == [None, LATENT]
    runner = LiteRTModel(path)
    z = LatentSampler(LATENT).fixed(5, seed=2)
    images = runner(z)
    assert images.shape == (5, 28, 28, 1)
    assert np.max(np.abs(images - nets["student"](z).numpy())) < 0.1           # int8 steps of a [-1, 1] tanh
    with pytest.raises(ValueError, match=r"takes inputs of shape \(-1, 8\), got \(5, 6\)"):
        runner(np.zeros((5, 6), "float32"))


# -- the CLI end to end -------------------------------------------------------------------------

TINY = """
data: {{source: {data}, batch_size: 8}}
train: {{steps: 4, steps_per_epoch: 2, seed: 1}}
eval: {{classifier: {classifier}, samples: 100, callback_samples: 100, grid: 2}}
output: {{runs_dir: {root}/runs, log_dir: {root}/tb}}
"""


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """train-classifier, train-teacher --task gan and distill --task gan, each a few steps, on a
    folder of 120 digits (sub-folders named by label)."""
    from kd_tf.cli import main
    from kd_tf.images import write_image
    from kd_tf.digits import load_digits

    root = tmp_path_factory.mktemp("gan_cli")
    digits = load_digits("pureml")
    for index in range(120):
        write_image(root / "digits" / str(digits.test_labels[index]) / f"{index}.png", digits.test_images[index] / 255.0)
    common = TINY.format(data=root / "digits", classifier=root / "classifier.keras", root=root)
    (root / "gan.yaml").write_text(common)
    codes = {"classifier": main(["train-classifier", "--data", str(root / "digits"), "--steps", "4",
                                 "--run-name", "classifier", "--set", f"save_to={root / 'classifier.keras'}",
                                 "--set", f"output.runs_dir={root / 'runs'}", "--set", f"output.log_dir={root / 'tb'}"])}
    codes["teacher"] = main(["train-teacher", "--task", "gan", "--config", str(root / "gan.yaml"), "--run-name", "teacher",
                             "--set", "generator={latent_dim: 8, widths: [16, 8, 8]}", "--set", "train.ema=0.5",
                             "--set", f"save_to={root / 'teacher_generator.keras'}",
                             "--set", f"save_discriminator_to={root / 'teacher_discriminator.keras'}"])
    codes["distill"] = main(["distill", "--task", "gan", "--config", str(root / "gan.yaml"), "--run-name", "distill",
                             "--teacher", str(root / "teacher_generator.keras"),
                             "--set", f"distill.discriminator={root / 'teacher_discriminator.keras'}",
                             "--set", "student={latent_dim: 8, widths: [4, 4, 2]}", "--set", "calibration_batches=2",
                             "--set", "distill.scratch_discriminator=both"])
    return root, codes


def test_cli_trains_teacher_distills_and_reports(cli_run):
    root, codes = cli_run
    assert codes == {"classifier": 0, "teacher": 0, "distill": 0}
    teacher = json.loads((root / "runs" / "teacher" / "report.json").read_text())
    assert list(teacher["generators"]) == ["teacher", "teacher (last weights, no EMA)"]      # train.ema=0.5
    assert teacher["generators"]["teacher"]["fid"] != teacher["generators"]["teacher (last weights, no EMA)"]["fid"]
    classifier = json.loads((root / "runs" / "classifier" / "report.json").read_text())
    assert classifier["test_images"] == 12 and 0 <= classifier["test_accuracy"] <= 1
    report = json.loads((root / "runs" / "distill" / "report.json").read_text())
    rows = report["generators"]
    floor = rows.pop("real training digits (floor)")
    assert set(rows) == {"teacher", "student (distilled)", "student (scratch)",
                         "student (scratch, fresh discriminator)", "student int8 TFLite"}
    assert rows["teacher"]["macs"] > rows["student (distilled)"]["macs"] == rows["student (scratch)"]["macs"] > 0
    for row in rows.values():
        assert np.isfinite(row["fid"]) and row["ms_per_64"] > 0 and 0 <= row["precision"] <= 1
        assert 0 <= row["recognized"] <= 1 and row["recognized_real"] == floor["recognized"]
        assert floor["fid"] < row["fid"]                   # real digits against real digits: the floor
    assert len(report["history"]["scratch_fresh_d"]["loss"]) == 2
    assert report["targets"]["mac_ratio_teacher_over_student"] == pytest.approx(
        rows["teacher"]["macs"] / rows["student (distilled)"]["macs"])
    assert len(report["history"]["distill"]["d_loss"]) == 2 and len(report["history"]["scratch"]["loss"]) == 2
    assert len(report["metrics_during_training"]["distill"]) == 2        # FID/KID every epoch
    assert (root / "runs" / "distill" / "export" / "student_generator_int8.tflite").is_file()
    assert list((root / "tb" / "distill" / "distill" / "generator").glob("events.out.tfevents.*"))


def test_generate_grid_and_folder_with_the_same_seed(cli_run, tmp_path):
    from kd_tf.cli import main
    from kd_tf.images import read_image

    root, _ = cli_run
    student = root / "runs" / "distill" / "student_generator.keras"
    tflite = root / "runs" / "distill" / "export" / "student_generator_int8.tflite"
    assert main(["generate", "--model", str(student), "--num", "6", "--seed", "4", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "--model", str(student), "--num", "6", "--seed", "4", "--out", str(tmp_path / "b.png")]) == 0
    assert main(["generate", "--model", str(student), "--num", "6", "--seed", "5", "--out", str(tmp_path / "c.png")]) == 0
    a, b, c = (read_image(tmp_path / f"{n}.png") for n in "abc")
    assert a.shape == (2 * 30 - 2, 3 * 30 - 2, 3)                       # 2 rows of 3, 28 px, 2 px gutters
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert json.loads((tmp_path / "a.json").read_text())["num"] == 6
    assert main(["generate", "--model", str(tflite), "--num", "3", "--seed", "4", "--out", str(tmp_path / "dir")]) == 0
    assert sorted(p.name for p in (tmp_path / "dir").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert main(["generate", "--model", str(root / "classifier.keras"), "--num", "2", "--out", str(tmp_path / "x.png")]) == 2


def test_int8_parity_benchmark_scores_a_generator_against_its_int8_file(cli_run, tmp_path):
    """benchmarks.int8_parity --generator (what models/gan/int8_parity_report.json comes from):
    the int8 file's samples against the float generator's on the same latents."""
    from benchmarks import int8_parity

    root, _ = cli_run
    student = root / "runs" / "distill" / "student_generator.keras"
    tflite = root / "runs" / "distill" / "export" / "student_generator_int8.tflite"
    report = int8_parity.main(["--generator", str(student), "--int8", str(tflite), "--out", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(report))
    parity = report["parity"]
    assert parity["samples"] == 512 and "QUANTIZE" in report["int8_ops"]
    assert 15 < parity["psnr_int8_vs_float_min_db"] <= parity["psnr_int8_vs_float_mean_db"] < 80   # close, not equal
    same = int8_parity.main(["--generator", str(student), "--int8", str(tflite)])["parity"]
    assert same == parity                                            # fixed latents: the same figures


def test_export_and_evaluate_verbs_take_generators(cli_run, tmp_path):
    from kd_tf.cli import main

    root, _ = cli_run
    student = root / "runs" / "distill" / "student_generator.keras"
    common = ["--data", str(root / "digits"), "--set", f"eval.classifier={root / 'classifier.keras'}",
              "--set", "eval.samples=100", "--set", f"output.runs_dir={root / 'runs'}",
              "--set", f"output.log_dir={root / 'tb'}", "--set", "calibration_batches=2"]
    assert main(["export", "--model", str(student), "--out", str(tmp_path / "exported"), "--run-name", "export",
                 *common]) == 0
    exported = json.loads((root / "runs" / "export" / "export_report.json").read_text())
    assert (tmp_path / "exported" / "student_generator_int8.tflite").is_file()
    assert (tmp_path / "exported" / "savedmodel" / "saved_model.pb").is_file()
    assert set(exported["generators"]) == {"float (Keras)", "int8 TFLite", "real training digits (floor)"}
    assert np.isfinite(exported["int8_fid_change"])
    assert main(["evaluate", "--task", "gan", "--teacher", str(root / "teacher_generator.keras"),
                 "--student", f"int8={tmp_path / 'exported' / 'student_generator_int8.tflite'}",
                 "--run-name", "evaluate", *common[:-2]]) == 0
    evaluated = json.loads((root / "runs" / "evaluate" / "report.json").read_text())
    assert set(evaluated["generators"]) == {"teacher", "int8", "real training digits (floor)"}
    assert "class_accuracy" not in evaluated["generators"]["int8"]          # unconditional: nothing to ask
    assert evaluated["generators"]["int8"]["fid"] == pytest.approx(exported["generators"]["int8 TFLite"]["fid"])


def test_discriminator_cloned_from_a_frozen_one_learns(nets, real):
    """distill --task gan loads the teacher's discriminator frozen; the copy it trains (and the
    from-scratch run's fresh clone) must have every variable trainable and move in a D step."""
    frozen = keras.models.clone_model(nets["teacher_d"])
    frozen.set_weights(nets["teacher_d"].get_weights())
    frozen.trainable = False
    expected = len(nets["teacher_d"].trainable_variables)
    for copy in (clone_discriminator(frozen), keras.models.clone_model(frozen)):
        adversarial = Adversarial(copy, keras.optimizers.SGD(0.05))     # makes every layer trainable
        assert len(copy.trainable_variables) == expected > 0
        before = _snapshot(copy)
        adversarial.discriminator_step(tf.constant(real), tf.constant(-real))
        assert _changed(before, copy)
    assert not frozen.trainable_variables                      # the teacher's file is never trained


def test_cli_class_conditional_teacher_and_student(cli_run, tmp_path, monkeypatch):
    """generator.classes: the teacher and its discriminator are conditional, the student must say
    the same number of classes, and every conditional row reports the class it was asked for."""
    from kd_tf.cli import main
    from kd_tf.conditional_gan import classes_of
    from kd_tf.model_io import load_model

    root, _ = cli_run
    config = ["--config", str(root / "gan.yaml")]
    assert main(["train-teacher", "--task", "gan", *config, "--run-name", "cteacher",
                 "--set", "generator={latent_dim: 12, widths: [16, 8, 8], classes: 10}",
                 "--set", f"save_to={root / 'cteacher.keras'}",
                 "--set", f"save_discriminator_to={root / 'cteacher_d.keras'}"]) == 0
    assert classes_of(load_model(root / "cteacher.keras")) == 10
    assert len(load_model(root / "cteacher_d.keras").inputs) == 2
    distill = ["distill", "--task", "gan", *config, "--teacher", str(root / "cteacher.keras"),
               "--set", f"distill.discriminator={root / 'cteacher_d.keras'}", "--set", "calibration_batches=2"]
    assert main([*distill, "--run-name", "cwrong", "--set", "student={latent_dim: 12, widths: [4, 4, 2]}"]) == 2
    assert main([*distill, "--run-name", "cdistill",
                 "--set", "student={latent_dim: 12, widths: [4, 4, 2], classes: 10}"]) == 0
    report = json.loads((root / "runs" / "cdistill" / "report.json").read_text())
    rows = report["generators"]
    for name in ("teacher", "student (distilled)", "student (scratch)", "student int8 TFLite"):
        accuracy = rows[name]["class_accuracy"]
        assert accuracy["samples"] == 100 and 0 <= accuracy["confident_accuracy"] <= accuracy["accuracy"] <= 1
    assert "asked class" in report["table"]
    student = root / "runs" / "cdistill" / "student_generator.keras"
    assert classes_of(load_model(student)) == 10
    int8 = root / "runs" / "cdistill" / "export" / "student_generator_int8.tflite"
    assert main(["evaluate", "--task", "gan", "--teacher", str(root / "cteacher.keras"), "--student", f"int8={int8}",
                 "--run-name", "cevaluate", "--data", str(root / "digits"),
                 "--set", f"eval.classifier={root / 'classifier.keras'}", "--set", "eval.samples=100",
                 "--set", f"output.runs_dir={root / 'runs'}", "--set", f"output.log_dir={root / 'tb'}"]) == 0
    evaluated = json.loads((root / "runs" / "cevaluate" / "report.json").read_text())["generators"]
    assert evaluated["int8"]["class_accuracy"]["samples"] == 100       # the classes of the .keras teacher beside it

    from kd_tf import generators                                          # generate --digit asks for one class
    seen, real_load = [], generators.load_generator

    def spying_load(*args, **kwargs):
        latent, run = real_load(*args, **kwargs)
        return latent, lambda z: seen.append(np.asarray(z)) or run(z)

    monkeypatch.setattr(generators, "load_generator", spying_load)
    assert main(["generate", "--model", str(student), "--num", "5", "--digit", "7", "--out", str(tmp_path / "7.png")]) == 0
    assert json.loads((tmp_path / "7.json").read_text())["digit"] == 7
    np.testing.assert_array_equal(np.argmax(seen[0][:, :10], axis=1), [7] * 5)
    assert main(["generate", "--model", str(student), "--num", "2", "--digit", "10", "--out", str(tmp_path / "x.png")]) == 2
    plain = root / "runs" / "distill" / "student_generator.keras"        # unconditional: a clear error
    assert main(["generate", "--model", str(plain), "--num", "2", "--digit", "1", "--out", str(tmp_path / "y.png")]) == 2


