"""int8 weights tuned on the whole model's output: a quantization-aware fine-tune of a
dynamic-range copy against its own float model.

GPTQ (kd_tf.weight_rounding) rounds each layer to keep that layer's output close to float; it
cannot see what the rounding of all layers together does to the image. On flat, bright or dark
images the float denoiser is 40-44 dB from the truth, so a shift of a fraction of a grey level
costs tenths of a dB (issue 17: near-white lost 0.55 dB after GPTQ, photos 0.03 dB).

`tune_dynamic_int8` fine-tunes the rounded copy as its TFLite file computes: every kernel the
converter quantizes is rounded to its per-channel int8 grid and every such layer's input is
rounded per sample as a dynamic-range kernel rounds it at run time, with straight-through
gradients; biases and the layers the converter keeps in float are tuned in float. The target
is the float model's output on the same 8-bit inputs, not the truth: the file should compute
what the float model computes. Each sample's squared error is divided by the float model's own
error on it (plus a floor), so the loss follows the PSNR drop in dB rather than the squared
error, and images where float is nearly exact weigh as much as photos. Each channel's largest
weight is frozen, so the converter derives the same scale and reproduces the tuned grid
values exactly.

>>> import numpy as np
>>> weights = relative_error_weights(np.array([1e-4, 1e-4, 4e-4], np.float32), floor=0.0)
>>> [round(float(w), 3) for w in ops.convert_to_numpy(weights)]    # the near-exact samples weigh 4x
[1.333, 1.333, 0.333]
"""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import ops

from kd_tf.weight_rounding import MIN_ELEMENTS, _eligible, dynamic_int8, on_int8_grid

log = logging.getLogger(__name__)

ERROR_FLOOR = 0.5 / 255.0     # RMS error below which a sample's float output counts as exact


def relative_error_weights(float_errors, floor: float = ERROR_FLOOR):
    """Per-sample loss weights 1 / (float model's mean squared error + floor^2), normalized to
    mean 1: a squared error e costs about 10 log10(1 + e / error) dB, so dividing by the float
    error makes equal losses mean equal dB drops."""
    weights = 1.0 / (float_errors + floor ** 2)
    return weights / ops.mean(weights)


def tune_toward_reference(reference: keras.Model, model: keras.Model, dataset, steps: int,
                          learning_rate: float, floor: float = ERROR_FLOOR) -> list[float]:
    """Trains `model`'s trainable weights in place for `steps` batches of `dataset` ((inputs,
    truth) batches as the file will be fed) towards `reference`'s outputs on the same inputs,
    each sample's squared error weighted by `relative_error_weights` of the reference's own
    error against the truth. `model` simulates the file's rounding (DynamicInt8Conv2D here,
    kd_tf.fake_quant for full integer). Adam, cosine decay from `learning_rate` to 5 % of it.
    Returns the weighted loss of each step."""
    import tensorflow as tf

    if steps < 1:
        raise ValueError(f"steps={steps!r}; accepted: an int >= 1")
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05))
    variables = model.trainable_variables

    @tf.function
    def train_step(inputs, truth):
        target = reference(inputs, training=False)
        float_errors = ops.mean(ops.square(ops.clip(target, 0.0, 1.0) - truth), axis=(1, 2, 3))
        weights = relative_error_weights(float_errors, floor)
        with tf.GradientTape() as tape:
            loss = ops.mean(weights * ops.mean(ops.square(model(inputs, training=True) - target), axis=(1, 2, 3)))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses = []
    for step, (inputs, truth) in enumerate(dataset):
        if step == steps:
            break
        losses.append(float(train_step(inputs, truth)))
    if len(losses) < steps:
        raise ValueError(f"the dataset ended after {len(losses)} batches; {steps} steps asked")
    return losses


def _straight_through(x, rounded):
    return x + ops.stop_gradient(rounded - x)


class DynamicInt8Conv2D(keras.layers.Conv2D):
    """A Conv2D that computes as a dynamic-range TFLite kernel does (int8 kernel on a fixed
    per-channel grid with its peak weights frozen, input rounded per sample) and trains through
    the rounding (straight-through). Only for tuning: `tune_dynamic_int8` returns plain layers."""

    def set_grid(self, kernel: np.ndarray):
        """Fixes the grid from `kernel` (already on it): scales max |w| / 127, peaks frozen."""
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
        self.grid_scale = ops.convert_to_tensor(flat.max(axis=0) / 127.0, "float32")
        self.peaks = ops.convert_to_tensor(np.abs(kernel) >= flat.max(axis=0) * (1 - 1e-6))
        self.peak_values = ops.convert_to_tensor(kernel, "float32")

    def rounded_kernel(self):
        steps = ops.clip(ops.round(self.kernel / self.grid_scale), -127.0, 127.0)
        return ops.where(self.peaks, self.peak_values, steps * self.grid_scale)

    def call(self, inputs):
        inputs = _straight_through(inputs, dynamic_int8(inputs))
        outputs = self.convolution_op(inputs, _straight_through(self.kernel, self.rounded_kernel()))
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (self.rank + 1) + (self.filters,)))
        return self.activation(outputs) if self.activation is not None else outputs


def tune_dynamic_int8(reference: keras.Model, rounded: keras.Model, dataset, steps: int,
                      learning_rate: float = 2e-5, floor: float = ERROR_FLOOR,
                      min_elements: int = MIN_ELEMENTS) -> tuple[keras.Model, dict]:
    """Fine-tunes `rounded` (a copy of `reference` whose quantized kernels lie on TFLite's int8
    grid, e.g. from kd_tf.weight_rounding.gptq_int8_weights) for `steps` batches of `dataset`,
    an iterable of (inputs, truth) batches as the file will be fed, towards `reference`'s outputs.

    Returns (tuned copy, record): the copy's quantized kernels lie on the same grid, so the
    converter's rounding keeps them; the record holds the weighted loss of the first and last
    100 steps. Eligible Conv2D layers are tuned through their rounding; any other layer the
    converter quantizes (Dense, grouped convolutions) stays as given. Adam's rate decays along a
    cosine from `learning_rate`; on the denoising student 1e-4 diverged and 2e-5 did not.
    """
    names = {layer.name for layer in rounded.layers
             if _eligible(layer, min_elements) is None and type(layer) is keras.layers.Conv2D}
    frozen = [layer.name for layer in rounded.layers
              if _eligible(layer, min_elements) is None and layer.name not in names]
    for name in names:
        if not on_int8_grid(rounded.get_layer(name).kernel.numpy()):
            raise ValueError(f"layer {name!r}: kernel not on the int8 grid; round it first (gptq_int8_weights)")

    def clone(layer):
        cls = DynamicInt8Conv2D if layer.name in names else type(layer)
        copy = cls.from_config(layer.get_config())
        copy.trainable = layer.name not in frozen
        return copy

    training = keras.models.clone_model(rounded, clone_function=clone)
    training.set_weights(rounded.get_weights())
    for name in names:
        training.get_layer(name).set_grid(rounded.get_layer(name).kernel.numpy())
    losses = tune_toward_reference(reference, training, dataset, steps, learning_rate, floor)

    tuned = keras.models.clone_model(rounded)
    tuned.set_weights(training.get_weights())
    for name in names:
        kernel = ops.convert_to_numpy(training.get_layer(name).rounded_kernel())
        tuned.get_layer(name).kernel.assign(kernel)
    window = min(100, steps)
    record = {"steps": steps, "learning_rate": learning_rate, "tuned_layers": sorted(names),
              "left_as_rounded": frozen, "loss_first_steps": float(np.mean(losses[:window])),
              "loss_last_steps": float(np.mean(losses[-window:]))}
    log.info("int8 tuning: %d steps, weighted loss %.3g -> %.3g", steps, record["loss_first_steps"],
             record["loss_last_steps"])
    return tuned, record
