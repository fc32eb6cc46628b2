"""Keras layers that kd_tf's saved models hold beyond Keras' own: pixel (un)shuffles in TF's order,
replicate padding to even sizes and its crop back, a non-blind denoiser's noise-level map, a
bilinear enlargement that traces with unknown image sizes, and the class a conditional generator's latent asks for.

Registered as `kd_tf>Name`, the names saved in models/**/*.keras (kd_tf.denoise.ffdnet's FFDNet
port, kd_tf.sr's upscalers): kd_tf.model_io.load_model imports this module before reading a file.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kd_tf")
class PadToEven(keras.layers.Layer):
    """Edge-replicates one row/column at the bottom/right of odd-sized images (KAIR's ReplicationPad2d).

    A 1-pixel SYMMETRIC pad repeats the edge pixel, which is what replicate padding does.
    """

    def call(self, images):
        shape = tf.shape(images)
        paddings = [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]]
        padded = tf.pad(images, paddings, mode="SYMMETRIC")
        # Padding by a tensor loses every static size, the channels too, and a TFLite convolution
        # after it needs them ("tf.Conv2D ... needs flex ops"); a reshape to the padded size with
        # the channels as a constant restores them (EnsureShape has no TFLite kernel).
        if images.shape[-1] is None:
            return padded
        size = tf.shape(padded)
        return tf.reshape(padded, tf.stack([size[0], size[1], size[2], images.shape[-1]]))

    def compute_output_shape(self, input_shape):
        def even(n):
            return None if n is None else n + n % 2
        return (input_shape[0], even(input_shape[1]), even(input_shape[2]), input_shape[3])


@keras.saving.register_keras_serializable(package="kd_tf")
class SpaceToDepth(keras.layers.Layer):
    """tf.nn.space_to_depth (output channel (i*block + j)*C + c): pixel-unshuffle in TF's order."""

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, images):
        return tf.nn.space_to_depth(images, self.block_size)

    def compute_output_shape(self, input_shape):
        b = self.block_size
        return (input_shape[0], None if input_shape[1] is None else input_shape[1] // b,
                None if input_shape[2] is None else input_shape[2] // b, input_shape[3] * b * b)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="kd_tf")
class DepthToSpace(keras.layers.Layer):
    """tf.nn.depth_to_space, the inverse of SpaceToDepth: pixel-shuffle in TF's order."""

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, features):
        return tf.nn.depth_to_space(features, self.block_size)

    def compute_output_shape(self, input_shape):
        b = self.block_size
        return (input_shape[0], None if input_shape[1] is None else input_shape[1] * b,
                None if input_shape[2] is None else input_shape[2] * b, input_shape[3] // (b * b))

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="kd_tf")
class NoiseLevelMap(keras.layers.Layer):
    """Appends the per-image noise level (batch, 1) as a constant last channel, as FFDNet's input map."""

    def call(self, inputs):
        features, sigma = inputs
        sigma = tf.reshape(tf.cast(sigma, features.dtype), [-1, 1, 1, 1])
        return tf.concat([features, tf.ones_like(features[..., :1]) * sigma], axis=-1)

    def compute_output_shape(self, input_shape):
        features_shape, _ = input_shape
        return (*features_shape[:-1], features_shape[-1] + 1)


@keras.saving.register_keras_serializable(package="kd_tf")
class CropLike(keras.layers.Layer):
    """Crops the first input to the height and width of the second (undoes PadToEven)."""

    def call(self, inputs):
        features, reference = inputs
        shape = tf.shape(reference)
        return features[:, :shape[1], :shape[2], :]

    def compute_output_shape(self, input_shape):
        features_shape, reference_shape = input_shape
        return (features_shape[0], reference_shape[1], reference_shape[2], features_shape[3])


@keras.saving.register_keras_serializable(package="kd_tf")
class BilinearUpscale(keras.layers.Layer):
    """Bilinear enlargement by `factor` that also traces with unknown height and width (Keras'
    UpSampling2D does not, which a SavedModel with dynamic H and W needs); TFLite's RESIZE_BILINEAR."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, images):
        size = tf.shape(images)[1:3] * self.factor
        return tf.cast(tf.image.resize(images, size, method="bilinear"), images.dtype)

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d * self.factor   # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="kd_tf")
class ClassCode(keras.layers.Layer):
    """The class a latent asks for: the argmax of its first `classes` entries (kd_tf.conditional_gan),
    as an int32 index for an Embedding.

    TFLite's ARG_MAX: in an int8 file the latent is rounded first and two entries can tie; ARG_MAX
    still names one class (the first). An index and an Embedding (GATHER) rather than a one-hot and
    a Dense: the int8 kernel of ONE_HOT writes its on/off values unscaled (a one-hot of 1.0 came out
    as 4.74 and 0 as 0.145), so a one-hot drowned the noise half of z in the int8 file.
    keras.ops.argmax is not used: its TF form handles signed zeros with a BitwiseAnd that TFLite lacks.
    """

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classes = int(classes)

    def call(self, z):
        return tf.argmax(z[:, :self.classes], axis=-1, output_type=tf.int32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def compute_output_spec(self, z):
        return keras.KerasTensor((z.shape[0],), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
