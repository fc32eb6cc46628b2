"""Offline distillation: cached teacher outputs give the same losses as the live teacher."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distiller import Distiller
from kd_tf.teacher_cache import INPUTS_KEY, TEACHER_OUTPUTS_KEY, cache_teacher_outputs


class CountingTeacher(keras.Model):
    """The tiny teacher, counting its forward passes (Python side effects run once per trace,
    so calls are counted in a tf.Variable)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = tf.Variable(0, trainable=False)

    def call(self, x, training=False):
        self.calls.assign_add(1)
        return self.inner(x, training=training)


def _batches(rng, count, size=16):
    noisy = rng.random((count, 2, size, size, 3)).astype("float32")
    clean = rng.random((count, 2, size, size, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((noisy, clean))


def test_cache_holds_teacher_outputs_once_per_input(tiny_teacher, rng):
    cache = cache_teacher_outputs(tiny_teacher, _batches(rng, 3), num_batches=3)
    assert len(cache) == 6 and cache.inputs.dtype == np.float16
    expected = tiny_teacher(cache.inputs.astype("float32"), training=False).numpy()
    # float16 keeps 11 significant bits (relative spacing 2**-10), and the cache's batches of 2 may
    # round differently from one batch of 6: a relative tolerance, not an absolute one.
    np.testing.assert_allclose(cache.teacher_outputs.astype("float32"), expected, rtol=2e-3, atol=1e-3)
    with pytest.raises(ValueError, match="num_batches"):
        cache_teacher_outputs(tiny_teacher, _batches(rng, 1), num_batches=0)


def test_augmentation_transforms_input_output_and_target_together(tiny_teacher, rng):
    """The same flip/rotation must reach all three tensors, or the student learns a wrong map."""
    cache = cache_teacher_outputs(tiny_teacher, _batches(rng, 2), num_batches=2)
    cache.teacher_outputs = cache.inputs.copy()          # make the pairing visible
    cache.targets = cache.inputs.copy()
    seen = set()
    for inputs, targets in cache.dataset(batch_size=2, seed=3).take(16):
        np.testing.assert_array_equal(inputs[INPUTS_KEY].numpy(), inputs[TEACHER_OUTPUTS_KEY].numpy())
        np.testing.assert_array_equal(inputs[INPUTS_KEY].numpy(), targets.numpy())
        seen.add(inputs[INPUTS_KEY].numpy().tobytes())
    assert len(seen) > 4                                  # reshuffled and augmented, not one batch repeated
    first = [x[INPUTS_KEY].numpy() for x, _ in cache.dataset(2, seed=3).take(3)]
    again = [x[INPUTS_KEY].numpy() for x, _ in cache.dataset(2, seed=3).take(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))     # seeded


def test_cached_step_matches_live_step_without_running_the_teacher(tiny_teacher, tiny_student, rng):
    x = rng.random((4, 16, 16, 3)).astype("float32")
    y = rng.random((4, 16, 16, 3)).astype("float32")
    counting = CountingTeacher(tiny_teacher)
    live = Distiller(counting, tiny_student, student_loss_weight=0.6, probe_size=16)
    live.compile(optimizer=keras.optimizers.SGD(0.0))
    live_logs = live.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)

    calls_before = int(counting.calls.numpy())
    cached = {INPUTS_KEY: x, TEACHER_OUTPUTS_KEY: tiny_teacher(x, training=False).numpy()}
    cached_logs = live.evaluate(cached, y, batch_size=4, verbose=0, return_dict=True)
    assert int(counting.calls.numpy()) == calls_before
    for key in ("loss", "distill", "own", "psnr"):
        assert cached_logs[key] == pytest.approx(live_logs[key], rel=1e-5)
    np.testing.assert_allclose(live.predict(cached, verbose=0), live.predict(x, verbose=0), atol=1e-6)


def test_cached_outputs_refuse_feature_terms(tiny_teacher, tiny_student, rng):
    x = rng.random((2, 16, 16, 3)).astype("float32")
    distiller = Distiller(tiny_teacher, tiny_student, features=[("enc0", "enc0")], probe_size=16)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    cached = {INPUTS_KEY: x, TEACHER_OUTPUTS_KEY: x}
    with pytest.raises(ValueError, match="live teacher"):
        distiller.train_on_batch(cached, x)


def test_offline_distillation_learns(tiny_teacher, rng):
    """A few hundred cached steps move the student toward the teacher."""
    from kd_tf.denoise.nets import build_unet

    keras.utils.set_random_seed(0)
    student = build_unet((4, 8), 1, name="student_offline")
    cache = cache_teacher_outputs(tiny_teacher, _batches(rng, 8), num_batches=8)
    distiller = Distiller(tiny_teacher, student, student_loss_weight=0.0, probe_size=16)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    probe = {INPUTS_KEY: cache.inputs.astype("float32"), TEACHER_OUTPUTS_KEY: cache.teacher_outputs.astype("float32")}
    before = distiller.evaluate(probe, cache.targets.astype("float32"), verbose=0, return_dict=True)["distill"]
    distiller.fit(cache.dataset(4, seed=0), epochs=2, steps_per_epoch=60, verbose=0)
    after = distiller.evaluate(probe, cache.targets.astype("float32"), verbose=0, return_dict=True)["distill"]
    assert after < 0.7 * before      # 0.37-0.55 seen, depending on the session teacher's random weights


def test_a_teacher_that_outputs_the_targets_trains_exactly_as_the_own_loss(tiny_teacher, rng):
    """The control behind the distillation-gain benchmark's reading: with the cached teacher outputs
    replaced by the clean targets, student_loss_weight 0.5 trains the very same student as the own
    loss alone (weight 1), so a gap between the two arms is the teacher's targets, not the Distiller."""
    import dataclasses

    from kd_tf.denoise.nets import build_unet

    cache = cache_teacher_outputs(tiny_teacher, _batches(rng, 4), num_batches=4)
    clean_teacher = dataclasses.replace(cache, teacher_outputs=cache.targets.copy())
    trained = {}
    for label, bank, weight in (("own", cache, 1.0), ("targets as teacher", clean_teacher, 0.5),
                                ("teacher", cache, 0.5)):
        keras.utils.set_random_seed(3)
        student = build_unet((4, 8), 1, name="student_control")
        distiller = Distiller(tiny_teacher, student, student_loss_weight=weight, probe_size=16)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
        distiller.fit(bank.dataset(2, seed=0), epochs=1, steps_per_epoch=6, verbose=0)
        trained[label] = student.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(trained["own"], trained["targets as teacher"]))
    assert not all(np.allclose(a, b) for a, b in zip(trained["own"], trained["teacher"]))   # the outputs matter


def test_the_stream_reads_the_bank_in_place_and_can_serve_it_unaugmented():
    """from_tensor_slices copied the whole bank into the dataset's graph (twice the memory at the
    peak, benchmarks/teacher_cache_memory.json); the stream reads it by index instead."""
    from kd_tf.teacher_cache import TeacherCache

    rng = np.random.default_rng(0)
    bank = [rng.random((256, 32, 32, 3)).astype(np.float16) for _ in range(3)]
    bank[0][:, 0, 0, 0] = np.arange(256) / 256                            # a tag per sample (exact in float16)
    cache = TeacherCache(*bank, seconds=0.0)
    graph = cache.dataset(4, seed=0)._as_serialized_graph().numpy()
    assert len(graph) < cache.nbytes / 100, f"the stream's graph holds {len(graph)} bytes: a copy of the bank"
    x, y = next(iter(cache.dataset(256, seed=1, augment=False)))
    served = np.round(x[INPUTS_KEY].numpy()[:, 0, 0, 0] * 256).astype(int)   # which sample each one is
    assert sorted(served) == list(range(256))                               # each once, not flipped or turned
    np.testing.assert_array_equal(x[INPUTS_KEY].numpy(), bank[0][served].astype(np.float32))
    np.testing.assert_array_equal(x[TEACHER_OUTPUTS_KEY].numpy(), bank[1][served].astype(np.float32))
    np.testing.assert_array_equal(y.numpy(), bank[2][served].astype(np.float32))
