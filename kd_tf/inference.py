"""Running any exported denoiser (.keras, .h5, SavedModel, .tflite) on images of any size.

Dynamic-shape models see the whole image, reflect-padded to the network's stride; an image
larger than `max_tile` on a side runs as core tiles with `margin` pixels of context each, so memory
stays bounded (a 10000x10000 photo included) and, with the margin at least the model's receptive
radius, the result equals the whole-image result. A model that pools over the whole image (a
global context: Keras global pooling, TFLite MEAN / SUM / REDUCE_* over height or width) has no
finite radius, so it sees the whole image in one call whatever its size. Fixed-shape models (a TFLite file converted for
one input size) run tile by tile with overlap, and the tiles are blended with a linear ramp so
that no seam shows (a pooling one then pools each tile on its own: a warning says so). Gray images
are denoised as RGB and written back as gray; an alpha channel is kept untouched; 16-bit files stay
16-bit.

`run_on_image` runs an in-memory Keras model on one image of any size (what the tasks' reports
score), `model_inputs` adds the noise level a non-blind model takes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import keras
import numpy as np

from kd_tf.images import (IMAGE_EXTENSIONS, ImageReadError, decode_image, list_image_files, to_float_rgb,
                          writable_folder, write_image)
from kd_tf.export import FlexOpsError, LiteRTModel, check_builtin_only
from kd_tf.layers import SpaceToDepth
from kd_tf.model_io import load_model, takes_noise_level
from kd_tf.errors import InputError

log = logging.getLogger(__name__)


DEFAULT_MARGIN = 96        # context per tile when the receptive field is unknown (TFLite, SavedModel)
MAX_TILE = 1024            # dynamic-shape models see at most this many core pixels a side per call


@dataclasses.dataclass
class Runner:
    """A model callable on float32 NHWC batches, with what tiling needs to know about it."""

    predict: callable
    stride: int = 8                      # H and W must be multiples of this
    tile: int | None = None              # the fixed input side of a fixed-shape model
    source: str = ""
    margin: int | None = None            # receptive radius in pixels; None: DEFAULT_MARGIN
    scale: int = 1                       # output side / input side (2 for a 2x super-resolution model)
    pools_whole_image: bool = False      # its output depends on the whole input: never cut into tiles


POOLING_OPS = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"}


def has_global_pooling(model) -> bool:
    """Whether a Keras model holds a global pooling layer (kd_tf.denoise.nets' global context), so
    that every output pixel depends on the whole input and tiles would change the result.

    >>> has_global_pooling(keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D()]))
    True
    """
    return any(type(layer).__name__.startswith("Global") or
               (isinstance(layer, keras.Model) and has_global_pooling(layer)) for layer in model.layers)


def tflite_pools_spatially(flatbuffer: bytes) -> bool:
    """Whether a TFLite model reduces over height or width: a MEAN / SUM / REDUCE_* op whose axes
    hold 1 or 2 (or are computed at run time), as a global context's image mean does. A reduction
    over channels alone keeps the model local, so it can still run in tiles."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    pooling = {i for i, code in enumerate(model.operatorCodes)
               if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) in POOLING_OPS}
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.opcodeIndex not in pooling:
                continue
            source, axes = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
            data = model.buffers[axes.buffer].data
            if data is None or len(data) == 0:
                return True                          # axes known only at run time: assume spatial
            dtype = np.int64 if axes.type == schema.TensorType.INT64 else np.int32
            rank = len(source.shape) if source.shape is not None else 4
            if {int(a) % rank for a in np.frombuffer(bytes(bytearray(data)), dtype)} & {1, 2}:
                return True
    return False


_POINTWISE = {"InputLayer", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Add", "Subtract",
              "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "BatchNormalization", "Dropout",
              "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Rescaling", "Identity"}


def receptive_radius(model) -> int | None:
    """How far (in input pixels) an output pixel of a functional Keras model can see, counted
    conservatively from its layers' kernels, strides and dilations; None for a model holding a
    layer whose spatial reach is unknown (a Lambda, a nested model, a SavedModel wrapper)."""
    reach = _reach(model)
    return None if reach is None else reach[0]


def _reach(model) -> tuple[int, int] | None:
    """(receptive radius, total stride) of a functional model, or None (see receptive_radius)."""
    reach = {id(t): (0.0, 1.0) for t in getattr(model, "inputs", None) or []}   # tensor -> (radius, jump)
    if not reach:
        return None
    deepest = 1.0
    for layer in model.layers:
        kind = type(layer).__name__
        for node in layer._inbound_nodes:
            inputs = [reach.get(id(t)) for t in node.input_tensors]
            if not inputs or None in inputs:
                continue
            radius, jump = max(r for r, _ in inputs), max(j for _, j in inputs)
            if kind in _POINTWISE:
                pass
            elif kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"):
                size = getattr(layer, "kernel_size", None) or layer.pool_size
                strides = layer.strides or size
                dilation = getattr(layer, "dilation_rate", (1, 1))
                span = max((k - 1) * d for k, d in zip(size, dilation))
                # a strided 'same' kernel pads on one side only: count its whole span
                radius += jump * (span if max(strides) > 1 else -(-span // 2))
                jump *= max(strides)
            elif kind == "DepthToSpace":                  # the sub-pixel shuffle of an upscaler
                jump /= layer.block_size
            elif kind == "BilinearUpscale":               # kd_tf.sr's bilinear skip: one input pixel each side
                radius += jump
                jump /= layer.factor
            elif kind in ("Conv2DTranspose", "UpSampling2D"):
                size = getattr(layer, "kernel_size", None) or layer.size
                strides = getattr(layer, "strides", None) or layer.size
                radius += jump * max(1, max(size) - 1)
                jump /= max(strides)
            else:
                return None
            deepest = max(deepest, jump)
            for tensor in node.output_tensors:
                reach[id(tensor)] = (radius, jump)
    found = [reach.get(id(t)) for t in model.outputs]
    return None if None in found else (int(np.ceil(max(r for r, _ in found))), int(deepest))


def load_runner(path: str | os.PathLike, num_threads: int = 1, stride: int = 8, sigma: float | None = None) -> Runner:
    """Loads .keras/.h5/SavedModel with Keras, .tflite with the LiteRT interpreter; the model must
    take and return RGB images (3 channels). A non-blind model (FFDNet: image and noise level)
    needs `sigma`, the noise level on the 0-255 scale; a blind one ignores it."""
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        if not path.is_file():
            raise FileNotFoundError(f"model {str(path)!r} does not exist")
        _refuse_flex_ops(path)
        try:
            model = LiteRTModel(path, num_threads=num_threads)
        except Exception as error:         # the interpreter raises bare ValueError/RuntimeError on junk
            raise InputError(f"cannot load {str(path)!r} as a TFLite model ({type(error).__name__}: {error}); is "
                             f"the file complete? expected a .tflite flatbuffer from `python -m kd_tf export`") from error
        _, height, width, channels = model.input_signature
        if (height == -1) != (width == -1) or (height != -1 and height != width):
            raise InputError(f"{path}: input shape {model.input_signature}; expected square tiles or dynamic H and W")
        _check_rgb(path, channels)
        stride = int(np.lcm(stride, model.stride))    # a 5-level U-Net: 16
        return with_scale(Runner(model, stride, None if height == -1 else height, str(path),
                                 pools_whole_image=tflite_pools_spatially(path.read_bytes())))
    model = load_model(path)
    _check_rgb(path, model.inputs[0].shape[-1] if getattr(model, "inputs", None) else None)
    radius, net_stride = _reach(model) or (None, 1)
    global_pooling = has_global_pooling(model)
    # a model whose layers are all known needs multiples of its own stride only (1 for an upscaler:
    # no padding, so no border effects); others get the default stride's multiples too
    stride = net_stride if radius is not None else stride * net_stride // np.gcd(stride, net_stride)
    if takes_noise_level(model):
        if sigma is None:
            raise InputError(f"{path} takes the noise level beside the image (a non-blind denoiser such as "
                             f"FFDNet): give it with --sigma (0-255 scale, e.g. --sigma 25)")
        level = np.float32(sigma / 255.0)
        return with_scale(Runner(lambda batch: np.asarray(model([batch, np.full((len(batch), 1), level)],
                                                                 training=False)), int(stride), None, str(path), radius,
                                 pools_whole_image=global_pooling))
    return with_scale(Runner(lambda batch: np.asarray(model(batch, training=False)), int(stride), None, str(path),
                             radius, pools_whole_image=global_pooling))


def _refuse_flex_ops(path: Path):
    """A model with Flex (SELECT_TF_OPS) ops needs the TensorFlow runtime on the phone; say so
    plainly instead of letting the interpreter fail on its first op."""
    try:
        check_builtin_only(path.read_bytes())
    except FlexOpsError as error:
        raise InputError(f"{path}: {error}; convert it with builtin ops only (`python -m kd_tf export`)") from None
    except Exception:                      # not a flatbuffer at all: the interpreter's error below says so
        pass


def _check_rgb(path, channels):
    if channels not in (None, 3):
        raise InputError(f"model {str(path)!r} takes {channels}-channel input; denoising feeds RGB images, "
                         f"so the model must take 3 channels")


def _pad_mode(image, height, width):
    return "reflect" if height - image.shape[0] < image.shape[0] and width - image.shape[1] < image.shape[1] \
        else "symmetric"


def _pad_to(image, height, width, mode=None):
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode or _pad_mode(image, height, width))


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


def _predict(runner, batch):
    out = runner.predict(batch.astype(np.float32, copy=False))
    n, h, w, c = batch.shape
    if out.shape != (n, h * runner.scale, w * runner.scale, c):
        raise InputError(f"model {runner.source or ''} returned shape {tuple(out.shape)} for an input of shape "
                         f"{tuple(batch.shape)}; expected an image-to-image model whose output is the input "
                         f"{runner.scale}x larger")
    return out


def with_scale(runner: Runner) -> Runner:
    """`runner` with its `scale` measured on a probe: a denoiser keeps the size, a 2x
    super-resolution model doubles it."""
    side = runner.tile or 4 * runner.stride
    out = np.asarray(runner.predict(np.zeros((1, side, side, 3), np.float32)))
    scale = out.shape[1] // side
    if out.ndim != 4 or scale < 1 or out.shape[1] != side * scale or out.shape[2] != side * scale \
            or out.shape[3] != 3:
        raise InputError(f"model {runner.source or ''} returned shape {tuple(out.shape)} for a "
                         f"{side}x{side} RGB input; expected an image (the same size, or an integer factor larger)")
    return dataclasses.replace(runner, scale=scale)


def _spans(length, core, stride):
    """[start, end) pieces of about equal size, at most `core` long, cut at multiples of `stride`."""
    count = -(-length // core)
    cuts = [min(length, -(-round(i * length / count) // stride) * stride) for i in range(count + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def run_rgb(runner: Runner, image: np.ndarray, overlap: int = 32, max_tile: int = MAX_TILE) -> np.ndarray:
    """Denoises one HxWx3 float image of any size (1x1 included)."""
    if overlap < 0:
        raise InputError(f"overlap={overlap!r}; accepted: an int >= 0 (pixels)")
    height, width = image.shape[:2]
    if runner.tile is None:
        stride = runner.stride
        full_h, full_w = -(-height // stride) * stride, -(-width // stride) * stride
        if max(full_h, full_w) <= max_tile or runner.pools_whole_image:
            return _predict(runner, _pad_to(image, full_h, full_w)[None])[0, :height * runner.scale,
                                                                           :width * runner.scale]
        return _run_cropped(runner, image, full_h, full_w, max_tile)
    tile, scale = runner.tile, runner.scale
    if runner.pools_whole_image and max(height, width) > tile:
        log.warning("%s pools over its whole input but takes fixed %d px tiles: each tile pools its own crop, so the "
                    "result differs from a whole-image run; export it with dynamic shapes for that", runner.source,
                    tile)
    overlap = min(overlap, tile // 2)
    margin = min(overlap // 2, height - 1, width - 1)     # image borders get reflected context too
    framed = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    padded = _pad_to(framed, max(framed.shape[0], tile), max(framed.shape[1], tile))
    del framed
    total = np.zeros((padded.shape[0] * scale, padded.shape[1] * scale, padded.shape[2]), np.float32)
    weight = np.zeros(total.shape[:2] + (1,), np.float32)
    out_tile = tile * scale
    window = np.outer(_ramp(out_tile, overlap * scale), _ramp(out_tile, overlap * scale))[..., None]
    for top in _starts(padded.shape[0], tile, tile - overlap):
        for left in _starts(padded.shape[1], tile, tile - overlap):
            crop = padded[top:top + tile, left:left + tile]
            y, x = top * scale, left * scale
            total[y:y + out_tile, x:x + out_tile] += _predict(runner, crop[None])[0] * window
            weight[y:y + out_tile, x:x + out_tile] += window
    total /= weight
    return total[margin * scale:(margin + height) * scale, margin * scale:(margin + width) * scale]


def _run_cropped(runner, image, full_h, full_w, max_tile):
    """A large image through a dynamic-shape model: core tiles of at most `max_tile` a side, each
    run with the model's receptive radius of real context around it and cropped back. Tiles start
    at multiples of the stride and the bottom/right tiles get the whole image's own reflect
    padding, so each output pixel sees exactly what it sees in the whole image: the result is the
    whole-image result, with model memory bounded by (max_tile + 2 * margin) squared, and no
    padded copy of the image."""
    stride, (height, width), s = runner.stride, image.shape[:2], runner.scale
    margin = DEFAULT_MARGIN if runner.margin is None else runner.margin
    margin = -(-margin // stride) * stride
    mode = _pad_mode(image, full_h, full_w)
    out = np.empty((height * s, width * s, image.shape[2]), np.float32)
    for top, bottom in _spans(full_h, max_tile, stride):
        for left, right in _spans(full_w, max_tile, stride):
            y0, x0 = max(0, top - margin), max(0, left - margin)
            y1, x1 = min(full_h, bottom + margin), min(full_w, right + margin)
            crop = _pad_to(image[y0:y1, x0:x1], y1 - y0, x1 - x0, mode)   # pads only at the image's own edge
            result = _predict(runner, crop[None])[0]
            keep_h, keep_w = (min(bottom, height) - top) * s, (min(right, width) - left) * s
            out[top * s:top * s + keep_h, left * s:left * s + keep_w] = \
                result[(top - y0) * s:(top - y0) * s + keep_h, (left - x0) * s:(left - x0) * s + keep_w]
    return out


def denoise_array(runner: Runner, raw: np.ndarray, overlap: int = 32, max_tile: int = MAX_TILE) -> np.ndarray:
    """Denoises an OpenCV-decoded array; returns float in [0, 1] with the input's channel layout
    (gray stays gray, RGBA keeps its alpha), RGB order."""
    image = to_float_rgb(raw, keep_alpha=True)
    alpha = image[..., 3:].copy() if image.shape[-1] == 4 else np.zeros(image.shape[:2] + (0,), np.float32)
    out = run_rgb(runner, image[..., :3], overlap, max_tile)
    del image                                  # no view keeps the input alive: peak = input + output
    out = np.clip(out, 0.0, 1.0, out=out if out.flags.writeable else None)   # TF outputs are read-only
    if raw.ndim == 2 or raw.shape[-1] == 1:
        return out.mean(axis=-1, keepdims=True)
    return np.concatenate([out, alpha], axis=-1) if alpha.size else out


def denoise_path(model: str | os.PathLike, source: str | os.PathLike, output_dir: str | os.PathLike,
                 num_threads: int = 1, overlap: int = 32, progress: bool = True, max_tile: int = MAX_TILE,
                 sigma: float | None = None, upscale: bool = False) -> dict:
    """Denoises a file or every image under a folder into `output_dir` as PNGs of the same names
    (or upscales them, with a super-resolution model: `upscale=True` insists on one).

    Unreadable files (and files that cannot be written) are skipped with a warning and counted;
    an input is never overwritten. Returns {"written": [...], "skipped": {path: reason}}.
    """
    import keras

    source, output_dir = Path(source), Path(output_dir)
    if source.is_file():
        files, root = [source], source.parent
    elif source.is_dir():
        files, root = list_image_files(source), source
        inside = output_dir.resolve()
        if inside != source.resolve():         # earlier outputs in a folder under the input are not inputs
            files = [p for p in files if not p.resolve().is_relative_to(inside)]
        if not files:
            raise ImageReadError(f"no image files under {str(source)!r}; extensions accepted: "
                                 f"{', '.join(IMAGE_EXTENSIONS)}")
    else:
        raise FileNotFoundError(f"input {str(source)!r} is neither an image file nor a folder")
    writable_folder(output_dir)                # before loading the model: fail in a second, not after
    runner = load_runner(model, num_threads=num_threads, sigma=sigma)
    if upscale and runner.scale < 2:
        raise InputError(f"{model} returns images the size of its inputs; `upscale` needs a super-resolution "
                         f"model (use `denoise` for this one)")
    written, skipped = [], {}
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress and files else None
    for index, path in enumerate(files, 1):
        target = (output_dir / path.relative_to(root)).with_suffix(".png")
        try:
            if target.resolve() == path.resolve():
                raise ImageReadError(f"{path}: the output {target} would overwrite this input; "
                                     f"choose another output folder")
            raw = decode_image(path)
            depth = 16 if raw.dtype == np.uint16 else 8
            denoised = denoise_array(runner, raw, overlap, max_tile)
            del raw
            write_image(target, denoised, bit_depth=depth)
            written.append(str(target))
        except ImageReadError as error:
            skipped[str(path)] = str(error)
            log.warning("skipped %s", error)
        except OSError as error:               # e.g. the disk filled up: keep what is written, go on
            skipped[str(path)] = f"{path}: cannot write {target} ({error.strerror or error})"
            log.warning("skipped %s", skipped[str(path)])
        if bar is not None:
            bar.update(index)
    if skipped:
        log.warning("skipped %d of %d files (unreadable or unwritable)", len(skipped), len(files))
    return {"written": written, "skipped": skipped, "scale": runner.scale}


def model_inputs(model: keras.Model, batch: np.ndarray, sigma: float | None):
    """What `model` takes for a batch of noisy images: the images, plus sigma / 255 per image for a
    non-blind denoiser (FFDNet), which then needs `sigma`."""
    if not takes_noise_level(model):
        return batch
    if sigma is None:
        raise InputError(f"model {model.name!r} takes the noise level beside the image; give sigma "
                         f"(0-255 scale, e.g. --sigma 25)")
    return [batch, np.full((len(batch), 1), float(sigma) / 255.0, np.float32)]


def run_on_image(model: keras.Model, image: np.ndarray, stride: int | None = None,
                 sigma: float | None = None) -> np.ndarray:
    """Runs a fully convolutional model on one HxWxC image of any size (reflect-padded to
    `stride`); `sigma` (0-255) for models that take the noise level. An upscaler's output is
    cropped to its scale times the image."""
    stride = stride_of(model) if stride is None else stride
    height, width = image.shape[:2]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect") if pad_h or pad_w else image
    out = np.asarray(model(model_inputs(model, padded[None].astype(np.float32), sigma), training=False))[0]
    scale = out.shape[0] // padded.shape[0]          # 2 for a 2x super-resolution model
    return out[:height * scale, :width * scale]


def stride_of(model: keras.Model) -> int:
    """The factor that input height and width must be divisible by (1 for non-U-Nets): 2 per stride-2
    `down` convolution, times the block size of any pixel-unshuffle (a SpaceToDepth layer)."""
    downs = [layer for layer in model.layers if layer.name.startswith("down")]
    unshuffles = [layer.block_size for layer in model.layers if isinstance(layer, SpaceToDepth)]
    return 2 ** len(downs) * int(np.prod(unshuffles, dtype=np.int64))
