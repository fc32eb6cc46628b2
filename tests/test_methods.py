"""Issue 9's distillation methods, checked against hand computations: the adaptive alpha
(kd_tf.schedules.LossRatio) and Jacobian matching (kd_tf.losses.JacobianTerm)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from kd_tf import schedules
from kd_tf.losses import JacobianTerm, projected_input_gradient


def test_loss_ratio_starts_at_start_then_balances_the_terms():
    alpha = schedules.LossRatio(start=0.3, momentum=0.9)
    assert float(alpha(0)) == pytest.approx(0.3)                 # nothing observed yet
    alpha.observe(1.0, 3.0)                                       # bias-corrected: exact after one step
    assert float(alpha(1)) == pytest.approx(0.25)
    for _ in range(200):
        alpha.observe(2.0, 2.0)
    assert float(alpha(201)) == pytest.approx(0.5, abs=1e-6)     # the old observation has faded
    # (1 - w) * distill == w * own at the averages: equal contributions
    distill, own = 0.002, 0.0005
    balanced = schedules.LossRatio(momentum=0.0)
    balanced.observe(distill, own)
    value = float(balanced(0))
    assert (1 - value) * distill == pytest.approx(value * own)


def test_loss_ratio_is_clipped_and_validated():
    alpha = schedules.LossRatio(momentum=0.0, minimum=0.1, maximum=0.8)
    alpha.observe(1.0, 0.0)
    assert float(alpha(0)) == pytest.approx(0.8)
    alpha.observe(0.0, 1.0)
    assert float(alpha(0)) == pytest.approx(0.1)
    assert schedules.from_config("adaptive", 0.4, None, 10).get_config()["start"] == 0.4
    with pytest.raises(ValueError, match="momentum=1.0"):
        schedules.LossRatio(momentum=1.0)
    with pytest.raises(ValueError, match="minimum=0.9"):
        schedules.LossRatio(minimum=0.9, maximum=0.2)


def test_loss_ratio_state_is_in_keras_variables_for_checkpoints():
    alpha = schedules.LossRatio(momentum=0.5)
    alpha.observe(1.0, 1.0)
    assert all(isinstance(v, keras.Variable) for v in alpha.variables)
    assert [float(v.numpy()) for v in alpha.variables] == [0.5, 0.5, 1.0]


def test_projected_input_gradient_of_a_linear_map_is_its_transpose_times_the_projection():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(6, 4)).astype("float32")
    inputs = tf.constant(rng.normal(size=(3, 6)).astype("float32"))
    projection = tf.constant(rng.normal(size=(3, 4)).astype("float32"))
    gradient, outputs = projected_input_gradient(lambda x: x @ matrix, inputs, projection)
    np.testing.assert_allclose(outputs.numpy(), inputs.numpy() @ matrix, rtol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), projection.numpy() @ matrix.T, rtol=1e-5)


def test_jacobian_term_ignores_scale_and_compares_directions():
    term = JacobianTerm(0.5)
    teacher = tf.constant([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    assert np.allclose(term(teacher, 7.0 * teacher).numpy(), 0.0, atol=1e-6)      # same direction
    np.testing.assert_allclose(term(teacher, -teacher).numpy(), [4.0, 4.0], rtol=1e-6)  # opposite
    orthogonal = tf.constant([[2.0, -1.0, 0.0], [0.0, 4.0, -3.0]])
    np.testing.assert_allclose(term(teacher, orthogonal).numpy(), [2.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="jacobian weight=0"):
        JacobianTerm(0)


def test_jacobian_term_trains_the_student_by_double_backpropagation():
    keras.utils.set_random_seed(1)
    student = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, padding="same", activation="tanh"),
                                layers.Conv2D(3, 3, padding="same")])
    teacher = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(3, 3, padding="same", activation="tanh")])
    inputs = tf.random.normal((2, 8, 8, 3))
    projection = tf.random.normal((2, 8, 8, 3))
    teacher_gradient, _ = projected_input_gradient(teacher, inputs, projection)
    with tf.GradientTape() as tape:
        student_gradient, _ = projected_input_gradient(student, inputs, projection)
        loss = tf.reduce_mean(JacobianTerm(1.0)(teacher_gradient, student_gradient))
    weight_gradients = tape.gradient(loss, student.trainable_variables)
    assert float(loss) > 0.0
    kernels = [g for g, v in zip(weight_gradients, student.trainable_variables) if "kernel" in v.path]
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0.0 for g in kernels)


def _tiny_pair():
    keras.utils.set_random_seed(2)
    teacher = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(3, 3, padding="same", activation="tanh")],
                               name="teacher")
    student = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(3, 3, padding="same")], name="student")
    return teacher, student


def test_distiller_jacobian_term_equals_a_hand_computation_and_trains_only_the_student():
    from kd_tf import Distiller

    teacher, student = _tiny_pair()
    distiller = Distiller(teacher, student, student_loss_weight=0.75, jacobian=0.5, jacobian_seed=7, probe_size=8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    noisy = tf.random.stateless_uniform((4, 8, 8, 3), seed=(1, 2))
    clean = tf.random.stateless_uniform((4, 8, 8, 3), seed=(3, 4))

    projection = tf.random.stateless_normal((4, 8, 8, 3), seed=(7, 0))        # seed, step 0
    t_grad, t_out = projected_input_gradient(teacher, noisy, projection)
    s_grad, s_out = projected_input_gradient(student, noisy, projection)
    distill = tf.reduce_mean(tf.square(s_out - t_out), axis=[1, 2, 3])
    own = tf.reduce_mean(tf.square(s_out - clean), axis=[1, 2, 3])
    jacobian = JacobianTerm(0.5)(t_grad, s_grad)
    expected = float(tf.reduce_mean(0.25 * distill + 0.75 * own + 0.5 * jacobian))

    logs = distiller.test_on_batch(noisy, clean, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["jacobian"] == pytest.approx(float(tf.reduce_mean(jacobian)), rel=1e-5)

    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    distiller.train_on_batch(noisy, clean)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, teacher.get_weights()))
    assert not any(np.array_equal(a, b) for a, b in zip(student_before, student.get_weights()))
    with pytest.raises(ValueError, match="Jacobian terms need the live teacher"):
        distiller.test_on_batch({"inputs": noisy, "teacher_outputs": t_out}, clean)


def test_distiller_adaptive_weight_follows_the_terms_and_is_checkpointed(tmp_path):
    from kd_tf import Distiller

    teacher, student = _tiny_pair()
    alpha = schedules.LossRatio(start=0.5, momentum=0.0)        # no averaging: the last step's terms
    distiller = Distiller(teacher, student, student_loss_weight=alpha, probe_size=8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    noisy = tf.random.stateless_uniform((4, 8, 8, 3), seed=(5, 6))
    clean = tf.random.stateless_uniform((4, 8, 8, 3), seed=(7, 8))
    first = distiller.train_on_batch(noisy, clean, return_dict=True)
    assert first["student_loss_weight"] == pytest.approx(0.5)                   # nothing observed before the first step
    assert float(alpha.variables[2].numpy()) == 1.0
    logs = distiller.test_on_batch(noisy, clean, return_dict=True)
    # after one observed step the weight balances the last step's means: distill / (distill + own)
    ratio = first["distill"] / (first["distill"] + first["own"])
    assert logs["student_loss_weight"] == pytest.approx(float(np.clip(ratio, 0.05, 0.95)), rel=1e-5)
    assert all(any(v is w for w in distiller.non_trainable_variables) for v in alpha.variables)
    distiller.save_weights(tmp_path / "d.weights.h5")
    alpha.variables[2].assign(0.0)
    distiller.load_weights(tmp_path / "d.weights.h5")
    assert float(alpha.variables[2].numpy()) == 1.0


# -- the fine-tuning stage and multi-stage distillation (kd_tf.denoise.jobs) ------------------------------

CHAIN_BASE = """
data: {patch_size: 32, batch_size: 4, val_crop: 32, val_crops_per_image: 1}
train: {steps: 6, steps_per_epoch: 3, seed: 3}
distill: {compare_scratch: false, cache_batches: 2}
eval: {sigmas: [25], baselines: [], max_images: 1, timing_size: 64}
export_formats: []
"""


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """teacher (8-16, 2 blocks) -> assistant (6-12, 1 block) -> student (4-8, 1 block, fine-tuned)."""
    from kd_tf.cli import main
    from kd_tf.denoise.nets import build_unet

    root = tmp_path_factory.mktemp("chain")
    keras.utils.set_random_seed(0)
    build_unet((8, 16), 2, name="teacher").save(root / "teacher.keras")
    where = f"output: {{runs_dir: {root / 'runs'}, log_dir: {root / 'tb'}}}\n"
    (root / "assistant.yaml").write_text(CHAIN_BASE + "student: {family: unet, widths: [6, 12], blocks: 1}\n" + where)
    (root / "student.yaml").write_text(CHAIN_BASE + "student: {family: unet, widths: [4, 8], blocks: 1}\n"
                                       "finetune: {steps: 2, learning_rate: 0.0005}\n" + where)
    code = main(["distill", "--config", str(root / "assistant.yaml"), "--config", str(root / "student.yaml"),
                 "--teacher", str(root / "teacher.keras"), "--run-name", "chain"])
    return root, code


def test_chain_each_stage_learns_from_the_stage_before(chain_run):
    import json

    root, code = chain_run
    assert code == 0
    first = json.loads((root / "runs" / "chain-stage1" / "report.json").read_text())
    second = json.loads((root / "runs" / "chain-stage2" / "report.json").read_text())
    assert first["teacher_path"] == str(root / "teacher.keras")
    assert second["teacher_path"] == first["student_path"] == str(root / "runs" / "chain-stage1" / "student.keras")
    assert second["student_init"] == "teacher"            # inherited from the assistant, which is a build_unet too
    macs = [first["methods"]["teacher"]["macs_512"], first["methods"]["student (distilled)"]["macs_512"],
            second["methods"]["student (distilled)"]["macs_512"]]
    assert macs == sorted(macs, reverse=True) and second["methods"]["teacher"]["macs_512"] == macs[1]
    chain = json.loads((root / "runs" / "chain-stage2" / "chain_report.json").read_text())
    assert [s["run"] for s in chain["stages"]] == ["chain-stage1", "chain-stage2"]
    assert "unet: widths" in chain["table"]                # what each stage's student is, by its family


def test_finetune_phase_takes_its_steps_from_the_budget_and_skips_the_teacher(chain_run):
    import json

    root, _ = chain_run
    first = json.loads((root / "runs" / "chain-stage1" / "report.json").read_text())
    second = json.loads((root / "runs" / "chain-stage2" / "report.json").read_text())
    assert "finetune" not in first["history"]
    # 6 steps: 4 of distillation (2 epochs of at most 3), 2 of fine-tuning on the reconstruction loss alone
    assert len(second["history"]["distill"]["loss"]) == 2 and len(second["history"]["finetune"]["loss"]) == 1
    assert "distill" not in second["history"]["finetune"] and "psnr" in second["history"]["finetune"]
    assert second["timings"]["finetune_seconds"] > 0
    assert list((root / "tb" / "chain-stage2" / "finetune").rglob("events.out.tfevents.*"))


def test_finetune_steps_must_leave_distillation_steps():
    from kd_tf import config as cfg
    from kd_tf.denoise import config as denoise_config

    with pytest.raises(cfg.ConfigError, match=r"finetune.steps=6 .*below train.steps=6"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"steps": 6}, "finetune": {"steps": 6}})
    with pytest.raises(cfg.ConfigError, match="finetune.learning_rate"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"finetune": {"steps": 1, "learning_rate": 0}})


def test_gan_distill_takes_one_config(tmp_path, capsys):
    from kd_tf.cli import main

    config = tmp_path / "a.yaml"
    config.write_text("{}\n")
    assert main(["distill", "--task", "gan", "--config", str(config), "--config", str(config)]) == 2
    assert "takes one --config" in capsys.readouterr().err


# -- the main job's built-in assistant (config.assistant) -----------------------------------------

def test_main_job_distills_through_its_assistant_when_it_fits(tmp_path, monkeypatch):
    """teacher (8-16, 2 blocks) -> built-in assistant (6-12, 1 block, 2 steps) -> student (4-8):
    the assistant learns from the teacher, the student from the assistant, and the report scores all."""
    import json

    from kd_tf.denoise import jobs
    from kd_tf.cli import main
    from kd_tf.denoise.nets import build_unet

    keras.utils.set_random_seed(0)
    build_unet((8, 16), 2, name="teacher").save(tmp_path / "teacher.keras")
    (tmp_path / "job.yaml").write_text(
        CHAIN_BASE.replace("compare_scratch: false", "compare_scratch: true")
        + "student: {family: unet, widths: [4, 8], blocks: 1}\nassistant: {use: auto, widths: [6, 12], blocks: 1, steps: 2}\n"
        + f"output: {{runs_dir: {tmp_path / 'runs'}, log_dir: {tmp_path / 'tb'}}}\n")
    phases, original = [], jobs.distill_phase

    def recording(config, teacher_path, reference_teacher, net, name, steps, *args, **kwargs):
        phases.append((Path(teacher_path).name, name, steps, reference_teacher.count_params()))
        return original(config, teacher_path, reference_teacher, net, name, steps, *args, **kwargs)

    monkeypatch.setattr(jobs, "distill_phase", recording)
    assert main(["distill", "--config", str(tmp_path / "job.yaml"), "--teacher", str(tmp_path / "teacher.keras"),
                 "--run-name", "helped"]) == 0
    run = tmp_path / "runs" / "helped"
    report = json.loads((run / "report.json").read_text())
    assistant = keras.models.load_model(run / "assistant.keras")
    teacher_params = keras.models.load_model(tmp_path / "teacher.keras").count_params()
    assert phases == [("teacher.keras", "assistant", 2, teacher_params),
                      ("assistant.keras", "student", 6, assistant.count_params())]
    assert report["assistant"] == {"widths": [6, 12], "blocks": 1, "steps": 2, "path": str(run / "assistant.keras"),
                                   "inherited": True}
    assert report["assistant_decision"].startswith("assistant.use=auto: ")
    assert report["teacher_path"] == str(tmp_path / "teacher.keras")      # the report's teacher is the real one
    assert list(report["methods"])[:5] == ["noisy input", "teacher", "assistant", "student (distilled)",
                                          "student (scratch)"]
    macs = [report["methods"][m]["macs_512"] for m in ("teacher", "assistant", "student (distilled)")]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == 3
    assert report["student_init"] == "teacher"
    assert report["timings"]["assistant_cache_samples"] == 2 * 4 and report["timings"]["assistant_seconds"] > 0
    assert len(report["history"]["assistant"]["loss"]) == 1 and len(report["history"]["distill"]["loss"]) == 2
    assert list((tmp_path / "tb" / "helped" / "assistant").rglob("events.out.tfevents.*"))


def test_assistant_is_off_by_default_skipped_when_it_does_not_fit_and_validated(chain_run):
    import json

    from kd_tf import config as cfg
    from kd_tf.denoise import config as denoise_config
    from kd_tf.denoise.jobs import assistant_plan
    from kd_tf.denoise.nets import build_unet

    root, _ = chain_run
    first = json.loads((root / "runs" / "chain-stage1" / "report.json").read_text())
    assert first["assistant"] is None and "assistant" not in first["methods"]
    assert first["assistant_decision"] == "assistant.use=never"
    teacher = build_unet((8, 16), 2, name="teacher")

    def plan(**assistant):
        return assistant_plan(cfg.from_dict(denoise_config.DistillJobConfig, {
            "student": {"family": "unet", "widths": [4, 8], "blocks": 1}, "assistant": assistant}), teacher)

    assert plan() == (False, "assistant.use=never") and plan(use="always") == (True, "assistant.use=always")
    used, why = plan(use="auto")                 # the default assistant has 4 levels, this teacher 2
    assert not used and why.startswith("assistant.use=auto, skipped: teacher -> assistant: the student has 4 levels")
    used, why = plan(use="auto", widths=[8, 16], blocks=2)          # the teacher's own size
    assert not used and "is not strictly between the teacher" in why
    assert plan(use="auto", widths=[6, 12], blocks=1)[0]
    with pytest.raises(cfg.ConfigError, match=r"assistant.use='sometimes' .*one of \('auto', 'always', 'never'\)"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"assistant": {"use": "sometimes"}})
    with pytest.raises(cfg.ConfigError, match=r"assistant.steps=0"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"assistant": {"steps": 0}})
    with pytest.raises(cfg.ConfigError, match=r"assistant.widths"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"assistant": {"widths": [8]}})
    assert cfg.from_dict(denoise_config.DistillJobConfig, {}).assistant.steps_for(3000) == 500
