"""Running any exported denoiser (.keras, .h5, SavedModel, .tflite) on images of any size.

Dynamic-shape models see the whole image, reflect-padded to the network's stride. Fixed-shape
models (a TFLite file converted for one input size) run tile by tile with overlap, and the
tiles are blended with a linear ramp so that no seam shows. Gray images are denoised as RGB and
written back as gray; an alpha channel is kept untouched; 16-bit files stay 16-bit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from kd_tf.data import ImageReadError, decode_image, list_image_files, to_float_rgb, write_image
from kd_tf.export import LiteRTModel
from kd_tf.model_io import load_model

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Runner:
    """A model callable on float32 NHWC batches, with what tiling needs to know about it."""

    predict: callable
    stride: int = 8                      # H and W must be multiples of this
    tile: int | None = None              # the fixed input side of a fixed-shape model
    source: str = ""


def load_runner(path: str | os.PathLike, num_threads: int = 1, stride: int = 8) -> Runner:
    """Loads .keras/.h5/SavedModel with Keras, .tflite with the LiteRT interpreter."""
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        if not path.is_file():
            raise FileNotFoundError(f"model {str(path)!r} does not exist")
        model = LiteRTModel(path, num_threads=num_threads)
        _, height, width, _ = model.input_signature
        if (height == -1) != (width == -1) or (height != -1 and height != width):
            raise ValueError(f"{path}: input shape {model.input_signature}; expected square tiles or dynamic H and W")
        return Runner(model, stride, None if height == -1 else height, str(path))
    model = load_model(path)
    return Runner(lambda batch: np.asarray(model(batch, training=False)), stride, None, str(path))


def _pad_to(image, height, width):
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < image.shape[0] and pad_w < image.shape[1] else "symmetric"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _starts(length, tile, step):
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _ramp(tile, overlap):
    """1-D blending weights: near zero on the outer quarter of the overlap, where a tile's
    zero padding corrupts the output, then rising linearly; never exactly zero."""
    weights = np.ones(tile, np.float32)
    if overlap > 0:
        dead = overlap // 4
        rise = np.full(overlap, 1e-3, np.float32)
        rise[dead:] = np.maximum(1e-3, (np.arange(overlap - dead, dtype=np.float32) + 0.5) / (overlap - dead))
        weights[:overlap] = rise
        weights[-overlap:] = rise[::-1]
    return weights


def run_rgb(runner: Runner, image: np.ndarray, overlap: int = 32) -> np.ndarray:
    """Denoises one HxWx3 float image of any size."""
    height, width = image.shape[:2]
    if runner.tile is None:
        stride = runner.stride
        padded = _pad_to(image, -(-height // stride) * stride, -(-width // stride) * stride)
        return runner.predict(padded[None].astype(np.float32))[0, :height, :width]
    tile = runner.tile
    overlap = min(overlap, tile // 2)
    margin = min(overlap // 2, height - 1, width - 1)     # image borders get reflected context too
    framed = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    padded = _pad_to(framed, max(framed.shape[0], tile), max(framed.shape[1], tile))
    total = np.zeros(padded.shape, np.float32)
    weight = np.zeros(padded.shape[:2] + (1,), np.float32)
    window = np.outer(_ramp(tile, overlap), _ramp(tile, overlap))[..., None]
    for top in _starts(padded.shape[0], tile, tile - overlap):
        for left in _starts(padded.shape[1], tile, tile - overlap):
            crop = padded[top:top + tile, left:left + tile]
            total[top:top + tile, left:left + tile] += runner.predict(crop[None].astype(np.float32))[0] * window
            weight[top:top + tile, left:left + tile] += window
    return (total / weight)[margin:margin + height, margin:margin + width]


def denoise_array(runner: Runner, raw: np.ndarray, overlap: int = 32) -> np.ndarray:
    """Denoises an OpenCV-decoded array; returns float in [0, 1] with the input's channel layout
    (gray stays gray, RGBA keeps its alpha), RGB order."""
    image = to_float_rgb(raw, keep_alpha=True)
    rgb, alpha = image[..., :3], image[..., 3:]
    out = np.clip(run_rgb(runner, rgb, overlap), 0.0, 1.0)
    if raw.ndim == 2 or raw.shape[-1] == 1:
        return out.mean(axis=-1, keepdims=True)
    return np.concatenate([out, alpha], axis=-1) if alpha.size else out


def denoise_path(model: str | os.PathLike, source: str | os.PathLike, output_dir: str | os.PathLike,
                 num_threads: int = 1, overlap: int = 32, progress: bool = True) -> dict:
    """Denoises a file or every image under a folder into `output_dir` as PNGs of the same names.

    Unreadable files are skipped with a warning and counted. Returns {"written": [...],
    "skipped": {path: reason}}.
    """
    import keras

    runner = load_runner(model, num_threads=num_threads)
    source, output_dir = Path(source), Path(output_dir)
    if source.is_file():
        files, root = [source], source.parent
    elif source.is_dir():
        files, root = list_image_files(source), source
    else:
        raise FileNotFoundError(f"input {str(source)!r} is neither an image file nor a folder")
    written, skipped = [], {}
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress and files else None
    for index, path in enumerate(files, 1):
        try:
            raw = decode_image(path)
            target = (output_dir / path.relative_to(root)).with_suffix(".png")
            write_image(target, denoise_array(runner, raw, overlap), bit_depth=16 if raw.dtype == np.uint16 else 8)
            written.append(str(target))
        except ImageReadError as error:
            skipped[str(path)] = str(error)
            log.warning("skipped %s", error)
        if bar is not None:
            bar.update(index)
    if skipped:
        log.warning("skipped %d of %d files (unreadable)", len(skipped), len(files))
    return {"written": written, "skipped": skipped}
