"""`DDIMSampler`: a velocity-predicting network and a step count as one Keras model, noise in,
image out.

An N-step sampler is then a teacher like any other for `kd_tf.Distiller` (the same noise goes to
teacher and student, and the output term matches their images), and a one- or few-step sampler
around a copy of the teacher's network is a student that starts where the teacher is (Luhman &
Luhman, 2021, distil the whole N-step map into one step). The sampler's image is the last step's
predicted clean image, in [0, 1] pixels, not clipped (so gradients reach a student's network).
A class-conditional network samples the class its noise asks for (kd_tf.layers.ClassCode: the
argmax of the noise image's first values, row-major, as a conditional GAN reads its latent, so
kd_tf.class_latents asks a sampler for a digit as it asks a generator), read once and given to the
network at every step: noise in, image out still, and teacher and student fed the same noise draw
the same digit.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kd_tf.diffusion.nets import denoiser_classes, shares_noise_level, with_class_input, with_shared_noise_level
from kd_tf.diffusion.schedule import ddim_step, step_times, to_pixels
from kd_tf.errors import InputError
from kd_tf.layers import ClassCode
from kd_tf.model_io import rebuild_wrapper


@keras.saving.register_keras_serializable(package="kd_tf")
class DDIMSampler(keras.Model):
    """`steps` deterministic DDIM steps of `network` from the noise image it is called on.

    >>> import numpy as np
    >>> from kd_tf.diffusion.nets import build_denoiser
    >>> sampler = DDIMSampler(build_denoiser(28, 1, (8, 16), 1), steps=4)
    >>> sampler(np.zeros((2, 28, 28, 1), "float32")).shape
    TensorShape([2, 28, 28, 1])
    """

    def __init__(self, network: keras.Model, steps: int, name: str | None = None, **kwargs):
        super().__init__(name=name or f"ddim_{int(steps)}_steps", **kwargs)
        if int(steps) < 1:
            raise InputError(f"steps={steps!r}; accepted: an int >= 1")
        self.network = network
        self.steps = int(steps)
        # one time per step for the whole batch where the network broadcasts it: constants that
        # the TFLite converter folds (see kd_tf.diffusion.nets), else one per sample
        self.shares_noise_level = shares_noise_level(network)
        self.image_shape = tuple(network.input_shape[0][1:])
        self.classes = denoiser_classes(network)
        self.class_code = ClassCode(self.classes, name="class_code") if self.classes else None
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        self.built = True

    @property
    def input_shape(self):            # what the Distiller reads: one noise image per sample
        return (None, *self.image_shape)

    @property
    def output_shape(self):
        return (None, *self.image_shape)

    def call(self, noise, training=False):
        return self._sample(noise, lambda x: self.network(x, training=training))

    def _sample(self, noise, network_call):
        noisy = tf.cast(noise, tf.float32)
        batch = 1 if self.shares_noise_level else tf.shape(noisy)[0]
        times = step_times(self.steps, batch) + [tf.zeros([batch, 1, 1, 1])]
        labels = self.class_code(tf.reshape(noisy, [tf.shape(noisy)[0], -1])) if self.classes else None
        network = with_class_input(network_call, labels)
        image = noisy
        for now, after in zip(times[:-1], times[1:]):
            noisy, image = ddim_step(network, noisy, now, after)
        return to_pixels(image)

    def network_inputs(self, noise, batch_size: int = 128) -> list[list[np.ndarray]]:
        """What the network is given at each step when the sampler runs on `noise` (N, H, W, C), as
        lists of arrays (noisy image, noise variance[, class]), batch by batch and step by step:
        the calibration data of its int8 weight rounding (kd_tf.weight_rounding), which must see
        the inputs of every step, since one set of weights serves all of them.

        >>> import numpy as np
        >>> from kd_tf.diffusion.nets import build_denoiser
        >>> sampler = DDIMSampler(build_denoiser(28, 1, (8, 16), 1), steps=2)
        >>> seen = sampler.network_inputs(np.ones((3, 28, 28, 1), "float32"), batch_size=2)
        >>> len(seen), [part.shape for part in seen[0]]         # 2 batches x 2 steps
        (4, [(2, 28, 28, 1), (1, 1, 1, 1)])
        """
        seen = []

        def recording(inputs):
            seen.append([np.asarray(part) for part in inputs])
            return self.network(inputs, training=False)

        for start in range(0, len(noise), batch_size):
            self._sample(noise[start:start + batch_size], recording)
        return seen

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        return rebuild_wrapper(cls, config, "network")


def as_generator(network: keras.Model, steps: int, name: str | None = None) -> keras.Model:
    """latent z (batch, H*W*C) -> `steps`-step DDIM samples in [-1, 1]: a sampler as a generator.

    >>> import numpy as np
    >>> from kd_tf.diffusion.nets import build_denoiser
    >>> generator = as_generator(build_denoiser(28, 1, (8, 16), 1), steps=2)
    >>> generator.input_shape, generator(np.zeros((3, 784), "float32")).shape
    ((None, 784), TensorShape([3, 28, 28, 1]))
    """
    shape = tuple(network.input_shape[0][1:])
    latent = keras.Input((int(np.prod(shape)),), name="latent")
    noise = keras.layers.Reshape(shape, name="noise_image")(latent)
    images = DDIMSampler(with_shared_noise_level(network), steps)(noise)   # int8-safe noise embedding
    signed = keras.layers.Rescaling(2.0, -1.0, dtype="float32", name="signed")(images)
    return keras.Model(latent, signed, name=name or f"ddim_{steps}_steps")
