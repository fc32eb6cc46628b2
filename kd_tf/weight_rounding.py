"""int8 weights that the rounding hurts least: GPTQ on the TFLite per-channel grid.

TFLite's dynamic-range and full-integer formats store each convolution's kernel in int8, one
symmetric scale per output channel (the channel's largest |weight| / 127), and the converter
rounds every weight to the nearest step. Nearest rounding is harmless on photos but not on flat,
bright or dark images, where the float student is 40-44 dB from the truth and the sum of many
tiny rounding errors is a visible shift (issue 17: 1.6 dB lost on a near-black image).

GPTQ (Frantar et al., ICLR 2023) rounds a layer's weights one input column at a time and spreads
each column's rounding error over the columns not yet rounded, weighted by the inverse Hessian
of the layer's inputs on calibration data: the int8 layer's outputs stay closest to the float
ones in the least-squares sense. Layers are done in order, each on the inputs the already-rounded
layers before it produce, so later layers compensate earlier errors; the bias (kept in float by
TFLite) is solved with the weights and absorbs the mean error. With `dynamic_activations` those
inputs are also rounded as dynamic-range kernels round them at run time (per image, asymmetric
int8 over the tensor's range with zero included), so the weights compensate that too.

The result is a copy whose kernels already lie on the grid with each channel's largest |weight|
kept, so the converter's own rounding reproduces them exactly:

>>> import numpy as np
>>> kernel = np.array([[0.5, -2.0], [0.26, 1.0]], np.float32)
>>> int8_grid_scale(kernel).tolist()        # per output channel (last axis): max |w| / 127
[0.003937007859349251, 0.015748031437397003]
>>> bool(on_int8_grid(round_to_int8_grid(kernel)))
True
"""

from __future__ import annotations

import logging

import keras
import numpy as np

log = logging.getLogger(__name__)

MIN_ELEMENTS = 1024   # TFLite's converter leaves smaller weight tensors in float (dynamic-range mode)


def int8_grid_scale(kernel: np.ndarray) -> np.ndarray:
    """The converter's per-output-channel scale (last axis): max |w| / 127 (1 for an all-zero channel)."""
    peak = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 127.0
    return np.where(peak == 0, 1.0, peak).astype(kernel.dtype)


def round_to_int8_grid(kernel: np.ndarray) -> np.ndarray:
    """Nearest rounding on the per-channel grid, as the converter does it."""
    scale = int8_grid_scale(kernel)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(kernel.dtype)


def on_int8_grid(kernel: np.ndarray, tolerance: float = 1e-6) -> bool:
    """Whether the converter's rounding leaves `kernel` as it is."""
    return bool(np.allclose(round_to_int8_grid(kernel), kernel, rtol=0,
                            atol=tolerance * max(float(np.abs(kernel).max()), 1e-12)))


def dynamic_int8(x):
    """`x` rounded as a dynamic-range kernel rounds its input: per sample, asymmetric int8 over
    [min(x, 0), max(x, 0)]."""
    from keras import ops

    axes = tuple(range(1, len(x.shape)))
    low = ops.minimum(ops.min(x, axis=axes, keepdims=True), 0.0)
    high = ops.maximum(ops.max(x, axis=axes, keepdims=True), 0.0)
    scale = ops.maximum((high - low) / 255.0, 1e-12)
    zero_point = ops.round(-low / scale) - 128.0
    return (ops.clip(ops.round(x / scale) + zero_point, -128.0, 127.0) - zero_point) * scale


def _rows(x: np.ndarray, layer) -> np.ndarray:
    """The layer's inputs as rows of its kernel's input axis: im2col patches for a convolution
    (ordered as the kernel's (kh, kw, in) axes), the last axis for a dense layer."""
    import tensorflow as tf

    if isinstance(layer, keras.layers.Dense):
        return np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    patches = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], layer.padding.upper())
    return np.asarray(patches, np.float64).reshape(-1, patches.shape[-1])


def gptq_columns(weights: np.ndarray, hessian: np.ndarray, scale: np.ndarray, frozen: int = 0,
                 damping: float = 0.01) -> np.ndarray:
    """GPTQ on `weights` (inputs, outputs): rows are rounded in order to `scale` (per output)
    steps, each row's error spread over the rows after it; the last `frozen` rows (a bias) are
    not rounded but absorb error. `hessian` (inputs, inputs) = X^T X of the layer's inputs."""
    work = weights.T.astype(np.float64).copy()                  # (outputs, inputs)
    hessian = hessian + damping * np.mean(np.diag(hessian)) * np.eye(len(hessian))
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T         # Hinv's upper Cholesky factor
    rounded = np.zeros_like(work)
    last = work.shape[1] - frozen
    for i in range(work.shape[1]):
        column = work[:, i]
        q = column if i >= last else np.clip(np.round(column / scale), -127, 127) * scale
        rounded[:, i] = q
        work[:, i + 1:] -= np.outer((column - q) / upper[i, i], upper[i, i + 1:])
    return rounded.T


def _model_inputs(batch):
    """One calibration batch as the model takes it: an array, or one array per input (a list or
    tuple) for a model of several inputs (a diffusion denoiser: noisy image, noise level, class)."""
    if isinstance(batch, (list, tuple)):
        return [np.asarray(part) for part in batch]
    return np.asarray(batch, np.float32)


def _keep_channel_peaks(rounded: np.ndarray, original: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Puts each channel's largest original weight back on +-127 steps if GPTQ moved every weight
    of the channel below it: the converter derives the scale from the largest |weight|."""
    top = np.argmax(np.abs(original), axis=0)
    for channel in range(rounded.shape[1]):
        if np.abs(rounded[:, channel]).max() < 126.5 * scale[channel]:
            rounded[top[channel], channel] = np.sign(original[top[channel], channel]) * 127 * scale[channel]
    return rounded


def _eligible(layer, min_elements: int) -> str | None:
    """None when GPTQ rounds `layer`, else why not ("" for layers that hold no int8 kernel)."""
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) or \
            isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose)):
        return ""
    if int(np.prod(layer.kernel.shape)) < min_elements:
        return ""                                             # the converter keeps it in float
    if isinstance(layer, keras.layers.Conv2D) and (layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1)
                                                   or layer.data_format != "channels_last"):
        return "grouped, dilated or channels-first convolution"
    return None


def _simulating(model: keras.Model, names: set, dynamic_activations: bool) -> keras.Model:
    """A clone whose layers in `names` round their inputs as dynamic-range kernels do."""
    def clone(layer):
        cls = type(layer)
        if dynamic_activations and layer.name in names:
            class Rounded(cls):
                def call(self, inputs, *args, **kwargs):
                    return super().call(dynamic_int8(inputs), *args, **kwargs)
            cls = Rounded
        return cls.from_config(layer.get_config())

    simulated = keras.models.clone_model(model, clone_function=clone)
    simulated.set_weights(model.get_weights())
    return simulated


def simulated_dynamic_int8(model: keras.Model, weights: bool = True, activations: bool = True,
                           min_elements: int = MIN_ELEMENTS) -> keras.Model:
    """A Keras copy of `model` that computes as its dynamic-range int8 TFLite file would: the
    kernels the converter quantizes rounded to the nearest step of their per-channel grid
    (`weights`), those layers' inputs rounded per sample at run time (`activations`). Either alone
    says which of the two costs an int8 model its quality, before any file is written.
    """
    names = {layer.name for layer in model.layers if _eligible(layer, min_elements) is None}
    copy = _simulating(model, names, activations)
    if weights:
        for name in names:
            layer_weights = copy.get_layer(name).get_weights()
            layer_weights[0] = round_to_int8_grid(layer_weights[0])
            copy.get_layer(name).set_weights(layer_weights)
    return copy


def gptq_int8_weights(model: keras.Model, batches, dynamic_activations: bool = True,
                      min_elements: int = MIN_ELEMENTS, damping: float = 0.01) -> tuple[keras.Model, dict]:
    """A copy of `model` whose Conv2D and Dense kernels of at least `min_elements` weights lie on
    TFLite's per-channel int8 grid, rounded by GPTQ on `batches` (inputs as the model will see
    them: for a denoiser, 8-bit noisy photos and colour-gamut images; for a model of several
    inputs, a list of arrays per batch, as a diffusion sampler's network gets them at each of
    its steps: kd_tf.diffusion.DDIMSampler.network_inputs), biases refitted.

    Returns (copy, {layer: {"nearest": e, "gptq": e}}), e the mean squared output error of that
    layer on its inputs (upstream layers already rounded) with nearest rounding and with GPTQ.
    Grouped or dilated convolutions are left to the converter's rounding, logged; transposed
    ones too (kd_tf.export.shuffle_upsampling turns 2x2 stride-2 ones into convolutions first).
    """
    batches = [_model_inputs(batch) for batch in batches]
    reasons = {layer.name: _eligible(layer, min_elements) for layer in model.layers}
    names = [name for name, why in reasons.items() if why is None]
    skipped = [name for name, why in reasons.items() if why]
    simulated = _simulating(model, set(names), dynamic_activations)
    stats = {}
    for name in names:
        layer = simulated.get_layer(name)
        kernel, *rest = layer.get_weights()
        bias = rest[0] if layer.use_bias else None
        inputs_of = keras.Model(simulated.inputs, layer.input)
        size = int(np.prod(kernel.shape[:-1])) + (bias is not None)
        hessian, count = np.zeros((size, size)), 0
        for batch in batches:
            x = inputs_of(batch, training=False)
            rows = _rows(np.asarray(dynamic_int8(x) if dynamic_activations else x, np.float32), layer)
            if bias is not None:
                rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
            hessian += rows.T @ rows
            count += len(rows)
        flat = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
        full = flat if bias is None else np.concatenate([flat, bias[None].astype(np.float64)], axis=0)
        scale = int8_grid_scale(kernel).astype(np.float64)
        rounded = gptq_columns(full, hessian, scale, frozen=int(bias is not None), damping=damping)
        rounded[:len(flat)] = _keep_channel_peaks(rounded[:len(flat)], flat, scale)
        nearest = full.copy()
        nearest[:len(flat)] = round_to_int8_grid(flat)
        stats[name] = {which: float(np.einsum("io,ij,jo->", delta, hessian, delta) / count)
                       for which, delta in (("nearest", nearest - full), ("gptq", rounded - full))}
        weights = layer.get_weights()                          # [kernel, bias]: works for any kernel storage
        weights[0] = rounded[:len(flat)].reshape(kernel.shape).astype(np.float32)
        if bias is not None:
            weights[1] = rounded[-1].astype(np.float32)
        layer.set_weights(weights)
    if skipped:
        log.info("GPTQ left %d layer(s) to the converter's rounding: %s", len(skipped), ", ".join(skipped))
    copy = keras.models.clone_model(model)
    copy.set_weights(simulated.get_weights())
    return copy, stats
