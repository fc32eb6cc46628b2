import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import pytest

from kd_tf.nets import build_unet


@pytest.fixture(scope="session")
def tiny_teacher():
    return build_unet((8, 16), 1, name="teacher")


@pytest.fixture(scope="session")
def tiny_student():
    return build_unet((4, 8), 1, name="student")


@pytest.fixture(scope="session")
def photos():
    from kd_tf.data import default_photos

    return default_photos(["astronaut", "coins", "chelsea"])


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
