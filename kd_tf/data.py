"""Images in, tf.data batches out: reading, the embedded photos, patches and noise.

Images inside kd_tf are float32 RGB in [0, 1], HxWx3 (NHWC once batched). OpenCV's
BGR order stays inside `read_image`. Noise sigma is on the 0-255 scale wherever a user
sees it and is divided by 255 here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


class ImageReadError(ValueError):
    """A file that OpenCV cannot decode as an image."""


def to_float_rgb(image: np.ndarray, keep_alpha: bool = False) -> np.ndarray:
    """Converts an OpenCV array (gray, BGR or BGRA; 8 or 16 bit; or float) to RGB float32 in [0, 1].

    With `keep_alpha` an alpha channel is returned as a fourth channel, otherwise dropped.
    """
    if image.dtype == np.uint8:
        scaled = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        scaled = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        scaled = np.clip(image.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageReadError(f"unsupported pixel type {image.dtype}; accepted: uint8, uint16, float")
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    channels = scaled.shape[-1]
    if channels == 1:
        rgb, alpha = np.repeat(scaled, 3, axis=-1), None
    elif channels == 3:
        rgb, alpha = scaled[..., ::-1], None
    elif channels == 4:
        rgb, alpha = scaled[..., 2::-1], scaled[..., 3:]
    else:
        raise ImageReadError(f"unsupported channel count {channels}; accepted: 1, 3, 4")
    if keep_alpha and alpha is not None:
        return np.ascontiguousarray(np.concatenate([rgb, alpha], axis=-1))
    return np.ascontiguousarray(rgb)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """The file as OpenCV decodes it (gray, BGR or BGRA; 8/16 bit); `ImageReadError` if it cannot."""
    raw = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if raw is None or raw.size == 0:
        raise ImageReadError(f"{path}: missing or empty file")
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{path}: OpenCV could not decode it")
    return image


def read_image(path: str | os.PathLike, keep_alpha: bool = False) -> np.ndarray:
    """Reads one image file with OpenCV as RGB(A) float32 in [0, 1]."""
    return to_float_rgb(decode_image(path), keep_alpha=keep_alpha)


def write_image(path: str | os.PathLike, image: np.ndarray, bit_depth: int = 8) -> None:
    """Writes a gray (HxW or HxWx1), RGB or RGBA float image in [0, 1] (format by extension)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth={bit_depth!r}; accepted: 8, 16")
    peak = 255.0 if bit_depth == 8 else 65535.0
    array = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., ::-1]
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., [2, 1, 0, 3]]
    quantized = np.round(array * peak).astype(np.uint8 if bit_depth == 8 else np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), quantized):
        raise OSError(f"OpenCV could not write {path}")


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted so that splits are reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(folder: str | os.PathLike, min_size: int = 0) -> dict[str, np.ndarray]:
    """Reads every image under `folder`; unreadable or too-small files are skipped and counted.

    Returns {relative path: image}. Raises if nothing usable is left.
    """
    root = Path(folder)
    images, skipped = {}, []
    for path in list_image_files(root):
        try:
            image = read_image(path)
        except ImageReadError as error:
            skipped.append(str(error))
            continue
        if min(image.shape[:2]) < min_size:
            skipped.append(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than {min_size} px")
            continue
        images[str(path.relative_to(root))] = image
    if skipped:
        log.warning("skipped %d of %d files in %s:\n  %s", len(skipped), len(skipped) + len(images),
                    root, "\n  ".join(skipped))
    if not images:
        raise ImageReadError(f"no readable images (of at least {min_size} px) in {root}; "
                             f"extensions accepted: {', '.join(IMAGE_EXTENSIONS)}")
    return images


# ---------------------------------------------------------------------------------------------
# The embedded default: real photographs shipped inside packages that requirements.txt installs.

def _skimage_file(name):
    import skimage
    return Path(skimage.__file__).parent / "data" / name


def _sklearn_file(name):
    import sklearn
    return Path(sklearn.__file__).parent / "datasets" / "images" / name


def _matplotlib_file(name):
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / name


def _pywt_array(name):
    import pywt
    with np.load(Path(pywt.__file__).parent / "data" / f"{name}.npz") as archive:
        return to_float_rgb(archive["data"])


_PHOTO_SOURCES = {
    # training photographs
    "astronaut": lambda: read_image(_skimage_file("astronaut.png")),
    "rocket": lambda: read_image(_skimage_file("rocket.jpg")),
    "hubble_deep_field": lambda: read_image(_skimage_file("hubble_deep_field.jpg")),
    "motorcycle_left": lambda: read_image(_skimage_file("motorcycle_left.png")),
    "motorcycle_right": lambda: read_image(_skimage_file("motorcycle_right.png")),
    "ihc": lambda: read_image(_skimage_file("ihc.png")),
    "retina": lambda: read_image(_skimage_file("retina.jpg")),
    "brick": lambda: read_image(_skimage_file("brick.png")),
    "grass": lambda: read_image(_skimage_file("grass.png")),
    "gravel": lambda: read_image(_skimage_file("gravel.png")),
    "moon": lambda: read_image(_skimage_file("moon.png")),
    "coins": lambda: read_image(_skimage_file("coins.png")),
    "page": lambda: read_image(_skimage_file("page.png")),
    "china": lambda: read_image(_sklearn_file("china.jpg")),
    "aero": lambda: _pywt_array("aero"),
    "ascent": lambda: _pywt_array("ascent"),
    # held-out photographs (never cropped for training)
    "chelsea": lambda: read_image(_skimage_file("chelsea.png")),
    "coffee": lambda: read_image(_skimage_file("coffee.png")),
    "camera": lambda: read_image(_skimage_file("camera.png")),
    "flower": lambda: read_image(_sklearn_file("flower.jpg")),
    "grace_hopper": lambda: read_image(_matplotlib_file("grace_hopper.jpg")),
}
DEFAULT_HELDOUT = ("chelsea", "coffee", "camera", "flower", "grace_hopper")
DEFAULT_TRAIN = tuple(name for name in _PHOTO_SOURCES if name not in DEFAULT_HELDOUT)


def default_photos(names=None) -> dict[str, np.ndarray]:
    """The embedded photographs by name (all of them when `names` is None)."""
    names = list(_PHOTO_SOURCES) if names is None else list(names)
    unknown = [n for n in names if n not in _PHOTO_SOURCES]
    if unknown:
        raise KeyError(f"unknown embedded photo(s) {unknown}; available: {sorted(_PHOTO_SOURCES)}")
    return {name: _PHOTO_SOURCES[name]() for name in names}


@dataclasses.dataclass
class ImageSplit:
    """Whole images assigned to training or held out (validation and the evaluation report)."""

    train: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]


def split_images(images: dict[str, np.ndarray], heldout_fraction: float = 0.2,
                 seed: int = 0) -> ImageSplit:
    """Splits by whole image, never by patch, so no held-out pixel is ever trained on."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction!r}; accepted: 0 < value < 1")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to split into train and held-out, got {len(images)}")
    names = sorted(images)
    order = np.random.default_rng(seed).permutation(len(names))
    n_heldout = min(len(names) - 1, max(1, round(heldout_fraction * len(names))))
    heldout = {names[i] for i in order[:n_heldout]}
    return ImageSplit(train={n: images[n] for n in names if n not in heldout},
                      heldout={n: images[n] for n in names if n in heldout})


def load_split(data_dir: str | None = None, heldout_fraction: float = 0.2, seed: int = 0,
               min_size: int = 0) -> ImageSplit:
    """The embedded photos with their documented split, or a user's folder split by image."""
    if data_dir is None:
        return ImageSplit(train=default_photos(DEFAULT_TRAIN), heldout=default_photos(DEFAULT_HELDOUT))
    return split_images(read_image_folder(data_dir, min_size=min_size), heldout_fraction, seed)


# ---------------------------------------------------------------------------------------------
# Noise and tf.data pipelines.

def add_gaussian_noise(clean, sigma, seed):
    """AWGN with `sigma` on the 0-255 scale; stateless, so the same seed gives the same noise.

    The noisy image is not clipped, matching the usual AWGN benchmark protocol.
    """
    clean = tf.convert_to_tensor(clean, tf.float32)
    noise = tf.random.stateless_normal(tf.shape(clean), seed=seed, dtype=tf.float32)
    return clean + tf.cast(sigma, tf.float32) / 255.0 * noise


def noisy_copy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """A reproducible noisy version of one image (numpy in, numpy out) for evaluation."""
    return add_gaussian_noise(clean, sigma, [seed, 0]).numpy()


def _pack(images):
    """Flattens images of different sizes into one tensor plus offsets, so crops stay in-graph."""
    arrays = [np.asarray(img, np.float32) for img in images]
    shapes = np.array([a.shape[:2] for a in arrays], np.int64)
    sizes = np.array([a.size for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    return tf.constant(flat), tf.constant(offsets), tf.constant(shapes), sizes


def patch_dataset(images, patch_size: int = 64, batch_size: int = 16,
                  sigma_range=(0.0, 55.0), seed: int = 0, augment: bool = True) -> tf.data.Dataset:
    """An endless, seeded stream of (noisy, clean) patch batches.

    Images are sampled in proportion to their area; each patch gets a random crop, one of the
    8 flip/rot90 variants, and its own sigma drawn uniformly from `sigma_range` (blind
    denoising). Everything runs inside tf.data with parallel map and prefetch.
    """
    images = list(images.values()) if isinstance(images, dict) else list(images)
    if not images:
        raise ValueError("patch_dataset needs at least one image")
    low, high = (float(s) for s in sigma_range)
    if not 0.0 <= low <= high:
        raise ValueError(f"sigma_range={sigma_range!r}; accepted: 0 <= low <= high (0-255 scale)")
    too_small = [img.shape[:2] for img in images if min(img.shape[:2]) < patch_size]
    if too_small:
        raise ValueError(f"{len(too_small)} image(s) are smaller than patch_size={patch_size}: {too_small[:5]}")
    flat, offsets, shapes, sizes = _pack(images)
    log_weights = tf.constant(np.log(sizes / sizes.sum())[None, :], tf.float32)

    def make_sample(element_seed):
        seeds = tf.random.experimental.stateless_split(tf.stack([element_seed, tf.constant(seed, tf.int64)]), 6)
        index = tf.random.stateless_categorical(log_weights, 1, seeds[0])[0, 0]
        height, width = shapes[index][0], shapes[index][1]
        image = tf.reshape(flat[offsets[index]:offsets[index] + height * width * 3], [height, width, 3])
        patch = tf.image.stateless_random_crop(image, [patch_size, patch_size, 3], seeds[1])
        if augment:
            patch = tf.image.stateless_random_flip_left_right(patch, seeds[2])
            turns = tf.random.stateless_uniform([], seeds[3], 0, 4, dtype=tf.int32)
            patch = tf.image.rot90(patch, turns)
        sigma = tf.random.stateless_uniform([], seeds[4], low, high) if high > low else tf.constant(low)
        return add_gaussian_noise(patch, sigma, seeds[5]), patch

    return (tf.data.Dataset.random(seed=seed)
            .map(make_sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def fixed_crops(images, crop_size: int = 128, per_image: int = 4, sigma: float = 25.0,
                seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (noisy, clean) crops of held-out images, for validation and image grids.

    Crops are spread over each image on a grid so that they cover different content.
    """
    images = list(images.values()) if isinstance(images, dict) else list(images)
    cleans = []
    for image in images:
        height, width = image.shape[:2]
        size = min(crop_size, height, width)
        size -= size % 8
        ys = np.linspace(0, height - size, num=per_image).astype(int)
        xs = np.linspace(0, width - size, num=per_image).astype(int)[::-1]
        cleans.extend(image[y:y + size, x:x + size] for y, x in zip(ys, xs))
    sizes = {c.shape for c in cleans}
    if len(sizes) != 1:
        side = min(min(s[:2]) for s in sizes)
        cleans = [c[:side, :side] for c in cleans]
    clean = np.stack(cleans).astype(np.float32)
    noisy = add_gaussian_noise(clean, sigma, [seed, 1]).numpy()
    return noisy, clean
