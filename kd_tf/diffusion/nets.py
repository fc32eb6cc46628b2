"""The velocity-predicting U-Net: [noisy image, noise variance] -> predicted v (see schedule.predict);
class-conditional ones take the class index as a third input ([noisy, variance, class]).

Shaped after keras.io's DDIM example (residual blocks, a sinusoidal embedding of the noise
variance broadcast over the image), sized for 28x28 digits: levels at 28, 14 and 7 pixels.

The embedding also broadcasts over the batch (`BroadcastConcatenate`): a sampler gives the
network one noise variance per step, a constant, so the TFLite converter folds the sines and
cosines into constants. Computed from an int8 tensor instead, their phase is lost (the product of
a variance and a frequency of 1,000 spans 0 to 6,283 over 256 levels, 25 radians apart) and the
int8 sampler ignores the noise level: the first int8 export of the one-step student collapsed
onto a few digits (FID 807 against 160 in float).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from kd_tf.errors import InputError

EMBEDDING_MAX_FREQUENCY = 1000.0


@keras.saving.register_keras_serializable(package="kd_tf")
class SinusoidalEmbedding(layers.Layer):
    """Noise variance (batch, 1, 1, 1) -> (batch, 1, 1, dims) sines and cosines at log-spaced
    frequencies, so the network can tell nearby noise levels apart."""

    def __init__(self, dims: int = 32, **kwargs):
        super().__init__(**kwargs)
        if int(dims) < 2 or int(dims) % 2:
            raise InputError(f"embedding dims={dims!r}; accepted: an even int >= 2")
        self.dims = int(dims)

    def call(self, variance):
        frequencies = ops.exp(ops.linspace(math.log(1.0), math.log(EMBEDDING_MAX_FREQUENCY), self.dims // 2))
        angular = ops.cast(2.0 * math.pi * frequencies, variance.dtype)
        return ops.concatenate([ops.sin(angular * variance), ops.cos(angular * variance)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


@keras.saving.register_keras_serializable(package="kd_tf")
class BroadcastConcatenate(layers.Concatenate):
    """Concatenates like `Concatenate`, after broadcasting every input's batch to the first's
    (an embedding of batch 1 joins a batch of images).

    >>> import numpy as np
    >>> BroadcastConcatenate()([np.zeros((3, 2, 2, 1)), np.ones((1, 2, 2, 4))]).shape
    TensorShape([3, 2, 2, 5])
    """

    def build(self, input_shape):          # the batches may differ: check the other axes only
        super().build([(None, *shape[1:]) for shape in input_shape])

    def call(self, inputs):
        batch = ops.shape(inputs[0])[0]
        return super().call([inputs[0], *(ops.broadcast_to(x, (batch, *x.shape[1:])) for x in inputs[1:])])


def shares_noise_level(network: keras.Model) -> bool:
    """Whether `network` takes one noise variance for the whole batch (shape (1, 1, 1, 1))."""
    return any(isinstance(layer, BroadcastConcatenate) for layer in network.layers)


def with_shared_noise_level(network: keras.Model) -> keras.Model:
    """`network` as is if it `shares_noise_level`, else a copy (same weights) whose embedding join
    is a `BroadcastConcatenate`: denoisers saved before it (session 13) sample and export like new
    ones."""
    if shares_noise_level(network):
        return network

    def clone(layer):
        if layer.name == "with_embedding":
            return BroadcastConcatenate.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=clone)
    if not shares_noise_level(copy):
        raise InputError(f"network {network.name!r} has no layer named 'with_embedding' (the join of the noise "
                         "embedding and the image); accepted: a network built by kd_tf.diffusion.nets.build_denoiser")
    copy.set_weights(network.get_weights())
    copy.trainable = network.trainable
    return copy


def denoiser_classes(network: keras.Model) -> int:
    """How many classes a denoiser is conditioned on (0: unconditional, two inputs)."""
    return next((layer.input_dim for layer in network.layers if layer.name == "class_embedding"), 0)


def with_class_input(network: keras.Model, classes):
    """The callable that `schedule.predict` and `ddim_step` take: [noisy, variance] -> v, with the
    class indices `classes` appended where `network` is class-conditional (None: unconditional)."""
    if classes is None:
        return network
    return lambda inputs: network([*inputs, classes])


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _residual(x, width, name):
    shortcut = x if x.shape[-1] == width else layers.Conv2D(width, 1, name=f"{name}_skip")(x)
    # group norm, not keras.io's batch norm: the same per sample in training and inference, so an
    # unrolled sampler (a student of several steps) sees no train/test gap
    x = layers.GroupNormalization(groups=_groups(x.shape[-1]), name=f"{name}_norm")(x)
    x = layers.Conv2D(width, 3, padding="same", activation="swish", name=f"{name}_conv1")(x)
    x = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2")(x)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def build_denoiser(image_size: int = 28, channels: int = 1, widths=(32, 64, 96), blocks: int = 2,
                   embedding_dims: int = 32, classes: int = 0, name: str = "denoiser") -> keras.Model:
    """A residual U-Net predicting the velocity v of a noisy image, told the noise variance.

    `image_size` must be divisible by 2 ** (len(widths) - 1) (28: three levels). With `classes` > 0
    it also takes a class index (int32, one per image), whose learned embedding is added to the
    head's features at every pixel; the embedding starts at zero, so a conditional network given
    an unconditional one's weights (`warm_start`) computes exactly what that one did.

    >>> build_denoiser(28, 1, (8, 16), 1).output_shape
    (None, 28, 28, 1)
    >>> [tuple(i.shape) for i in build_denoiser(28, 1, (8, 16), 1, classes=10).inputs]
    [(None, 28, 28, 1), (None, 1, 1, 1), (None,)]
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or image_size % (2 ** (len(widths) - 1)):
        raise InputError(f"image_size={image_size}, widths={widths}; accepted: at least two levels and a size "
                         f"divisible by {2 ** (len(widths) - 1)}")
    if int(classes) < 0 or int(classes) == 1:
        raise InputError(f"classes={classes!r}; accepted: 0 (unconditional) or an int >= 2")
    noisy = keras.Input((image_size, image_size, channels), name="noisy")
    variance = keras.Input((1, 1, 1), name="noise_variance")
    embedding = SinusoidalEmbedding(embedding_dims, name="embedding")(variance)
    embedding = layers.UpSampling2D(image_size, interpolation="nearest", name="embedding_broadcast")(embedding)
    x = layers.Conv2D(widths[0], 1, name="head")(noisy)
    inputs = [noisy, variance]
    if classes:
        label = keras.Input((), dtype="int32", name="class")
        inputs.append(label)
        code = layers.Embedding(int(classes), widths[0], embeddings_initializer="zeros", name="class_embedding")(label)
        code = layers.Reshape((1, 1, widths[0]), name="class_pixel")(code)
        code = layers.UpSampling2D(image_size, interpolation="nearest", name="class_broadcast")(code)
        x = layers.Add(name="with_class")([x, code])
    x = BroadcastConcatenate(name="with_embedding")([x, embedding])
    skips = []
    for level, width in enumerate(widths[:-1]):
        for block in range(blocks):
            x = _residual(x, width, f"down{level}_block{block}")
            skips.append(x)
        x = layers.AveragePooling2D(2, name=f"down{level}")(x)
    for block in range(blocks):
        x = _residual(x, widths[-1], f"middle_block{block}")
    for level in reversed(range(len(widths) - 1)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
        for block in range(blocks):
            x = layers.Concatenate(name=f"up{level}_skip{block}")([x, skips.pop()])
            x = _residual(x, widths[level], f"up{level}_block{block}")
    # zero-initialised output: an untrained network predicts v = 0, a stable start
    outputs = layers.Conv2D(channels, 1, kernel_initializer="zeros", name="velocity", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def warm_start(network: keras.Model, source: keras.Model) -> list[str]:
    """Copies `source`'s weights into `network`'s layers of the same name and shapes (a conditional
    denoiser from an unconditional one); returns the names of `network`'s layers left as built.
    Raises when a layer of the same name has other shapes (another design, not a warm start)."""
    known = {layer.name: layer for layer in source.layers}
    fresh = []
    for layer in network.layers:
        if not layer.weights:
            continue
        if layer.name not in known:
            fresh.append(layer.name)
            continue
        weights = known[layer.name].get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            raise InputError(f"warm start: layer {layer.name!r} has weights of shapes "
                             f"{[tuple(w.shape) for w in layer.weights]} here and {[w.shape for w in weights]} in "
                             f"{source.name!r}; accepted: a network of the same design (widths, blocks, embedding_dims)")
        layer.set_weights(weights)
    return fresh
