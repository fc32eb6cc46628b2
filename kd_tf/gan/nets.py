"""DCGAN generator and discriminator for 28x28 single-channel digits (Radford et al., 2016).

generator:     z -> Dense(7*7*w0) -> BN, ReLU -> [ConvTranspose(w_i, 4, stride 2) -> BN, ReLU] x 2
               -> Conv(1, 3) -> tanh, an image in [-1, 1]
discriminator: image -> [Conv(w_i, 4, stride 2) -> LeakyReLU(0.2)] x 2 -> Dense(1), a logit

The generator's batch normalisation is `synchronized`: under tf.distribute its batch statistics
are those of the global batch, so R replicas train exactly as one device (tests/test_distribute.py::test_gan_mirrored_two_replicas_match_one_device_with_the_global_batch).
The discriminator has no normalisation (nor dropout): its output for one image never depends on
the rest of the batch, which the R1 penalty and the replica equality need. Layers are named
`project`, `up0`, `up1`, `image` in every generator so that feature pairs line up by name.
"""

from __future__ import annotations

import keras
from keras import layers

SIZE, CHANNELS = 28, 1


def build_generator(latent_dim: int = 64, widths=(128, 64, 32), name: str = "generator") -> keras.Model:
    """A DCGAN generator: latent (latent_dim,) -> image (28, 28, 1) in [-1, 1]; widths: channels at
    7x7, 14x14, 28x28."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"generator widths={widths!r} is not accepted; expected three positive ints "
                         f"(channels at 7x7, 14x14, 28x28)")
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim={latent_dim!r} is not accepted; expected an int >= 1")
    z = keras.Input(shape=(int(latent_dim),), name="latent")
    x = layers.Dense(7 * 7 * widths[0], use_bias=False, name="dense")(z)
    x = layers.Reshape((7, 7, widths[0]), name="reshape")(x)
    x = layers.BatchNormalization(synchronized=True, name="dense_bn")(x)
    x = layers.ReLU(name="project")(x)
    for i, width in enumerate(widths[1:]):
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"up{i}_conv")(x)
        x = layers.BatchNormalization(synchronized=True, name=f"up{i}_bn")(x)
        x = layers.ReLU(name=f"up{i}")(x)
    x = layers.Conv2D(CHANNELS, 3, padding="same", name="to_image")(x)
    image = layers.Activation("tanh", name="image", dtype="float32")(x)
    return keras.Model(z, image, name=name)


def build_discriminator(widths=(64, 128), name: str = "discriminator", input_shape=(SIZE, SIZE, CHANNELS)) -> keras.Model:
    """A DCGAN discriminator: image in [-1, 1] -> one logit (real > 0)."""
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"discriminator widths={widths!r} is not accepted; expected a list of positive ints")
    image = keras.Input(shape=tuple(input_shape), name="image")
    x = image
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 4, strides=2, padding="same", name=f"down{i}_conv")(x)
        x = layers.LeakyReLU(0.2, name=f"down{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    logit = layers.Dense(1, name="logit", dtype="float32")(x)
    return keras.Model(image, logit, name=name)
