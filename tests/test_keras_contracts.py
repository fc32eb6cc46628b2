"""Issue 18: the Distiller's terms are a public base class, keras.distillation's loss objects work,
the weights have Keras' name (the old one warns), float16 trains with loss scaling, docstrings run."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_tf.config
import kd_tf.denoise.config  # noqa: F401 - each task's jobs join cfg.JOBS
import kd_tf.denoise.jobs
import kd_tf.diffusion.config  # noqa: F401
import kd_tf.gan.config  # noqa: F401
import kd_tf.sr.config  # noqa: F401
import kd_tf.distiller
import kd_tf.losses
import kd_tf.precision
from kd_tf import Distiller
from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf import schedules
from kd_tf.losses import DistillationTerm, FeatureTerm, LogitsTerm, from_keras
from kd_tf.denoise.nets import build_unet


@keras.saving.register_keras_serializable(package="kd_tf_tests")
class GramTerm(DistillationTerm):
    """Gram matrices of a feature map (channel correlations), per sample."""

    def call(self, teacher, student):
        def gram(features):
            features = tf.cast(features, tf.float32)
            flat = tf.reshape(features, [tf.shape(features)[0], -1, features.shape[-1]])
            return tf.matmul(flat, flat, transpose_a=True) / tf.cast(tf.shape(flat)[1], tf.float32)
        return tf.reduce_mean(tf.square(gram(teacher) - gram(student)), axis=[1, 2])


def _gram_by_hand(a, b):
    def gram(f):
        flat = f.reshape(f.shape[0], -1, f.shape[-1]).astype(np.float64)
        return np.einsum("bpc,bpd->bcd", flat, flat) / flat.shape[1]
    return np.mean((gram(a) - gram(b)) ** 2, axis=(1, 2))


@pytest.fixture()
def pair():
    keras.utils.set_random_seed(3)
    return build_unet((8, 16), 1, name="teacher"), build_unet((8, 12), 1, name="student")


def test_a_user_term_is_computed_logged_weighted_and_saved(pair, rng, tmp_path):
    teacher, student = pair
    term = GramTerm("enc0", "enc0", weight=0.3)
    distiller = Distiller(teacher, student, student_loss_weight=0.4, terms=[term])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x = rng.random((2, 16, 16, 3)).astype(np.float32)
    y = rng.random((2, 16, 16, 3)).astype(np.float32)
    logs = distiller.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)

    tap = lambda model: keras.Model(model.inputs, model.get_layer("enc0").output)   # noqa: E731
    expected_term = _gram_by_hand(tap(teacher).predict(x, verbose=0), tap(student).predict(x, verbose=0))
    prediction, target = student.predict(x, verbose=0), teacher.predict(x, verbose=0)
    distill, own = np.mean((prediction - target) ** 2), np.mean((prediction - y) ** 2)
    assert logs["gram_enc0"] == pytest.approx(expected_term.mean(), rel=1e-4)
    assert logs["loss"] == pytest.approx(0.6 * distill + 0.4 * own + 0.3 * expected_term.mean(), rel=1e-4)

    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    assert [type(t).__name__ for t in loaded.matched_terms] == ["GramTerm"] and loaded.matched_terms[0].weight == 0.3
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))
    loaded.compile(optimizer=keras.optimizers.SGD(0.0))
    assert loaded.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)["loss"] == pytest.approx(logs["loss"],
                                                                                                        rel=1e-5)


def test_a_term_at_the_output_needs_no_tap_and_works_with_the_teacher_cache(pair, rng):
    teacher, student = pair
    distiller = Distiller(teacher, student, student_loss_weight=1.0,
                          terms=[kd_tf.losses.OutputTerm(distance="l1", weight=2.0, name="l1_output")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x = rng.random((2, 16, 16, 3)).astype(np.float32)
    cached = {"inputs": x, "teacher_outputs": teacher.predict(x, verbose=0)}
    logs = distiller.evaluate(cached, x, batch_size=2, verbose=0, return_dict=True)
    l1 = np.mean(np.abs(student.predict(x, verbose=0) - cached["teacher_outputs"]))
    assert logs["l1_output"] == pytest.approx(l1, rel=1e-4)
    assert logs["loss"] == pytest.approx(np.mean((student.predict(x, verbose=0) - x) ** 2) + 2 * l1, rel=1e-4)


def test_keras_feature_distillation_becomes_a_feature_term_with_an_adapter(pair, rng):
    teacher, student = pair
    keras_loss = keras.distillation.FeatureDistillation("mae", teacher_layer_name="bottleneck", student_layer_name="bottleneck")
    distiller = Distiller(teacher, student, terms=[keras_loss])
    (term,) = distiller.matched_terms
    assert isinstance(term, FeatureTerm) and (term.teacher_layer, term.student_layer) == ("bottleneck", "bottleneck")
    assert distiller.adapters == [term.adapter] and term.adapter.kernel.shape == (1, 1, 12, 16)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x = rng.random((2, 16, 16, 3)).astype(np.float32)
    logs = distiller.evaluate(x, x, batch_size=2, verbose=0, return_dict=True)
    tap = lambda model: keras.Model(model.inputs, model.get_layer("bottleneck").output)   # noqa: E731
    adapted = term.adapter(tap(student)(x)).numpy()
    assert logs[term.name] == pytest.approx(np.mean(np.abs(tap(teacher)(x).numpy() - adapted)), rel=1e-4)


def test_keras_logits_distillation_is_hintons_tempered_kl():
    logits = keras.distillation.LogitsDistillation(temperature=2.0)
    term = from_keras(logits, weight=0.5)
    assert isinstance(term, LogitsTerm) and term.temperature == 2.0 and term.weight == 0.5
    teacher = np.array([[3.0, 1.0, -2.0], [0.5, 0.5, 0.0]], np.float32)
    student = np.array([[1.0, 1.0, 0.0], [2.0, -1.0, 0.0]], np.float32)
    p = tf.nn.softmax(teacher / 2.0).numpy().astype(np.float64)
    q = tf.nn.softmax(student / 2.0).numpy().astype(np.float64)
    expected = (p * np.log(p / q)).sum(axis=1) * 4.0
    np.testing.assert_allclose(term(teacher, student).numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one loss"):
        from_keras(keras.distillation.FeatureDistillation(["mse", "mae"]))
    with pytest.raises(ValueError, match="accepted: a kd_tf.losses.DistillationTerm"):
        from_keras("mse")


def test_terms_check_their_shapes_up_front(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="spatial sizes differ"):
        Distiller(teacher, student, terms=[FeatureTerm("enc0", "bottleneck")])
    with pytest.raises(ValueError, match="distinct names"):
        Distiller(teacher, student, terms=[GramTerm("enc0", "enc0"), GramTerm("enc0", "enc0")])


def test_alpha_still_works_with_a_deprecation_warning(pair):
    teacher, student = pair
    with pytest.warns(DeprecationWarning, match="student_loss_weight = 1 - alpha"):
        distiller = Distiller(teacher, student, alpha=0.3)
    assert float(distiller.student_loss_weight(0)) == pytest.approx(0.7)
    with pytest.warns(DeprecationWarning):
        ramp = Distiller(teacher, student, alpha=schedules.LinearRamp(0.9, 0.5, steps=10)).student_loss_weight
    assert [round(float(ramp(s)), 6) for s in (0, 10)] == [0.1, 0.5]
    with pytest.raises(ValueError, match="give one"):
        Distiller(teacher, student, alpha=0.3, student_loss_weight=0.7)
    with pytest.warns(DeprecationWarning, match="distill.alpha is deprecated"):
        config = cfg.from_dict(denoise_config.DistillJobConfig, {"distill": {"alpha": {"kind": "linear", "start": 0.9, "end": 0.2}}})
    assert (config.distill.student_loss_weight.start, config.distill.student_loss_weight.end) == (0.1, 0.8)
    with pytest.raises(cfg.ConfigError, match="both set"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"distill": {"alpha": {"start": 0.9}, "student_loss_weight": {"start": 0.1}}})


def _train(precision, x, y, steps=12):
    keras.utils.set_random_seed(5)
    teacher = build_unet((8, 16), 1, name="teacher")
    student = build_unet((8, 16), 1, name="student", mixed_precision=precision)
    distiller = Distiller(teacher, student, student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    losses = [float(distiller.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(steps)]
    return distiller, losses


def test_float16_trains_with_loss_scaling_like_float32(rng):
    """Stated tolerance: after 12 Adam steps the float16 run's losses stay within 2 % of float32's."""
    x = rng.random((4, 16, 16, 3)).astype(np.float32)
    y = np.clip(x + 0.1, 0, 1).astype(np.float32)
    reference, losses32 = _train(False, x, y)
    mixed, losses16 = _train("float16", x, y)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(reference.optimizer, keras.optimizers.LossScaleOptimizer)
    assert mixed.student.get_layer("head").compute_dtype == "float16"
    assert losses32[-1] < 0.9 * losses32[0]                          # it learned something to compare
    np.testing.assert_allclose(losses16, losses32, rtol=0.02)


def test_precision_follows_the_device(monkeypatch):
    for fast, old_gpu, expected in ((True, False, True), (False, True, "float16"), (False, False, False)):
        monkeypatch.setattr(kd_tf.precision, "bfloat16_is_fast", lambda fast=fast: fast)
        monkeypatch.setattr(kd_tf.precision, "float16_gpu", lambda old_gpu=old_gpu: old_gpu)
        assert kd_tf.precision.resolve_mixed_precision("auto") == expected
        assert cfg.TrainConfig(mixed_precision="auto").validate() is None
    assert cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"mixed_precision": "float16"}}).train.mixed_precision == "float16"
    with pytest.raises(cfg.ConfigError, match="train.mixed_precision='fp8'"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"mixed_precision": "fp8"}})


@pytest.mark.parametrize("module", [kd_tf.losses, kd_tf.precision, kd_tf.config, schedules, kd_tf.distiller,
                                    kd_tf.denoise.jobs])
def test_docstring_examples_run(module):
    failed, tried = doctest.testmod(module)
    assert tried and not failed


def test_config_verb_lists_every_key_with_its_default_and_meaning(capsys):
    from kd_tf.cli import main

    for job, cls in cfg.JOBS.items():
        rows = cfg.describe(cls)
        keys = {key for key, _, _ in rows}
        assert not [key for key, _, meaning in rows if not meaning], job     # every key says what it is
        assert {f.name for f in __import__("dataclasses").fields(cls)} <= keys
    assert main(["config", "distill"]) == 0
    printed = capsys.readouterr().out
    defaults = denoise_config.DistillJobConfig()
    for key, default, _ in cfg.describe(denoise_config.DistillJobConfig):
        assert key in printed
    line = next(line for line in printed.splitlines() if line.split()[:1] == ["train.steps"])
    assert line.split()[1] == repr(defaults.train.steps) == "1200"
    assert main(["config", "no-such-verb"]) == 2


def test_config_verb_does_not_start_tensorflow():
    """The job list is plain dataclasses: `python -m kd_tf config` answers in a second, with no
    TensorFlow start-up lines (a task package that imports its nets eagerly breaks this)."""
    import subprocess
    import sys

    probe = ("import sys; from kd_tf.cli import main; code = main(['config', 'distill']); "
             "sys.exit(code or 3 * ('tensorflow' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.steps" in done.stdout and "cuda" not in done.stderr


def test_help_shows_defaults(capsys):
    from kd_tf.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "(.keras, SavedModel, .tflite) (default: denoise)" in " ".join(capsys.readouterr().out.split())
