import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Runs and TensorBoard logs that a test leaves at their defaults go to a scratch folder, never into
# the repository's runs/ and tensorboard_logs/ (a user's TensorBoard would show them); subprocesses
# inherit it.
import atexit
import shutil
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="kd_tf-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["KD_TF_RUNS_DIR"] = os.path.join(_SCRATCH, "runs")
os.environ["KD_TF_LOG_DIR"] = os.path.join(_SCRATCH, "tensorboard_logs")
# No photo corpus (400 MB, `photos fetch`), as on a fresh machine: a developer's fetched corpus must
# not change what the tests run or how long they take. Tests of the corpus build their own.
os.environ["KD_TF_PHOTOS"] = os.path.join(_SCRATCH, "no_photo_corpus")

import numpy as np
import pytest

from kd_tf.denoise.nets import build_unet


@pytest.fixture(scope="session")
def tiny_teacher():
    return build_unet((8, 16), 1, name="teacher")


@pytest.fixture(scope="session")
def tiny_student():
    return build_unet((4, 8), 1, name="student")


@pytest.fixture(scope="session")
def photos():
    from kd_tf.images import default_photos

    return default_photos(["astronaut", "coins", "chelsea"])


@pytest.fixture(scope="session")
def context_unet():
    """Builds a global-context U-Net whose FiLM layers do something: a fresh one is the identity, so a
    test of what the context does needs kernels drawn at `kernel_std` (and biases moved by `bias_shift`)."""
    import keras

    def build(widths, context, kernel_std, bias_shift=0.0, seed=0, name="context"):
        keras.utils.set_random_seed(seed)
        model = build_unet(widths, 1, name=name, global_context=context)
        draws = np.random.default_rng(0)
        for layer in model.layers:
            if layer.name.startswith("film") and layer.weights:
                kernel, bias = layer.get_weights()
                layer.set_weights([draws.normal(0, kernel_std, kernel.shape).astype("float32"), bias + bias_shift])
        return model

    return build


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
