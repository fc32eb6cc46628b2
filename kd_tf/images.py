"""Images in, tf.data batches out: reading, the embedded photos, patches and noise.

Images inside kd_tf are float32 RGB in [0, 1], HxWx3 (NHWC once batched). OpenCV's
BGR order stays inside `read_image`. Noise sigma is on the 0-255 scale wherever a user
sees it and is divided by 255 here.

Task-neutral: the denoising task (Gaussian noise, the default) and the super-resolution task
(`degradation=Downscale(factor)`) read their photos, splits and patches here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from kd_tf.atomic import replace_durably
from kd_tf.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


ACCEPTED_IMAGES = ("PNG, JPEG, BMP, TIFF, WebP or PPM/PGM; 8 or 16 bit (float TIFF too); gray, RGB, RGBA "
                   "or palette")


class ImageReadError(InputError):
    """A file that kd_tf cannot use as an image; the message says what, where and what is accepted."""


def to_float_rgb(image: np.ndarray, keep_alpha: bool = False) -> np.ndarray:
    """Converts an OpenCV array (gray, BGR or BGRA; 8 or 16 bit; or float) to RGB float32 in [0, 1].

    With `keep_alpha` an alpha channel is returned as a fourth channel, otherwise dropped.
    Channels are reordered on the integer array and scaled in one pass, so a 10000x10000
    photo costs one float copy, not three.
    """
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1] if image.ndim == 3 else 0
    if channels not in (1, 3, 4):
        raise ImageReadError(f"unsupported layout {image.shape}; accepted: HxW, HxWx1, HxWx3 or HxWx4")
    order = {1: [0, 0, 0], 3: [2, 1, 0], 4: [2, 1, 0, 3] if keep_alpha else [2, 1, 0]}[channels]
    if image.dtype in (np.uint8, np.uint16):
        peak = np.float32(255.0 if image.dtype == np.uint8 else 65535.0)
        out = np.empty(image.shape[:2] + (len(order),), np.float32)
        for target, source in enumerate(order):          # per channel: no full-size integer temporary
            np.divide(image[..., source], peak, out=out[..., target], dtype=np.float32)
        return out
    if np.issubdtype(image.dtype, np.floating):
        out = image[..., order].astype(np.float32, copy=False)
        return np.clip(out, 0.0, 1.0, out=out)
    raise ImageReadError(f"unsupported pixel type {image.dtype}; accepted: uint8, uint16, float")


# ---------------------------------------------------------------------------------------------
# Decoding with OpenCV, plus the two things IMREAD_UNCHANGED does not do for us: say *why* a file
# is unreadable, and apply the EXIF orientation (IMREAD_UNCHANGED ignores it for JPEG, PNG, WebP).

_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"), (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"),
               (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"))


def _format_of(raw: bytes) -> str | None:
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if raw.startswith(magic)), None)


def _png_chunks(raw: bytes):
    """(type, data) of each PNG chunk; a chunk cut short ends the walk with type None."""
    position = 8
    while position + 8 <= len(raw):
        length = int.from_bytes(raw[position:position + 4], "big")
        kind = raw[position + 4:position + 8]
        if position + 12 + length > len(raw):
            yield None, b""
            return
        yield kind, raw[position + 8:position + 8 + length]
        if kind == b"IEND":
            return
        position += 12 + length
    yield None, b""


def _jpeg_segments(raw: bytes):
    """(marker, payload) of each JPEG header segment up to the first start-of-scan (0xDA)."""
    position = 2
    while position + 4 <= len(raw) and raw[position] == 0xFF:
        marker = raw[position + 1]
        if marker == 0xFF:                                 # fill byte
            position += 1
            continue
        length = int.from_bytes(raw[position + 2:position + 4], "big")
        yield marker, raw[position + 4:position + 2 + length]
        if marker == 0xDA:
            return
        position += 2 + length


def _webp_chunks(raw: bytes):
    position = 12
    while position + 8 <= len(raw):
        length = int.from_bytes(raw[position + 4:position + 8], "little")
        yield raw[position:position + 4], raw[position + 8:position + 8 + length]
        position += 8 + length + (length & 1)


def _why_unreadable(raw: bytes) -> str:
    """A human reason for a file OpenCV refused: text, truncated, unknown or corrupt."""
    kind = _format_of(raw)
    if kind == "PNG" and any(chunk is None for chunk, _ in _png_chunks(raw)):
        return f"the PNG is truncated ({len(raw)} bytes, it ends before its IEND chunk)"
    if kind == "JPEG":
        scan = raw.find(b"\xff\xda", 2)
        if scan < 0 or raw.find(b"\xff\xd9", scan) < 0:
            return f"the JPEG is truncated ({len(raw)} bytes, no end-of-image marker after its image data)"
    if kind is not None:
        return f"it looks like {kind} but OpenCV could not decode it (corrupt data or an unsupported variant)"
    text = raw[:64].decode("utf-8", "replace")
    if sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.9 * len(text):
        return f"it holds text, not image data (starts with {text[:24]!r})"
    return f"unknown format (starts with bytes {raw[:8].hex(' ')})"


def _tiff_orientation(block: bytes) -> int:
    """Tag 0x0112 of IFD0 in an EXIF (TIFF-structured) block; 1 when absent or malformed."""
    if block.startswith(b"Exif\x00\x00"):
        block = block[6:]
    if len(block) < 8 or block[:2] not in (b"II", b"MM"):
        return 1
    order = "little" if block[:2] == b"II" else "big"
    ifd = int.from_bytes(block[4:8], order)
    if ifd + 2 > len(block):
        return 1
    for index in range(int.from_bytes(block[ifd:ifd + 2], order)):
        entry = block[ifd + 2 + 12 * index:ifd + 14 + 12 * index]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == 0x0112:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def exif_orientation(raw: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, PNG (eXIf chunk) or WebP file; 1 if it has none.

    TIFF is not read here: OpenCV's TIFF decoder applies the orientation itself.
    """
    kind = _format_of(raw)
    if kind == "JPEG":
        blocks = (payload for marker, payload in _jpeg_segments(raw)
                  if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"))
    elif kind == "PNG":
        blocks = (data for chunk, data in _png_chunks(raw) if chunk == b"eXIf")
    elif kind == "WebP":
        blocks = (data for chunk, data in _webp_chunks(raw) if chunk == b"EXIF")
    else:
        return 1
    return next((_tiff_orientation(block) for block in blocks), 1)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned upright, as a viewer shows them (EXIF orientation 1-8)."""
    turned = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
              7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: a.swapaxes(0, 1)[::-1]}[orientation](image)
    return turned if orientation == 1 else np.ascontiguousarray(turned)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """The file as OpenCV decodes it (gray, BGR or BGRA; 8/16 bit), turned upright by its EXIF
    orientation; `ImageReadError` naming the file, the reason and what is accepted if it cannot."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a folder?); expected an image file")
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"{path}: cannot be read ({error.strerror or error})") from error
    if raw.size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes); accepted: {ACCEPTED_IMAGES}")
    try:
        image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:                         # e.g. more pixels than OpenCV allows
        raise ImageReadError(f"{path}: OpenCV refused it ({str(error).strip().splitlines()[-1]})") from error
    if image is None:
        raise ImageReadError(f"{path}: not a readable image: {_why_unreadable(raw.tobytes())}; "
                             f"accepted: {ACCEPTED_IMAGES}")
    orientation = exif_orientation(raw[:1 << 20].tobytes())    # EXIF sits in the header
    return apply_orientation(image, orientation)


def read_image(path: str | os.PathLike, keep_alpha: bool = False) -> np.ndarray:
    """Reads one image file with OpenCV as RGB(A) float32 in [0, 1], upright."""
    return to_float_rgb(decode_image(path), keep_alpha=keep_alpha)


def write_image(path: str | os.PathLike, image: np.ndarray, bit_depth: int = 8) -> None:
    """Writes a gray (HxW or HxWx1), RGB or RGBA float image in [0, 1] (format by extension).

    The file is written beside the target and renamed, so an interrupted write never leaves a
    half image and never destroys an earlier complete one; quantization runs in row blocks to
    keep a very large image's temporaries small.
    """
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth={bit_depth!r}; accepted: 8, 16")
    peak = np.float32(255.0 if bit_depth == 8 else 65535.0)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., ::-1]
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., [2, 1, 0, 3]]
    quantized = np.empty(array.shape, np.uint8 if bit_depth == 8 else np.uint16)
    for top in range(0, array.shape[0], 256):
        block = np.multiply(array[top:top + 256], peak, dtype=np.float32)
        np.clip(block, 0.0, peak, out=block)
        quantized[top:top + 256] = np.rint(block, out=block)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if not cv2.imwrite(str(temporary), quantized):
            raise OSError(f"OpenCV could not write {path} (unsupported extension {path.suffix!r}?)")
        replace_durably(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Creates `folder` if needed and proves it writable with a probe file, before any work
    is done, so that a read-only destination fails in one line instead of after the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".kd_tf_write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write to the {what} {str(folder)!r} ({error.strerror or error}); "
                              f"choose a folder you can write to") from error
    return folder


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted so that splits are reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(folder: str | os.PathLike, min_size: int = 0) -> dict[str, np.ndarray]:
    """Reads every image under `folder`; unreadable or too-small files are skipped and counted.

    Returns {relative path: image}. Raises if nothing usable is left, saying whether the folder
    held no image files at all or only unusable ones (and why the first one was refused).
    """
    root = Path(folder)
    files = list_image_files(root)
    if not files:
        others = sum(1 for p in root.rglob("*") if p.is_file())
        raise ImageReadError(f"no image files in {root} ({others} file(s) with other extensions); "
                             f"extensions accepted: {', '.join(IMAGE_EXTENSIONS)}")
    images, skipped = {}, []
    for path in files:
        try:
            image = read_image(path)
        except ImageReadError as error:
            skipped.append(str(error))
            continue
        if min(image.shape[:2]) < min_size:
            skipped.append(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than {min_size} px "
                           f"(the patch size) on a side")
            continue
        images[str(path.relative_to(root))] = image
    if skipped:
        log.warning("skipped %d of %d files in %s:\n  %s", len(skipped), len(files), root, "\n  ".join(skipped))
    if not images:
        raise ImageReadError(f"no readable images (of at least {min_size} px) in {root}: all {len(files)} "
                             f"image file(s) were skipped, e.g. {skipped[0]}")
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
        raise InputError(f"heldout_fraction={heldout_fraction!r}; accepted: 0 < value < 1")
    if len(images) < 2:
        raise InputError(f"need at least 2 images to split into train and held-out, got {len(images)}")
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


def quantize_8bit(image):
    """`to_8bit` inside a TensorFlow graph: clipped to [0, 1], rounded to 1/255.

    >>> quantize_8bit(tf.constant([-0.2, 0.5, 1.7])).numpy() * 255
    array([  0., 128., 255.], dtype=float32)
    """
    return tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0) / 255.0


def to_8bit(image: np.ndarray) -> np.ndarray:
    """An image as an 8-bit file holds it (clipped to [0, 1], rounded to 1/255), still float32.

    >>> to_8bit(np.array([-0.2, 0.5, 0.1234, 1.7], np.float32)) * 255
    array([  0., 128.,  31., 255.], dtype=float32)
    """
    return (np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def with_noise_level(noisy, sigma):
    """x for a Distiller whose teacher also takes the noise level: the student gets `noisy`, the
    teacher (noisy, sigma / 255). `sigma` (0-255 scale) is a number or one value per image.

    >>> x = with_noise_level(np.zeros((2, 8, 8, 3), np.float32), 25.0)
    >>> sorted(x), x["teacher_inputs"][1].shape, round(float(x["teacher_inputs"][1][0, 0]) * 255, 3)
    (['inputs', 'teacher_inputs'], (2, 1), 25.0)
    """
    if isinstance(noisy, np.ndarray):
        level = np.broadcast_to(np.reshape(np.asarray(sigma, np.float32) / 255.0, (-1, 1)), (len(noisy), 1)).copy()
    else:
        level = tf.cast(sigma, tf.float32) / 255.0
    return {"inputs": noisy, "teacher_inputs": (noisy, level)}


def noisy_copy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """A reproducible noisy version of one image (numpy in, numpy out) for evaluation."""
    return add_gaussian_noise(clean, sigma, [seed, 0]).numpy()


FLOAT_BANK_LIMIT = 2**28         # values (1 GiB of float32); a photo corpus above it is kept as 8-bit


def _pack(images):
    """Flattens images of different sizes into one tensor plus offsets, so crops stay in-graph.

    A bank above FLOAT_BANK_LIMIT values (the photo corpus: ~400 MP) is stored as uint8 and each
    crop converted back to float: 4x less memory, and a graph constant must stay under 2 GB. The
    corpus photos are 8-bit PNGs, so nothing is lost; smaller banks keep float32 exactly.
    """
    sizes = np.array([np.size(img) for img in images], np.int64)
    as_bytes = int(sizes.sum()) > FLOAT_BANK_LIMIT
    dtype = np.uint8 if as_bytes else np.float32
    arrays = [np.asarray(np.round(np.clip(img, 0, 1) * 255) if as_bytes else img, dtype) for img in images]
    shapes = np.array([a.shape[:2] for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    del arrays
    return tf.constant(flat), tf.constant(offsets), tf.constant(shapes), sizes


def patch_dataset(images, patch_size: int = 64, batch_size: int = 16,
                  sigma_range=(0.0, 55.0), seed: int = 0, augment: bool = True,
                  skip_batches: int = 0, noise_level_for_teacher: bool = False,
                  degradation=None, noisy_8bit: bool = False, min_scale: float = 1.0,
                  saturation_boost: float = 1.0, grey_fraction: float = 0.0) -> tf.data.Dataset:
    """An endless, seeded stream of (noisy, clean) patch batches.

    Images are sampled in proportion to their area; each patch gets a random crop, one of the
    8 flip/rot90 variants, and its own sigma drawn uniformly from `sigma_range` (blind
    denoising). Everything runs inside tf.data with parallel map and prefetch.

    `noise_level_for_teacher`: batches are ({"inputs": noisy, "teacher_inputs": (noisy, sigma)},
    clean) with each patch's sigma/255 of shape (1,), for a non-blind teacher (FFDNet) that
    teaches a blind student: the Distiller gives each model its own inputs (`with_noise_level`).

    `degradation` (a kd_tf.degradations.Degradation) replaces the noise: (degraded, clean) pairs
    for deblurring, JPEG artefacts or super-resolution (inputs `scale` times smaller than the
    clean patch, which must divide by it); `sigma_range` is then unused.

    `noisy_8bit`: the noisy patch is clipped to [0, 1] and rounded to 1/255, as a camera or an
    image file stores it and as the held-out photos are scored (`to_8bit`): clipping makes the
    noise biased near black and white, which a model trained on unclipped noise never sees.

    `min_scale` < 1: each patch shows its photo downscaled by a factor drawn log-uniformly in
    [min_scale, 1] (a window of patch_size / scale px, area-averaged to patch_size; at most the
    photo's shorter side). Photos of 4-8 MP hold little detail per pixel; the same scenes smaller
    give the dense detail of phone-sized and web images (DnCNN trains on 1x-0.7x copies).

    `saturation_boost` > 1: half the patches get their colours pushed away from each pixel's grey
    by a factor drawn uniformly in [1, saturation_boost], clipped to [0, 1], before the noise.
    Saturated colours put a channel at 0 or 1 over whole regions, where clipped 8-bit noise is
    biased, and colours that the photos hold few of (the 20.4 k-MAC student is 2 dB behind its
    teacher on synthetic gamut images, 0.24 dB on training photos: benchmarks.clipped_noise_bias).

    `grey_fraction` > 0: that fraction of the patches is made grey (each pixel's channel mean in all
    three channels) before the noise, which stays independent per channel. Black-and-white photos
    are common and the corpus holds none; on grey copies of the training photos the 20.4 k-MAC
    student is 0.33 dB behind its teacher at sigma 25, on the colour originals 0.24 dB
    (benchmarks/student_selection_grey.json).

    >>> from kd_tf.degradations import Downscale
    >>> image = np.random.default_rng(0).random((40, 40, 3)).astype("float32")
    >>> low, high = next(iter(patch_dataset([image], 16, 2, degradation=Downscale(2))))
    >>> tuple(low.shape), tuple(high.shape)
    ((2, 8, 8, 3), (2, 16, 16, 3))
    """
    images = list(images.values()) if isinstance(images, dict) else list(images)
    if not images:
        raise InputError("patch_dataset needs at least one image")
    low, high = (float(s) for s in sigma_range)
    if not 0.0 <= low <= high:
        raise InputError(f"sigma_range={sigma_range!r}; accepted: 0 <= low <= high (0-255 scale)")
    scale = getattr(degradation, "scale", 1)
    if patch_size % scale:
        raise InputError(f"patch_size={patch_size} is not divisible by the degradation's scale {scale}")
    if noise_level_for_teacher and degradation is not None:
        raise InputError("noise_level_for_teacher gives a noise level; it does not go with another degradation")
    if not 0.0 < float(min_scale) <= 1.0:
        raise InputError(f"min_scale={min_scale!r}; accepted: 0 < min_scale <= 1 (1: photos at their own scale)")
    if not float(saturation_boost) >= 1.0:
        raise InputError(f"saturation_boost={saturation_boost!r}; accepted: a factor >= 1 (1: colours as they are)")
    if not 0.0 <= float(grey_fraction) <= 1.0:
        raise InputError(f"grey_fraction={grey_fraction!r}; accepted: 0 <= fraction <= 1 (0: colours as they are)")
    too_small = [img.shape[:2] for img in images if min(img.shape[:2]) < patch_size]
    if too_small:
        raise InputError(f"{len(too_small)} image(s) are smaller than patch_size={patch_size}: {too_small[:5]}")
    flat, offsets, shapes, sizes = _pack(images)
    log_weights = tf.constant(np.log(sizes / sizes.sum())[None, :], tf.float32)

    def make_sample(element_seed):
        seeds = tf.random.experimental.stateless_split(tf.stack([element_seed, tf.constant(seed, tf.int64)]), 6)
        index = tf.random.stateless_categorical(log_weights, 1, seeds[0])[0, 0]
        height, width = shapes[index][0], shapes[index][1]
        image = tf.reshape(flat[offsets[index]:offsets[index] + height * width * 3], [height, width, 3])
        if min_scale < 1.0:
            scale_seed = tf.random.experimental.stateless_fold_in(seeds[1], 1)
            scale = tf.exp(tf.random.stateless_uniform([], scale_seed, float(np.log(min_scale)), 0.0))
            window = tf.minimum(tf.cast(tf.round(patch_size / scale), tf.int32),
                                tf.cast(tf.minimum(height, width), tf.int32))
            patch = tf.image.stateless_random_crop(image, tf.stack([window, window, 3]), seeds[1])
            if patch.dtype == tf.uint8:
                patch = tf.cast(patch, tf.float32) / 255.0
            patch = tf.image.resize(patch, [patch_size, patch_size], method="area")
        else:
            patch = tf.image.stateless_random_crop(image, [patch_size, patch_size, 3], seeds[1])
        if patch.dtype == tf.uint8:
            patch = tf.cast(patch, tf.float32) / 255.0
        if saturation_boost > 1.0:                  # its own seed: the stream is unchanged without it
            draw = tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(seeds[1], 2))
            factor = tf.where(draw[0] < 0.5, 1.0 + draw[1] * (float(saturation_boost) - 1.0), 1.0)
            grey = tf.reduce_mean(patch, axis=-1, keepdims=True)
            patch = tf.clip_by_value(grey + factor * (patch - grey), 0.0, 1.0)
        if grey_fraction > 0.0:                     # its own seed too
            draw = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seeds[1], 3))
            grey = tf.reduce_mean(patch, axis=-1, keepdims=True)
            patch = tf.where(draw < float(grey_fraction), grey, patch)   # [h, w, 1] broadcasts
        if augment:
            patch = tf.image.stateless_random_flip_left_right(patch, seeds[2])
            turns = tf.random.stateless_uniform([], seeds[3], 0, 4, dtype=tf.int32)
            patch = tf.image.rot90(patch, turns)
        if degradation is not None:
            return degradation.apply(patch, seeds[5]), patch
        sigma = tf.random.stateless_uniform([], seeds[4], low, high) if high > low else tf.constant(low)
        noisy = add_gaussian_noise(patch, sigma, seeds[5])
        if noisy_8bit:
            noisy = quantize_8bit(noisy)
        if noise_level_for_teacher:
            return with_noise_level(noisy, tf.reshape(sigma, [1])), patch
        return noisy, patch

    return (tf.data.Dataset.random(seed=seed)
            .skip(skip_batches * batch_size)         # a resumed run continues the very same stream
            .map(make_sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def most_textured_window(image: np.ndarray, size: int, stride: int = 64) -> np.ndarray:
    """The size x size window (on a `stride` grid) with the largest mean gradient magnitude, the
    whole image if it is smaller: a fixed, content-chosen crop for scoring large photos.

    >>> flat = np.zeros((256, 256, 3), np.float32); flat[200:, 200:] = np.indices((56, 56)).sum(0)[..., None] % 2
    >>> crop = most_textured_window(flat, 64); crop.shape, float(crop.mean()) > 0.2
    ((64, 64, 3), True)
    """
    height, width = image.shape[:2]
    if height <= size and width <= size:
        return image
    size_h, size_w = min(size, height), min(size, width)
    gray = image.mean(axis=-1)
    energy = np.abs(np.diff(gray, axis=0, append=gray[-1:])) + np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = -1.0, (0, 0)
    for top in sorted({*range(0, height - size_h + 1, stride), height - size_h}):
        for left in sorted({*range(0, width - size_w + 1, stride), width - size_w}):
            total = (integral[top + size_h, left + size_w] - integral[top, left + size_w]
                     - integral[top + size_h, left] + integral[top, left])
            if total > best:
                best, where = total, (top, left)
    top, left = where
    return image[top:top + size_h, left:left + size_w]


def fixed_crops(images, crop_size: int = 128, per_image: int = 4, sigma: float = 25.0,
                seed: int = 1234, noisy_8bit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (noisy, clean) crops of held-out images, for validation and image grids.

    Crops are spread over each image on a grid so that they cover different content;
    `noisy_8bit` clips and rounds the noisy crops to 8 bits, as patch_dataset does.
    """
    images = list(images.values()) if isinstance(images, dict) else list(images)
    cleans = []
    for image in images:
        height, width = image.shape[:2]
        size = min(crop_size, height, width)
        size -= size % 16                        # divisible by a 5-level or half-resolution U-Net's stride
        ys = np.linspace(0, height - size, num=per_image).astype(int)
        xs = np.linspace(0, width - size, num=per_image).astype(int)[::-1]
        cleans.extend(image[y:y + size, x:x + size] for y, x in zip(ys, xs))
    sizes = {c.shape for c in cleans}
    if len(sizes) != 1:
        side = min(min(s[:2]) for s in sizes)
        cleans = [c[:side, :side] for c in cleans]
    clean = np.stack(cleans).astype(np.float32)
    noisy = add_gaussian_noise(clean, sigma, [seed, 1])
    return (quantize_8bit(noisy) if noisy_8bit else noisy).numpy(), clean
