"""Config validation names the bad value; weight schedules; MAC counting."""

import keras
import pytest
from keras import layers

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf import schedules
from kd_tf.complexity import count_macs, count_params
from kd_tf.denoise.nets import build_unet


def test_unknown_key_lists_accepted_ones():
    with pytest.raises(cfg.ConfigError, match=r"unknown key\(s\) \['stepz'\] in train; accepted: .*'steps'"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"stepz": 3}})


@pytest.mark.parametrize("values, message", [
    ({"distill": {"output_loss": "huber"}}, r"distill.output_loss='huber'.*'mse' or 'l1'"),
    ({"distill": {"student_loss_weight": {"kind": "step"}}}, r"distill.student_loss_weight.kind='step'.*one of"),
    ({"distill": {"student_loss_weight": {"start": 1.5}}}, r"distill.student_loss_weight.start=1.5"),
    ({"data": {"patch_size": 60}}, r"data.patch_size=60.*multiple of 8"),
    ({"data": {"sigma_min": 30, "sigma_max": 10}}, r"sigma_min/sigma_max"),
    ({"data": {"min_scale": 0}}, r"data.min_scale=0.0 .*0 < value <= 1"),
    ({"data": {"min_scale": 1.5}}, r"data.min_scale=1.5 .*0 < value <= 1"),
    ({"data": {"saturation_boost": 0.5}}, r"data.saturation_boost=0.5 .*a factor >= 1"),
    ({"data": {"grey_fraction": -0.1}}, r"data.grey_fraction=-0.1 .*0 <= fraction <= 1"),
    ({"eval": {"baselines": ["bm4d"]}}, r"eval.baselines='bm4d'"),
    ({"student": {"family": "unet", "widths": [8]}}, r"student.widths"),
    ({"student": {"family": "ffdnet", "widths": [8, 16]}},
     r"student.widths=\[8, 16\] describe a U-Net.*family=unet"),
    ({"student": {"features": 20}}, r"student.features=20 .* FFDNet-shaped.*student.family=ffdnet"),
    ({"student": {"family": "resnet"}}, r"student.family.*unet.*ffdnet"),
    ({"student": {"unshuffle": 3}}, r"student.unshuffle=3 .* 1 \(full resolution\), 2 or 4"),
    ({"student": {"family": "ffdnet", "unshuffle": 2}}, r"student.unshuffle=2 describe a U-Net"),
    ({"student": {"global_context": -4}}, r"student.global_context=-4 .* an int >= 0"),
    ({"student": {"global_context": True}}, r"student.global_context=True .* expected an int"),
    ({"student": {"family": "ffdnet", "global_context": 8}}, r"student.global_context=8 describe a U-Net"),
    ({"student": {"pointwise": [0, 80]}}, r"student.pointwise=\[0, 80\] .* a list of 4 ints >= 0"),
    ({"student": {"pointwise": -1}}, r"student.pointwise=-1 .* an int >= 0"),
    ({"student": {"family": "ffdnet", "pointwise": 8}}, r"student.pointwise=8 describe a U-Net"),
    ({"data": {"patch_size": 72}, "student": {"widths": [8, 16, 32, 64], "unshuffle": 2}},
     r"data.patch_size=72 .* a multiple of 16, the student's stride"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.from_dict(denoise_config.DistillJobConfig, values)


def test_a_partial_section_changes_only_what_it_names_of_the_jobs_defaults():
    """The main job trains 1,200 steps (TrainConfig's own default is 3,000) with an 11-22-44-88 U-Net:
    one override keeps the rest of the job's section; a change of family starts from that family."""
    job = denoise_config.DistillJobConfig
    config = cfg.load(job, None, {"train.learning_rate": 5e-4, "student.blocks": 2})
    assert (config.train.steps, config.train.learning_rate) == (1200, 5e-4)
    assert (config.student.widths, config.student.blocks) == ([11, 22, 44, 88], 2)
    ffdnet = cfg.load(job, None, {"student.family": "ffdnet"}).student
    assert (ffdnet.family, ffdnet.features, ffdnet.depth) == ("ffdnet", 28, 12)
    assert cfg.load(job, None, {"eval.sigmas": [25]}).eval.cbm3d_sigmas == [25.0]


def test_yaml_with_feature_pairs_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  features:\n    - [bottleneck, bottleneck, 0.5]\n    - {teacher: dec0, student: dec0}\n")
    config = cfg.load(denoise_config.DistillJobConfig, path, {"train.steps": 7, "distill.student_loss_weight.kind": "linear",
                                                   "distill.student_loss_weight.end": 0.1})
    assert config.train.steps == 7 and config.distill.student_loss_weight.end == 0.1
    assert [(p.teacher, p.weight) for p in config.distill.features] == [("bottleneck", 0.5), ("dec0", 1.0)]
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(denoise_config.DistillJobConfig, tmp_path / "absent.yaml")


def test_schedules():
    ramp = schedules.LinearRamp(0.9, 0.1, steps=10, delay=5)
    assert float(ramp(0)) == pytest.approx(0.9) and float(ramp(10)) == pytest.approx(0.5)
    assert float(ramp(100)) == pytest.approx(0.1)
    cosine = schedules.CosineRamp(0.0, 1.0, steps=10)
    assert float(cosine(5)) == pytest.approx(0.5) and float(cosine(1)) < 0.1
    assert float(schedules.as_schedule(0.25)(123)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="value=1.2"):
        schedules.Constant(1.2)
    assert isinstance(schedules.from_config("cosine", 0.1, 0.9, 100), schedules.CosineRamp)


def test_macs_and_params_of_a_known_network():
    model = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(8, 3, padding="same"),
                              layers.Conv2D(4, 1, strides=2), layers.Conv2DTranspose(2, 2, strides=2)])
    expected = 32 * 32 * 9 * 3 * 8 + 16 * 16 * 8 * 4 + 16 * 16 * 4 * 4 * 2
    assert count_macs(model, (32, 32, 3)) == expected
    assert count_params(model) == (9 * 3 * 8 + 8) + (8 * 4 + 4) + (4 * 4 * 2 + 2)


def test_default_student_is_10x_cheaper_than_default_teacher():
    from kd_tf.denoise.jobs import build_net
    from kd_tf.model_io import load_model

    config = denoise_config.DistillJobConfig()
    teacher, student = load_model(config.distill.teacher), build_net(config.student, "student")
    ratio = count_macs(teacher, [(64, 64, 3), (1,)]) / count_macs(student, (64, 64, 3))
    assert 10 <= ratio < 12          # the budget used, not a student far below it


def test_the_ffdnet_shaped_student_is_asked_for_by_family():
    """--set student.family=ffdnet: 28 channels, 12 convolutions unless features/depth say otherwise."""
    config = cfg.load(denoise_config.DistillJobConfig, None, {"student.family": "ffdnet", "student.depth": 10,
                                                               "export_formats": []})
    assert (config.student.family, config.student.features, config.student.depth) == ("ffdnet", 28, 10)


def test_teacher_cache_is_automatic_for_output_only_distillation():
    from kd_tf.denoise.jobs import batches_to_cache

    assert batches_to_cache(cfg.from_dict(denoise_config.DistillJobConfig, {})) == 300
    assert batches_to_cache(cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"steps": 40}})) == 40
    with_features = {"distill": {"features": [["dec0", "dec0", 0.1]]}}
    assert batches_to_cache(cfg.from_dict(denoise_config.DistillJobConfig, with_features)) == 0
    with pytest.raises(cfg.ConfigError, match="live teacher"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"distill": {"features": [["dec0", "dec0"]], "cache_batches": 10}})
    with pytest.raises(cfg.ConfigError, match="distill.cache_batches"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"distill": {"cache_batches": -1}})


def test_mixed_precision_auto_asks_the_hardware(monkeypatch, tmp_path):
    from kd_tf import precision

    for fast in (True, False):
        monkeypatch.setattr(precision, "bfloat16_is_fast", lambda fast=fast: fast)
        auto = {"train": {"mixed_precision": "auto"}}
        assert cfg.from_dict(denoise_config.DistillJobConfig, auto).train.mixed_precision is fast
        assert cfg.from_dict(denoise_config.DistillJobConfig, {}).train.mixed_precision is False   # float32 default
    assert cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"mixed_precision": True}}).train.mixed_precision is True
    with pytest.raises(cfg.ConfigError, match="train.mixed_precision"):
        cfg.from_dict(denoise_config.DistillJobConfig, {"train": {"mixed_precision": "bf16"}})
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert set(precision.CPU_BF16_FLAGS) & precision.cpu_flags(str(cpuinfo)) == {"avx512_bf16"}


def test_sr_jobs_train_in_float32_and_refuse_bfloat16(monkeypatch):
    """The SR jobs build float32 nets: their config must not claim bfloat16 (auto once did, and logged it)."""
    from kd_tf import precision
    from kd_tf.sr import config as sr_config

    monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: True)
    for job in (sr_config.SRTeacherJobConfig, sr_config.SRDistillJobConfig):
        assert cfg.from_dict(job, {}).train.mixed_precision is False
        assert cfg.from_dict(job, {"train": {"steps": 5}}).train.mixed_precision is False
        assert cfg.from_dict(job, {"train": {"mixed_precision": "float32"}}).train.mixed_precision is False
        for forced in (True, "bfloat16"):
            with pytest.raises(cfg.ConfigError, match=r"train.mixed_precision=(True|'bfloat16').*float32"):
                cfg.from_dict(job, {"train": {"mixed_precision": forced}})
