"""Weight inheritance (kd_tf.denoise.inherit): a student U-Net that starts from its teacher's
strongest channels and residual blocks."""

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.denoise import jobs
from kd_tf.denoise.nets import build_unet
from kd_tf.denoise.inherit import inherit_from_teacher


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(3)
    return build_unet((8, 16), 2, name="teacher")


@pytest.fixture(scope="module")
def batches():
    return [tf.random.stateless_uniform((2, 16, 16, 3), seed=(i, 1)) for i in range(2)]


def test_a_student_as_wide_and_deep_as_the_teacher_is_the_teacher(teacher, batches):
    copy = build_unet((8, 16), 2, name="copy")
    inherit_from_teacher(teacher, copy, batches)
    np.testing.assert_array_equal(copy(batches[0]).numpy(), teacher(batches[0]).numpy())


def test_the_student_takes_the_teachers_weights_at_the_strongest_channels(teacher, batches):
    loud = build_unet((8, 16), 2, name="loud")
    loud.set_weights(teacher.get_weights())
    kernel, bias = loud.get_layer("head").get_weights()
    kernel[..., 5] *= 50.0                                    # channel 5 of level 0 now dominates the stream
    loud.get_layer("head").set_weights([kernel, bias])
    conv2 = loud.get_layer("dec0_block0_conv2")               # dec0's first block adds nothing now
    conv2.set_weights([np.zeros_like(w) for w in conv2.get_weights()])

    student = build_unet((3, 6), 1, name="student")
    kept = inherit_from_teacher(loud, student, batches)
    channels = kept["stream_channels"][0]
    assert 5 in channels and len(channels) == 3 and channels == sorted(channels)
    assert kept["blocks"]["dec0"] == [1]
    np.testing.assert_array_equal(student.get_layer("head").get_weights()[0], kernel[..., channels])
    np.testing.assert_array_equal(student.get_layer("tail").get_weights()[0],
                                  loud.get_layer("tail").get_weights()[0][:, :, channels, :])
    up = loud.get_layer("up0").get_weights()[0]               # transposed: (h, w, out, in)
    np.testing.assert_array_equal(student.get_layer("up0").get_weights()[0],
                                  up[:, :, channels, :][:, :, :, kept["stream_channels"][1]])


@pytest.mark.parametrize("widths, blocks, message", [
    ((16, 16), 1, r"level 0: the student is wider \(16 channels\) than the teacher \(8\)"),
    ((4, 8, 16), 1, r"the student has 3 levels, the teacher 2"),
    ((4, 8), 3, r"enc0: the student has 3 residual blocks, the teacher 2"),
])
def test_students_that_do_not_fit_are_named(teacher, batches, widths, blocks, message):
    with pytest.raises(ValueError, match=message):
        inherit_from_teacher(teacher, build_unet(widths, blocks, name="s"), batches)


def test_auto_falls_back_to_random_weights_and_teacher_insists(teacher, batches, caplog):
    plain = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 3, padding="same")])
    student = build_unet((4, 8), 1, name="student")
    before = [w.copy() for w in student.get_weights()]
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    with caplog.at_level("INFO", logger="kd_tf.denoise.jobs"):
        assert jobs.start_from_teacher("auto", plain, student, stream) is None
    assert "random weights" in caplog.text and "not a kd_tf.denoise.nets.build_unet network" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    with pytest.raises(ValueError, match="distill.student_init=teacher: the teacher is not"):
        jobs.start_from_teacher("teacher", plain, student, stream)
    assert jobs.start_from_teacher("random", teacher, student, stream) is None
    assert jobs.start_from_teacher("auto", teacher, student, stream)["blocks"]["bottleneck"] in ([0], [1])


def test_a_student_file_continues_training_from_its_weights(teacher, batches, tmp_path):
    """distill.student_init=<student.keras>: a new learning-rate cycle from a trained student."""
    from kd_tf.errors import InputError
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(5)
    trained = build_unet((4, 8), 1, name="student")
    path = str(save_model(trained, tmp_path / "student.keras"))
    student = build_unet((4, 8), 1, name="student")
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()                 # which file it was, kept
    assert jobs.start_from_teacher(path, teacher, student, stream) == {"from": path, "sha256": digest}
    assert all(np.array_equal(a, b) for a, b in zip(trained.get_weights(), student.get_weights()))
    with pytest.raises(InputError, match="at layer down0 .*student.widths, blocks and global_context"):
        jobs.start_from_teacher(path, teacher, build_unet((4, 6), 1, name="student"), stream)   # narrower: refused


def test_a_student_with_more_blocks_grows_from_a_trained_one(teacher, batches, tmp_path):
    """A new residual block starts as an identity: the grown student computes what the trained one did."""
    from kd_tf.errors import InputError
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(6)
    trained = build_unet((4, 8), 1, name="student")
    for w in trained.weights:                               # conv biases start at zero: make every weight count
        w.assign(np.random.default_rng(0).normal(0, 0.1, w.shape).astype("float32"))
    path = str(save_model(trained, tmp_path / "student.keras"))
    grown = build_unet((4, 8), [1, 2], name="student")
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    assert jobs.start_from_teacher(path, teacher, grown, stream) == {
        "from": path, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "new_blocks": ["bottleneck_block1"]}
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(grown(x), trained(x), atol=1e-6)
    assert np.abs(grown.get_layer("bottleneck_block1_conv1").kernel.numpy()).max() > 0     # it can still learn
    with pytest.raises(InputError, match=r"layers \['bottleneck_block1_conv1'"):
        jobs.start_from_teacher(str(save_model(grown, tmp_path / "grown.keras")), teacher, trained, stream)
    with pytest.raises(InputError, match="at layer head"):
        jobs.start_from_teacher(path, teacher, build_unet((3, 8), [1, 2], name="student"), stream)


def _noisy_weights(model):
    for w in model.weights:                                 # conv biases start at zero: make every weight count
        w.assign(np.random.default_rng(0).normal(0, 0.1, w.shape).astype("float32"))
    return model


def test_a_wider_student_computes_what_the_narrow_one_did_and_its_new_channels_learn(teacher, batches, tmp_path):
    """student.widths above the file's: every trained channel keeps its weights, the new ones start with
    fresh weights that nothing trained reads (zero outgoing weights), so the wide student computes what the
    narrow one did, and the loss reaches the new channels' outgoing weights (Conv2D and Conv2DTranspose)."""
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(8)
    trained = _noisy_weights(build_unet((4, 8, 16), 1, name="student"))
    path = str(save_model(trained, tmp_path / "student.keras"))
    wide = build_unet((6, 8, 20), 1, name="student")
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    kept = jobs.start_from_teacher(path, teacher, wide, stream)
    assert kept["new_blocks"] == [] and "dropped_blocks" not in kept
    assert kept["widened"] == ["head", "enc0_block0_conv1", "enc0_block0_conv2", "down0", "down1",
                               "bottleneck_block0_conv1", "bottleneck_block0_conv2", "up1", "up0",
                               "dec0_block0_conv1", "dec0_block0_conv2", "tail"]
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(wide(x), trained(x), atol=1e-5)
    np.testing.assert_array_equal(wide.get_layer("enc1_block0_conv1").kernel.numpy(),
                                  trained.get_layer("enc1_block0_conv1").kernel.numpy())
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(wide(x) - 0.5))
    outgoing = {"tail": (slice(None), slice(None), slice(4, None)),             # Conv2D: (h, w, in, out)
                "up1": (slice(None), slice(None), slice(None), slice(16, None)),  # transposed: (h, w, out, in)
                "bottleneck_block0_conv1": (slice(None), slice(None), slice(16, None), slice(0, 16))}
    gradients = tape.gradient(loss, [wide.get_layer(name).kernel for name in outgoing])
    for (name, new_inputs), gradient in zip(outgoing.items(), gradients):
        assert np.abs(wide.get_layer(name).kernel.numpy()[new_inputs]).max() == 0, name   # nothing reads them yet
        assert np.abs(gradient.numpy()[new_inputs]).max() > 0, name                      # but they can learn
    assert np.abs(wide.get_layer("head").kernel.numpy()[..., 4:]).max() > 0              # the new channels carry a signal


def test_named_blocks_are_dropped_and_only_named_ones(teacher, batches, tmp_path):
    """distill.drop_blocks: a file's residual block the student leaves out must be named; the rest of the
    weights still come from the file (here while the first level widens)."""
    from kd_tf.errors import InputError
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(9)
    trained = _noisy_weights(build_unet((4, 8), [1, 2], name="student"))
    path = str(save_model(trained, tmp_path / "student.keras"))
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    with pytest.raises(InputError, match=r"layers \['bottleneck_block1_conv1', 'bottleneck_block1_conv2'\].*drop_blocks"):
        jobs.start_from_teacher(path, teacher, build_unet((5, 8), 1, name="student"), stream)
    with pytest.raises(InputError, match=r"'bottleneck_block0'.*could drop: \['bottleneck_block1'\]"):
        jobs.start_from_teacher(path, teacher, build_unet((5, 8), 1, name="student"), stream,
                                drop_blocks=["bottleneck_block0"])
    student = build_unet((5, 8), 1, name="student")
    kept = jobs.start_from_teacher(path, teacher, student, stream, drop_blocks=["bottleneck_block1"])
    assert kept["dropped_blocks"] == ["bottleneck_block1"] and kept["new_blocks"] == []
    assert "head" in kept["widened"] and "bottleneck_block0_conv1" not in kept["widened"]
    np.testing.assert_array_equal(student.get_layer("bottleneck_block0_conv2").kernel.numpy(),
                                  trained.get_layer("bottleneck_block0_conv2").kernel.numpy())


@pytest.mark.parametrize("values, message", [
    ({"student_init": "auto", "drop_blocks": ["bottleneck_block1"]}, "unless distill.student_init is a student"),
    ({"student_init": "models/x.keras", "drop_blocks": ["bottleneck"]}, "residual block names"),
    ({"student_init": "models/x.keras", "drop_blocks": "bottleneck_block1"}, "residual block names")])
def test_drop_blocks_is_checked_up_front(values, message):
    from kd_tf.config import ConfigError
    from kd_tf.denoise.config import DistillConfig

    with pytest.raises(ConfigError, match=message):
        DistillConfig(**values).validate()


def _assert_identity_that_learns(grown, trained, new_layer):
    """`grown` computes what `trained` does, and the loss still reaches `new_layer`'s kernel."""
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(grown(x), trained(x), atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(grown(x) - 0.5))
    gradient = tape.gradient(loss, grown.get_layer(new_layer).kernel)
    assert np.abs(gradient.numpy()).max() > 0                                    # it can still learn


def test_a_student_gains_a_global_context_as_an_identity(teacher, batches, tmp_path):
    """student.global_context on a trained student without one: the context layers are new, the grown
    student computes what the trained one did, and its FiLM layers can still learn. A context is never
    dropped or resized on the way, nor left out by weight inheritance."""
    from kd_tf.errors import InputError
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(7)
    trained = build_unet((4, 8), 1, name="student")
    for w in trained.weights:
        w.assign(np.random.default_rng(0).normal(0, 0.1, w.shape).astype("float32"))
    path = str(save_model(trained, tmp_path / "student.keras"))
    grown = build_unet((4, 8), 1, name="student", global_context=6)
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    kept = jobs.start_from_teacher(path, teacher, grown, stream)
    assert kept["new_blocks"] == [] and kept["new_context"] == ["context_from0", "context_from1", "film0_scale",
                                                                 "film0_shift"]
    _assert_identity_that_learns(grown, trained, "film0_scale")
    grown_path = str(save_model(grown, tmp_path / "grown.keras"))
    with pytest.raises(InputError, match=r"layers \['context_from0'.* global_context"):      # no shrinking
        jobs.start_from_teacher(grown_path, teacher, build_unet((4, 8), 1, name="student"), stream)
    with pytest.raises(InputError, match="at layer context_from0 .* global_context"):          # nor resizing
        jobs.start_from_teacher(grown_path, teacher, build_unet((4, 8), 1, name="student", global_context=4), stream)
    with pytest.raises(InputError, match="the teacher has a global context"):                 # nor inheriting
        jobs.start_from_teacher("teacher", grown, build_unet((4, 8), 1, name="student"), stream)


def test_a_student_gains_a_pointwise_block_as_an_identity(teacher, batches, tmp_path):
    """student.pointwise on a trained student without it: the 1x1 block is new, its second convolution
    starts at zero so the grown student computes what the trained one did, and it can still learn;
    it costs 2 * width * hidden MACs per value of its level."""
    from kd_tf.complexity import count_macs
    from kd_tf.denoise.nets import pointwise_of
    from kd_tf.model_io import save_model

    keras.utils.set_random_seed(7)
    trained = build_unet((4, 8), 1, name="student")
    for w in trained.weights:
        w.assign(np.random.default_rng(0).normal(0, 0.1, w.shape).astype("float32"))
    path = str(save_model(trained, tmp_path / "student.keras"))
    grown = build_unet((4, 8), 1, name="student", pointwise=[6, 0])
    assert pointwise_of(grown) == (6, 0) and pointwise_of(trained) == (0, 0)
    assert count_macs(grown, (16, 16, 3)) - count_macs(trained, (16, 16, 3)) == 2 * 4 * 6 * 16 * 16
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    kept = jobs.start_from_teacher(path, teacher, grown, stream)
    assert kept["new_blocks"] == ["dec0_block1"]
    _assert_identity_that_learns(grown, trained, "dec0_block1_conv2")


@pytest.mark.parametrize("student_kwargs, left_out", [({"blocks": [1, 2]}, "bottleneck_block1_conv1"),
                                                      ({"blocks": 1, "global_context": 6}, "film0_shift")])
def test_a_file_with_part_of_a_block_or_context_is_refused(teacher, batches, tmp_path, monkeypatch, student_kwargs,
                                                          left_out):
    """A trained file that holds a block's second convolution but not its first (or some of the context
    layers) cannot start the grown student as an identity: the part it lacks would start fresh after
    trained weights. It is refused, naming what is present and what is missing."""
    from types import SimpleNamespace

    from kd_tf.errors import InputError
    from kd_tf.model_io import save_model

    full = build_unet((4, 8), name="student", **student_kwargs)
    kept = [layer for layer in full.layers if layer.name != left_out]
    partial = SimpleNamespace(layers=kept, weights=[w for layer in kept for w in layer.weights])
    path = str(save_model(full, tmp_path / "partial.keras"))         # read for its digest only
    monkeypatch.setattr(jobs, "load_model", lambda _: partial)
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    with pytest.raises(InputError, match=rf"only part of .*missing: \['{left_out}'\]"):
        jobs.start_from_teacher(path, teacher, build_unet((4, 8), name="student", **student_kwargs), stream)


def test_the_same_network_continues_whatever_its_layers_are_named(teacher, batches, tmp_path):
    """A student file whose layers Keras named differently (auto-named layers count up per process) still
    continues: the same shapes in the same order take the weights in order."""
    from kd_tf.model_io import save_model

    renamed = keras.Sequential([keras.Input((None, None, 3))] + [
        keras.layers.Conv2D(4, 3, padding="same", name=f"other_{i}") for i in range(2)])
    plain = keras.Sequential([keras.Input((None, None, 3))] + [
        keras.layers.Conv2D(4, 3, padding="same", name=f"mine_{i}") for i in range(2)])
    path = str(save_model(renamed, tmp_path / "renamed.keras"))
    stream = tf.data.Dataset.from_tensor_slices((tf.concat(batches, 0), tf.concat(batches, 0))).batch(2)
    assert jobs.start_from_teacher(path, teacher, plain, stream)["from"] == path
    assert all(np.array_equal(a, b) for a, b in zip(renamed.get_weights(), plain.get_weights()))
