"""A training killed at each point of its checkpoint write resumes with the data stream and the
weights of the same epoch: the kill is injected at that exact point (no timing), and the resumed
run must end with the weights of an uninterrupted one. docs/FAULTS.md lists what each kept."""

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import distribute
from kd_tf.runs import resumed_batches

EPOCHS, PER_EPOCH, KILLED_SAVE = 4, 3, 3          # the kill hits the checkpoint written after epoch 3


class Killed(BaseException):
    """What SIGKILL leaves: nothing after the injection point runs (no except/finally of kd_tf catches it)."""


def _stream(skip):
    """Batch k is a function of k alone, so a stream that restarts at the wrong batch changes the weights."""
    def batch(k):
        seed = tf.stack([k, tf.constant(7, tf.int64)])
        x = tf.random.stateless_normal((2, 4), seed)
        return x, tf.reduce_sum(x * [1.0, -2.0, 0.5, 3.0], axis=1, keepdims=True)
    return tf.data.Dataset.range(10 ** 6).skip(skip).map(batch)


def _train(backup: Path):
    """One run of the job pattern: the offset from resumed_batches, then fit with BackupAndRestore."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(_stream(resumed_batches(backup, PER_EPOCH)), epochs=EPOCHS, steps_per_epoch=PER_EPOCH, verbose=0,
              callbacks=[distribute.BackupAndRestore(str(backup), delete_checkpoint=False, double_checkpoint=True)])
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _train(tmp_path_factory.mktemp("uninterrupted") / "backup")
    return model.get_weights(), int(model.optimizer.iterations.numpy())


def _newest_weights(backup: Path) -> Path:
    return max(backup.glob("*.weights.h5*"), key=lambda p: (p.stat().st_mtime_ns, p.name))


def _kill_in_save_weights(monkeypatch, truncate=False):
    """Kills the KILLED_SAVE-th model.save_weights call right after its write (or half-way through it)."""
    real, calls = keras.Model.save_weights, []

    def save_weights(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) < KILLED_SAVE:
            return real(self, filepath, *args, **kwargs)
        real(self, filepath, *args, **kwargs)
        if truncate:
            Path(filepath).write_bytes(Path(filepath).read_bytes()[:Path(filepath).stat().st_size // 2])
        raise Killed(f"killed after writing {filepath}")
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)


def _resume_and_compare(backup, reference, caplog):
    weights, iterations = reference
    with caplog.at_level(logging.INFO):
        model = _train(backup)
    assert int(model.optimizer.iterations.numpy()) == iterations, "steps run != steps asked"
    for got, expected in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    return caplog.text


def test_killed_half_way_through_the_weights_write(tmp_path, monkeypatch, reference, caplog):
    backup = tmp_path / "backup"
    _kill_in_save_weights(monkeypatch, truncate=True)
    with pytest.raises(Killed):
        _train(backup)
    monkeypatch.undo()
    assert "after epoch 2" in _resume_and_compare(backup, reference, caplog)       # epoch 3 is redone


def test_killed_between_the_weights_write_and_the_epoch_record(tmp_path, monkeypatch, reference, caplog):
    backup = tmp_path / "backup"
    _kill_in_save_weights(monkeypatch)
    with pytest.raises(Killed):
        _train(backup)
    monkeypatch.undo()
    _resume_and_compare(backup, reference, caplog)          # no epoch run twice, none skipped


def test_killed_during_the_epoch_record_write(tmp_path, monkeypatch, reference, caplog):
    """The record write is torn by hand: on disk, half of training_metadata.json."""
    backup = tmp_path / "backup"
    _train_partially(backup, epochs=3)
    metadata = backup / "training_metadata.json"
    metadata.write_text(metadata.read_text()[:7])
    text = _resume_and_compare(backup, reference, caplog)
    assert "after epoch 3" in text


def test_a_corrupt_newest_checkpoint_falls_back_with_data_and_weights_together(tmp_path, reference, caplog):
    backup = tmp_path / "backup"
    _train_partially(backup, epochs=3)
    newest = _newest_weights(backup)
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 3])
    text = _resume_and_compare(backup, reference, caplog)
    assert "after epoch 2" in text and "WARNING" in text


def _train_partially(backup, epochs):
    """The run as a kill right after epoch `epochs`'s checkpoint leaves it."""
    global EPOCHS
    kept, EPOCHS = EPOCHS, epochs
    try:
        _train(backup)
    finally:
        EPOCHS = kept


def test_killed_in_the_epoch_record_write_after_the_weights_are_committed(tmp_path, monkeypatch, reference, caplog):
    from kd_tf import callbacks

    backup, calls = tmp_path / "backup", []
    real = callbacks.write_text_atomically

    def torn(path, text):
        calls.append(path)
        if len(calls) < KILLED_SAVE:
            return real(path, text)
        Path(path).with_name(f".{Path(path).name}.partial").write_text(text[:5])
        raise Killed("killed while writing the epoch record")
    monkeypatch.setattr(callbacks, "write_text_atomically", torn)
    with pytest.raises(Killed):
        _train(backup)
    monkeypatch.undo()
    assert "after epoch 3" in _resume_and_compare(backup, reference, caplog)      # epoch 3 is kept


def test_killed_while_removing_old_checkpoints(tmp_path, monkeypatch, reference, caplog):
    backup, real = tmp_path / "backup", Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.startswith("epoch-"):
            raise Killed("killed while pruning")
        return real(self, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        _train(backup)                                  # the first prune is after epoch 3's checkpoint
    monkeypatch.undo()
    assert "after epoch 3" in _resume_and_compare(backup, reference, caplog)


def test_a_run_checkpointed_by_keras_own_callback_resumes_and_survives_a_torn_record(tmp_path, reference, caplog):
    """Runs started before this layout (latest.weights.h5 + training_metadata.json, .bkp copies)."""
    backup = tmp_path / "backup"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(_stream(0), epochs=3, steps_per_epoch=PER_EPOCH, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False, double_checkpoint=True)])
    metadata = backup / "training_metadata.json"
    metadata.write_text(metadata.read_text()[:6])       # Keras writes it in place: a kill can tear it
    text = _resume_and_compare(backup, reference, caplog)
    assert "after epoch 2" in text and "unreadable" in text        # the .bkp pair, weights and epoch together
