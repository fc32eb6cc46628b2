"""The diffusion task with tiny models: the sampler as a teacher matches the sampler, a one-step
student trains only itself, progressive distillation folds two teacher steps into one and each
stage trains only its student."""

import doctest
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_tf.diffusion.adversarial
import kd_tf.diffusion.nets
import kd_tf.diffusion.sampler
import kd_tf.diffusion.schedule
from kd_tf import Distiller
from kd_tf.diffusion import (DDIMSampler, DiffusionModel, TwoStepTarget, XPrediction, build_denoiser,
                             progressive_distillation, stage_dataset)
from kd_tf.diffusion.schedule import ddim_step, predict, rates, to_pixels


def _network(seed=0, name="denoiser"):
    keras.utils.set_random_seed(seed)
    network = build_denoiser(28, 1, (8, 16), 1, embedding_dims=8, name=name)
    # the output layer starts at zero (an untrained network predicts v = 0): perturb it so the
    # tests see a network whose predictions depend on its input
    kernel, bias = network.get_layer("velocity").get_weights()
    network.get_layer("velocity").set_weights([np.random.default_rng(seed).normal(0, 0.05, kernel.shape), bias])
    return network


@pytest.fixture(scope="module")
def digits():
    rng = np.random.default_rng(0)
    images = np.zeros((64, 28, 28, 1), np.float32)
    for i, image in enumerate(images):                   # strokes: a bright bar at a random place
        row = rng.integers(4, 20)
        image[row:row + 4, 6:22] = 1.0 if i % 2 else 0.0
        image[6:22, row:row + 4] = 1.0
    return images


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _changed(before, model):
    return any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


def test_the_sampler_is_the_ddim_loop(rng):
    network = _network()
    noise = rng.normal(size=(3, 28, 28, 1)).astype(np.float32)
    sampler = DDIMSampler(network, steps=3)
    noisy, image = tf.constant(noise), None
    for k in range(3):                                   # by hand: times 1, 2/3, 1/3, then the last image
        now, after = tf.fill([3, 1, 1, 1], 1 - k / 3), tf.fill([3, 1, 1, 1], 1 - (k + 1) / 3)
        v = network([noisy, rates(now)[0] ** 2]).numpy()
        noise_rate, signal_rate = (r.numpy() for r in rates(now))
        image = signal_rate * noisy.numpy() - noise_rate * v
        eps = noise_rate * noisy.numpy() + signal_rate * v
        next_noise, next_signal = (r.numpy() for r in rates(after))
        noisy = tf.constant(next_signal * image + next_noise * eps)
    np.testing.assert_allclose(sampler(noise).numpy(), (image + 1) / 2, atol=1e-5)
    assert sampler.input_shape == (None, 28, 28, 1)
    assert not np.allclose(DDIMSampler(network, steps=1)(noise).numpy(), sampler(noise).numpy())


def test_a_one_step_student_learns_the_samplers_map_and_only_it_trains(rng):
    teacher_net, student_net = _network(0, "teacher_net"), _network(0, "student_net")
    teacher = DDIMSampler(teacher_net, steps=4)
    student = DDIMSampler(student_net, steps=1)
    distiller = Distiller(teacher, student, student_loss_weight=0.0, probe_size=28)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    noise = rng.normal(size=(16, 28, 28, 1)).astype(np.float32)
    teacher_before, student_before = _weights(teacher_net), _weights(student_net)
    first = distiller.evaluate(noise, batch_size=8, verbose=0, return_dict=True)["distill"]
    distiller.fit(noise, batch_size=8, epochs=8, verbose=0)
    last = distiller.evaluate(noise, batch_size=8, verbose=0, return_dict=True)["distill"]
    assert not _changed(teacher_before, teacher_net) and _changed(student_before, student_net)
    assert last < 0.7 * first
    expected = np.mean((teacher(noise).numpy() - student(noise).numpy()) ** 2)
    assert last == pytest.approx(expected, rel=1e-3)


def test_an_offline_cache_of_the_samplers_pairs_teaches_a_one_step_student(rng):
    from kd_tf.teacher_cache import cache_teacher_outputs

    teacher_net, student_net = _network(0, "teacher_net"), _network(0, "student_net")
    teacher = DDIMSampler(teacher_net, steps=4)
    noise = rng.normal(size=(16, 28, 28, 1)).astype(np.float32)
    cache = cache_teacher_outputs(teacher, tf.data.Dataset.from_tensor_slices(noise).batch(8), 2, dtype=np.float32)
    np.testing.assert_allclose(cache.teacher_outputs, teacher(noise).numpy(), atol=1e-5)   # (noise, sample) pairs
    # the sampler's map is not dihedral-equivariant (a turned digit is no digit): the bank is served as cached
    (batch,) = next(iter(cache.dataset(8, augment=False)))
    pairs = {tuple(np.round(z[:2, 0, 0], 4)): out for z, out in zip(cache.inputs, cache.teacher_outputs)}
    for z, out in zip(batch["inputs"].numpy(), batch["teacher_outputs"].numpy()):
        np.testing.assert_array_equal(pairs[tuple(np.round(z[:2, 0, 0], 4))], out)
    distiller = Distiller(teacher, DDIMSampler(student_net, steps=1), student_loss_weight=0.0, probe_size=28)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    teacher_before = _weights(teacher_net)
    history = distiller.fit(cache.dataset(8, augment=False), steps_per_epoch=2, epochs=6, verbose=0).history
    assert history["distill"][-1] < history["distill"][0]
    assert not _changed(teacher_before, teacher_net)


def test_the_folded_target_lands_where_two_teacher_steps_do(rng):
    network = _network(1)
    z = tf.constant(rng.normal(size=(4, 28, 28, 1)).astype(np.float32))
    times = tf.constant([1.0, 0.75, 0.5, 0.25], shape=(4, 1, 1, 1))
    target = TwoStepTarget(network, 8)([z, times]).numpy()
    after = times - 2 / 8
    # one student step predicting `target` from z_t, with the noise that image implies
    noise_rate, signal_rate = rates(times)
    implied_noise = (z - signal_rate * target) / noise_rate
    next_noise, next_signal = rates(after)
    one_step = next_signal * target + next_noise * implied_noise
    middle, _ = ddim_step(network, z, times, times - 1 / 8)
    two_steps, middle_image = ddim_step(network, middle, times - 1 / 8, after)
    np.testing.assert_allclose(one_step[:3], two_steps[:3], atol=1e-4)
    np.testing.assert_allclose(target[3], middle_image[3], atol=1e-5)   # last student step: the teacher's image
    x_hat = XPrediction(network)([z, times]).numpy()
    np.testing.assert_allclose(x_hat, predict(network, z, times)[1].numpy(), atol=1e-6)


def test_stage_data_are_noised_on_the_students_grid(digits):
    (z, times), = next(iter(stage_dataset(digits, 4, 16)))
    assert z.shape == (16, 28, 28, 1) and set(np.round(times.numpy().ravel(), 6)) <= {1.0, 0.75, 0.5, 0.25}


def test_each_progressive_stage_trains_only_its_student(digits):
    network = _network(2)
    network.trainable = False                       # as the job loads its teacher: frozen
    before = _weights(network)
    stages = progressive_distillation(network, digits, start_steps=4, end_steps=1, steps_per_stage=3,
                                      batch_size=8, learning_rate=1e-3)
    assert [steps for steps, _ in stages] == [4, 2, 1]
    assert not _changed(before, network)                            # the original teacher is untouched
    two_step, one_step = stages[1][1], stages[2][1]
    assert _changed(before, two_step)
    assert _changed(_weights(two_step), one_step)                   # the 1-step student left its teacher
    noise = np.random.default_rng(3).normal(size=(2, 28, 28, 1)).astype(np.float32)
    assert DDIMSampler(one_step, 1)(noise).shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="powers of two"):
        progressive_distillation(network, digits, start_steps=6)
    with pytest.raises(ValueError, match="one per stage of 4 -> 1 steps"):
        progressive_distillation(network, digits, start_steps=4, steps_per_stage=[3, 3, 3])
    with pytest.raises(ValueError, match=r"learning_rate=\[0.001\]; accepted: a float > 0 or 2 of them"):
        progressive_distillation(network, digits, start_steps=4, learning_rate=[1e-3])


def test_a_killed_progressive_distillation_resumes_at_its_unfinished_stage(digits, tmp_path):
    network = _network(4)
    trained, rates = [], []                         # the stages that trained, by their teacher's steps

    class Rate(keras.callbacks.Callback):           # the rate of a stage's first and after its last step
        def on_train_begin(self, logs=None):
            rates.append(round(float(self.model.optimizer.learning_rate), 6))

        def on_train_end(self, logs=None):
            rates.append(round(float(self.model.optimizer.learning_rate), 6))

    def record(teacher, teacher_steps, student):
        trained.append(teacher_steps)
        return [Rate()]

    first = progressive_distillation(network, digits, 4, 1, steps_per_stage=2, batch_size=8,
                                     learning_rate=[1e-3, 2e-3], callbacks=record, stages_dir=tmp_path,
                                     final_learning_rate_fraction=[1.0, 0.1])
    assert rates == [1e-3, 1e-3, 2e-3, 2e-4]        # each stage at its own rate, the second decaying to 1/10
    assert trained == [4, 2] and sorted(p.name for p in tmp_path.glob("*.keras")) == [
        "student_denoiser_1_steps.keras", "student_denoiser_2_steps.keras"]
    (tmp_path / "student_denoiser_1_steps.keras").unlink()          # killed during the last stage
    again = progressive_distillation(network, digits, 4, 1, steps_per_stage=2, batch_size=8, learning_rate=1e-3,
                                     callbacks=record, stages_dir=tmp_path)
    assert trained == [4, 2, 2]                                     # only the unfinished stage trained again
    for kept, loaded in zip(first[1][1].get_weights(), again[1][1].get_weights()):
        np.testing.assert_array_equal(kept, loaded)
    assert (tmp_path / "student_denoiser_1_steps.keras").is_file()
    from kd_tf.diffusion.progressive import stage_record
    kept, redone = stage_record(tmp_path, 2), stage_record(tmp_path, 1)     # each stage's cost survives the kill
    assert kept["seconds"] > 0 and (kept["from_steps"], kept["optimizer_steps"], kept["learning_rate"]) == (4, 2, 1e-3)
    assert redone["learning_rate"] == 1e-3 and stage_record(tmp_path, 8) is None
    assert kept["final_learning_rate_fraction"] == 1.0 and redone["final_learning_rate_fraction"] == 1.0
    with pytest.raises(ValueError, match=r"final_learning_rate_fraction=0.0; accepted: a float in \(0, 1\]"):
        progressive_distillation(network, digits, 4, 1, final_learning_rate_fraction=0.0)


def test_the_teacher_trains_on_velocity_prediction_with_an_ema_copy(digits):
    network = build_denoiser(28, 1, (8, 16), 1, embedding_dims=8)
    model = DiffusionModel(network, ema=0.5)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    ema_before = _weights(model.ema_network)
    history = model.fit(digits, batch_size=16, epochs=3, verbose=0).history
    assert history["velocity_loss"][-1] < history["velocity_loss"][0]
    assert _changed(ema_before, model.ema_network)
    assert not model.ema_network.trainable
    assert to_pixels(tf.constant(-1.0)).numpy() == 0.0


def test_the_distiller_refuses_a_student_with_nothing_to_train():
    import kd_tf.model_io

    teacher = _network(5)
    teacher.trainable = False
    with pytest.raises(ValueError, match="has no trainable variables: a clone of a frozen model"):
        Distiller(teacher, keras.models.clone_model(teacher))      # a plain clone keeps the frozen flags
    Distiller(teacher, kd_tf.model_io.trainable_copy(teacher))
    failed, tried = doctest.testmod(kd_tf.model_io)
    assert tried and not failed


def _saved_in_session_13(network):
    """`network` as denoisers were built before the int8 fix: a plain Concatenate joins the
    noise-level embedding and the image, so the sampler gives one noise variance per sample."""
    def clone(layer):
        cls = keras.layers.Concatenate if layer.name == "with_embedding" else layer.__class__
        return cls.from_config(layer.get_config())

    old = keras.models.clone_model(network, clone_function=clone)
    old.set_weights(network.get_weights())
    return old


def test_an_older_denoiser_samples_alike_once_its_noise_level_is_shared(rng):
    from kd_tf.diffusion.nets import shares_noise_level, with_shared_noise_level

    network = _network()
    old = _saved_in_session_13(network)
    assert shares_noise_level(network) and not shares_noise_level(old)
    upgraded = with_shared_noise_level(old)
    assert shares_noise_level(upgraded) and with_shared_noise_level(network) is network
    noise = rng.normal(size=(3, 28, 28, 1)).astype(np.float32)
    expected = DDIMSampler(old, 3)(noise).numpy()             # one variance per sample
    np.testing.assert_allclose(DDIMSampler(upgraded, 3)(noise).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(DDIMSampler(network, 3)(noise).numpy(), expected, atol=1e-5)


def test_the_int8_sampler_keeps_the_noise_level(rng, tmp_path):
    """The sines and cosines of the noise level fold into constants (no SIN op is left), so the
    int8 sampler stays close to its float twin; computed from int8 tensors they lose their
    phase and the int8 sampler drifts far from it (the first shipped 1-step int8 collapsed)."""
    from kd_tf.diffusion.jobs import as_generator
    from kd_tf.export import LiteRTModel, op_names
    from kd_tf.generators import export_generator

    old = _saved_in_session_13(_network())
    z = rng.normal(size=(64, 784)).astype(np.float32)
    errors = {}
    for name, generator in {"shared": as_generator(old, 1),          # one step: the noise level weighs most
                            "per sample": keras.Model(*(lambda x: (x, DDIMSampler(old, 1)(
                                keras.layers.Reshape((28, 28, 1))(x)) * 2.0 - 1.0))(keras.Input((784,))))}.items():
        path = export_generator(generator, tmp_path / name.replace(" ", "_"), calibration_batches=4)
        ops_used = op_names(path.read_bytes())
        assert ("SIN" in ops_used) == (name == "per sample"), ops_used
        reference = np.asarray(generator(z))
        errors[name] = float(np.sqrt(np.mean((LiteRTModel(path)(z) - reference) ** 2)) / reference.std())
    assert errors["shared"] < 0.2 and errors["per sample"] > 3 * errors["shared"], errors   # measured 0.13 vs 0.60


@pytest.mark.parametrize("module", [kd_tf.diffusion.schedule, kd_tf.diffusion.nets, kd_tf.diffusion.sampler,
                                    kd_tf.diffusion.adversarial])
def test_docstring_examples_run(module):
    failed, tried = doctest.testmod(module)
    assert tried and not failed


DIFFUSION_CLI = """
data: {{source: {data}, batch_size: 16}}
eval: {{classifier: {classifier}, samples: 100, callback_samples: 100}}
output: {{runs_dir: {root}/runs, log_dir: {root}/tb}}
"""


@pytest.fixture(scope="module")
def diffusion_cli(tmp_path_factory):
    """train-teacher / distill --task diffusion, each a few steps, on a folder of 100 digits."""
    from kd_tf.cli import main
    from kd_tf.images import write_image
    from kd_tf.digits import load_digits
    from kd_tf.classifier import build_classifier

    root = tmp_path_factory.mktemp("diffusion_cli")
    digits = load_digits("pureml")
    for index in range(100):
        write_image(root / "digits" / str(digits.test_labels[index]) / f"{index}.png", digits.test_images[index] / 255.0)
    keras.utils.set_random_seed(0)
    build_classifier().save(root / "classifier.keras")
    common = DIFFUSION_CLI.format(data=root / "digits", classifier=root / "classifier.keras", root=root)
    (root / "teacher.yaml").write_text(common + "train: {steps: 4, steps_per_epoch: 2}\n"
                                       "net: {widths: [8, 16, 16], blocks: 1, embedding_dims: 8}\nsampler_steps: 4\n")
    (root / "distill.yaml").write_text(common + "teacher_steps: 4\nend_steps: 1\nexport_int8_steps: [1]\n"
                                       "score_steps: [1]\n")
    codes = {"teacher": main(["train-teacher", "--task", "diffusion", "--config", str(root / "teacher.yaml"),
                              "--run-name", "teacher", "--set", f"save_to={root / 'teacher_denoiser.keras'}"])}
    codes["distill"] = main(["distill", "--task", "diffusion", "--config", str(root / "distill.yaml"),
                             "--run-name", "distill", "--teacher", str(root / "teacher_denoiser.keras"), "--steps", "2"])
    return root, codes


def test_cli_trains_the_teacher_distills_stages_and_scores_each(diffusion_cli, tmp_path):
    import json

    from kd_tf.cli import main

    root, codes = diffusion_cli
    assert codes == {"teacher": 0, "distill": 0}
    teacher = json.loads((root / "runs" / "teacher" / "report.json").read_text())
    assert list(teacher["samplers"]) == ["teacher, 4 steps"] and len(teacher["history"]["velocity_loss"]) == 2
    report = json.loads((root / "runs" / "distill" / "report.json").read_text())
    rows = report["samplers"]
    assert list(rows) == ["teacher, 4 steps", "student, 1 steps", "teacher network, 1 steps (undistilled)",
                          "student, 1 steps, int8"]                                       # score_steps: [1]
    assert rows["teacher network, 1 steps (undistilled)"]["macs"] == rows["student, 1 steps"]["macs"]
    # the teacher job's score of the same network, steps and eval settings, not a second scoring
    assert Path(rows["teacher, 4 steps"]["cached"]).parent == root / "runs" / "scores"
    assert rows["teacher, 4 steps"]["fid"] == teacher["samplers"]["teacher, 4 steps"]["fid"]
    assert "cached" not in rows["student, 1 steps"] and "cached" not in teacher["samplers"]["teacher, 4 steps"]
    assert rows["student, 1 steps"]["macs"] * 4 == rows["teacher, 4 steps"]["macs"]
    assert (root / "runs" / "distill" / "student_denoiser_2_steps.keras").is_file()        # kept, not scored
    assert {p.name for p in (root / "tb" / "distill" / "stages").iterdir() if p.is_dir()} == {"2_steps", "1_steps"}
    grids = [v for f in sorted((root / "tb" / "distill" / "stages").glob("events.*"))
             for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value]
    steps = [e.step for f in sorted((root / "tb" / "distill" / "stages").glob("events.*"))
             for e in tf.compat.v1.train.summary_iterator(str(f)) if e.summary.value]
    assert steps == [1, 2]                                   # 4 -> 2 is stage 1, 2 -> 1 stage 2
    assert [v.metadata.summary_description for v in grids] == ["teacher, 4 steps | student, 2 steps",
                                                               "teacher, 2 steps | student, 1 steps"]
    for row in rows.values():
        assert row["samples"] == 100 and 0 <= row["recognized"] <= 1 and np.isfinite(row["fid"])
    assert (root / "runs" / "distill" / "student_denoiser_1_steps.keras").is_file()
    assert report["config"]["steps_per_stage"] == 2
    assert [(s["from_steps"], s["to_steps"], s["optimizer_steps"]) for s in report["stages"]] == [(4, 2, 2), (2, 1, 2)]
    assert all(s["seconds"] > 0 for s in report["stages"])
    grid = tmp_path / "grid.png"
    assert main(["generate", "--model", str(root / "teacher_denoiser.keras"), "--steps", "2", "--num", "4",
                 "--out", str(grid)]) == 0 and grid.is_file()
    assert main(["generate", "--model", str(root / "teacher_denoiser.keras"), "--num", "4",
                 "--out", str(tmp_path / "no_steps.png")]) == 2


def test_cli_a_conditional_teacher_from_the_plain_one_distills_and_draws_the_asked_digit(diffusion_cli, tmp_path):
    import json

    from kd_tf.cli import main

    root, _ = diffusion_cli
    plain = root / "teacher_denoiser.keras"
    common = DIFFUSION_CLI.format(data=root / "digits", classifier=root / "classifier.keras", root=tmp_path)
    (tmp_path / "teacher.yaml").write_text(common + "train: {steps: 2, steps_per_epoch: 2}\nsampler_steps: 2\n"
                                           "net: {widths: [8, 16, 16], blocks: 1, embedding_dims: 8, classes: 10}\n"
                                           f"warm_start: {plain}\n")
    (tmp_path / "distill.yaml").write_text(common + "teacher_steps: 2\nend_steps: 1\nexport_int8_steps: [1]\n"
                                           "int8_mode: dynamic\n")
    conditional = tmp_path / "conditional.keras"
    assert main(["train-teacher", "--task", "diffusion", "--config", str(tmp_path / "teacher.yaml"),
                 "--run-name", "teacher", "--set", f"save_to={conditional}"]) == 0
    teacher = json.loads((tmp_path / "runs" / "teacher" / "report.json").read_text())
    assert teacher["warm_start"] == {"network": str(plain), "new_layers": ["class_embedding"]}
    assert main(["distill", "--task", "diffusion", "--config", str(tmp_path / "distill.yaml"), "--run-name", "distill",
                 "--teacher", str(conditional), "--steps", "2"]) == 0       # 2 optimizer steps per stage
    report = json.loads((tmp_path / "runs" / "distill" / "report.json").read_text())
    rows = report["samplers"]
    assert list(rows) == ["teacher, 2 steps", "student, 1 steps", "teacher network, 1 steps (undistilled)",
                          "student, 1 steps, int8 (dynamic range)"]
    assert report["int8"]["1"].endswith("student_generator_int8_dynamic.tflite")
    rounding = rows["student, 1 steps, int8 (dynamic range)"]["weight_rounding"]   # gptq, the dynamic default
    assert rounding["method"] == "gptq" and rounding["calibration_samples"] == 512
    assert rounding["layer_errors"] and all(e["gptq"] <= e["nearest"] for e in rounding["layer_errors"].values())
    for row in [*rows.values(), teacher["samplers"]["teacher, 2 steps"]]:    # the int8 file's class too
        accuracy = row["class_accuracy"]
        assert accuracy["samples"] == 100 and len(accuracy["per_class"]) == 10 and 0 <= accuracy["accuracy"] <= 1
    assert "asked class (p>=0.9)" in report["table"]
    grid = tmp_path / "three.png"
    assert main(["generate", "--model", str(conditional), "--steps", "1", "--digit", "3", "--num", "4",
                 "--out", str(grid)]) == 0
    assert json.loads(grid.with_suffix(".json").read_text())["digit"] == 3
    assert main(["generate", "--model", str(plain), "--steps", "1", "--digit", "3", "--num", "4",
                 "--out", str(tmp_path / "plain.png")]) == 2                  # not class-conditional
    (tmp_path / "wrong.yaml").write_text(common + "train: {steps: 2}\nnet: {widths: [8, 8, 16], classes: 10}\n"
                                         f"warm_start: {plain}\n")
    assert main(["train-teacher", "--task", "diffusion", "--config", str(tmp_path / "wrong.yaml")]) == 2


def test_cli_an_adversarial_finetune_ships_the_tuned_student_beside_the_plain_row(diffusion_cli, tmp_path):
    import json

    from kd_tf.cli import main
    from kd_tf.gan.nets import build_discriminator
    from kd_tf.model_io import load_model

    root, _ = diffusion_cli
    build_discriminator((8, 16)).save(tmp_path / "discriminator.keras")
    common = DIFFUSION_CLI.format(data=root / "digits", classifier=root / "classifier.keras", root=tmp_path)
    (tmp_path / "distill.yaml").write_text(
        common + "teacher_steps: 4\nend_steps: 1\nsteps_per_stage: 1\nscore_steps: [1]\nexport_int8_steps: [1]\n"
        f"adversarial: {{student_steps: [1], discriminator: {tmp_path / 'discriminator.keras'}, optimizer_steps: 2}}\n"
        f"save_to: {tmp_path / 'shipped'}\n")
    assert main(["distill", "--task", "diffusion", "--config", str(tmp_path / "distill.yaml"), "--run-name", "adv",
                 "--teacher", str(root / "teacher_denoiser.keras")]) == 0
    run = tmp_path / "runs" / "adv"
    report = json.loads((run / "report.json").read_text())
    rows = report["samplers"]
    assert list(rows) == ["teacher, 4 steps", "student, 1 steps", "teacher network, 1 steps (undistilled)",
                          "student, 1 steps, adversarial", "student, 1 steps, adversarial, int8"]
    assert rows["student, 1 steps, adversarial"]["fid"] != rows["student, 1 steps"]["fid"]
    assert report["adversarial"]["1"]["optimizer_steps"] == 2 and report["adversarial"]["1"]["teacher_steps"] == 2
    tuned = load_model(run / "student_denoiser_1_steps_adversarial.keras")
    shipped = load_model(tmp_path / "shipped" / "student_generator_1_steps.keras")     # the tuned one ships
    shipped_weights = shipped.get_weights()
    assert len(shipped_weights) == len(tuned.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(shipped_weights, tuned.get_weights()))
    grids = [v.metadata.summary_description for f in sorted((tmp_path / "tb" / "adv" / "adversarial").glob("*/events.*"))
             for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value if v.tag.startswith("adv")]
    assert grids == ["student, 1 steps | student, 1 steps, adversarial"]


def test_a_score_is_reused_only_for_the_same_network_steps_and_eval_settings(tmp_path):
    from kd_tf.config import GanEvalConfig
    from kd_tf.diffusion.jobs import ScoreCache
    from kd_tf.diffusion.nets import build_denoiser

    net, other = build_denoiser(28, 1, (8, 16), 1), build_denoiser(28, 1, (8, 16), 1)
    cache = ScoreCache(tmp_path, GanEvalConfig(classifier=str(tmp_path / "none.keras"), samples=200), "pureml")
    fewer = ScoreCache(tmp_path, GanEvalConfig(classifier=str(tmp_path / "none.keras"), samples=100), "pureml")
    assert cache.path(net, 4) == cache.path(net, 4)
    assert len({cache.path(net, 4), cache.path(net, 2), cache.path(other, 4), fewer.path(net, 4)}) == 4


def test_distill_config_names_a_bad_stage_budget_or_score_list():
    from kd_tf.diffusion.config import DiffusionDistillJobConfig

    DiffusionDistillJobConfig(teacher_steps=8, steps_per_stage=[1, 2, 3], score_steps=[8, 1]).validate()
    with pytest.raises(ValueError, match=r"steps_per_stage.*3 of them"):
        DiffusionDistillJobConfig(teacher_steps=8, steps_per_stage=[1, 2]).validate()
    DiffusionDistillJobConfig(teacher_steps=8, learning_rate=[1e-4, 1e-4, 3e-4]).validate()
    with pytest.raises(ValueError, match=r"learning_rate.*3 of them"):
        DiffusionDistillJobConfig(teacher_steps=8, learning_rate=[1e-4, 3e-4]).validate()
    DiffusionDistillJobConfig(teacher_steps=8, final_learning_rate_fraction=[1, 1, 0.05]).validate()
    DiffusionDistillJobConfig(int8_mode="dynamic").validate()
    with pytest.raises(ValueError, match=r"int8_mode.*'full'.*one of \('int8', 'dynamic'\)"):
        DiffusionDistillJobConfig(int8_mode="full").validate()
    with pytest.raises(ValueError, match=r"dynamic_weight_rounding.*'round'.*one of \('gptq', 'nearest'\)"):
        DiffusionDistillJobConfig(int8_mode="dynamic", dynamic_weight_rounding="round").validate()
    with pytest.raises(ValueError, match=r"int8_calibration_samples.*0.*an int >= 1"):
        DiffusionDistillJobConfig(int8_calibration_samples=0).validate()
    with pytest.raises(ValueError, match=r"final_learning_rate_fraction.*in \(0, 1\], or 3 of them"):
        DiffusionDistillJobConfig(teacher_steps=8, final_learning_rate_fraction=[1, 0]).validate()
    with pytest.raises(ValueError, match=r"score_steps.*any of \[8, 4, 2, 1\]"):
        DiffusionDistillJobConfig(teacher_steps=8, score_steps=[3]).validate()
    from kd_tf.diffusion.config import DiffusionAdversarialConfig

    DiffusionDistillJobConfig(teacher_steps=8, adversarial=DiffusionAdversarialConfig([4, 1], "d.keras")).validate()
    with pytest.raises(ValueError, match=r"adversarial.student_steps.*\[8\].*any of \[4, 2, 1\]"):     # not the teacher
        DiffusionDistillJobConfig(teacher_steps=8, adversarial=DiffusionAdversarialConfig([8], "d.keras")).validate()
    with pytest.raises(ValueError, match=r"adversarial.discriminator.*None.*a .keras discriminator"):
        DiffusionDistillJobConfig(teacher_steps=8, adversarial=DiffusionAdversarialConfig([1])).validate()
