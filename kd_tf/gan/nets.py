"""DCGAN generator and discriminator for 28x28 single-channel digits (Radford et al., 2016).

generator:     z -> Dense(7*7*w0) -> BN, ReLU -> [ConvTranspose(w_i, 4, stride 2) -> BN, ReLU] x 2
               -> Conv(1, 3) -> tanh, an image in [-1, 1]
discriminator: image -> [Conv(w_i, 4, stride 2) -> LeakyReLU(0.2)] x 2 -> Dense(1), a logit

The generator's batch normalisation is `synchronized`: under tf.distribute its batch statistics
are those of the global batch, so R replicas train exactly as one device (tests/test_distribute.py::test_gan_mirrored_two_replicas_match_one_device_with_the_global_batch).
The discriminator has no normalisation (nor dropout): its output for one image never depends on
the rest of the batch, which the R1 penalty and the replica equality need. Layers are named
`project`, `up0`, `up1`, `image` in every generator so that feature pairs line up by name.

With `classes` > 0 both are class-conditional (kd_tf.conditional_gan): the generator reads its class
from z (the argmax of its first `classes` entries, `class_code`) and adds the class's embedding to
its first dense layer's output (the same function as a dense layer on z and a one-hot code); the
discriminator takes (image, one-hot label) and adds a projection term, the inner product of the
label's embedding with its image features (Miyato & Koyama, 2018), to the unconditional logit.
"""

from __future__ import annotations

import keras
from keras import layers

from kd_tf.layers import ClassCode

SIZE, CHANNELS = 28, 1


def _check_classes(classes, latent_dim=None):
    limit = int(latent_dim) if latent_dim is not None else None
    if int(classes) != 0 and (int(classes) < 2 or (limit is not None and int(classes) > limit)):
        raise ValueError(f"classes={classes!r} is not accepted; expected 0 (unconditional) or an int from 2 to "
                         f"{'the latent size' if limit is None else limit}")
    return int(classes)


def build_generator(latent_dim: int = 64, widths=(128, 64, 32), name: str = "generator",
                    classes: int = 0) -> keras.Model:
    """A DCGAN generator: latent (latent_dim,) -> image (28, 28, 1) in [-1, 1]; widths: channels at
    7x7, 14x14, 28x28; classes > 0: the class is the argmax of z[:classes] (kd_tf.conditional_gan)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"generator widths={widths!r} is not accepted; expected three positive ints "
                         f"(channels at 7x7, 14x14, 28x28)")
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim={latent_dim!r} is not accepted; expected an int >= 1")
    classes = _check_classes(classes, latent_dim)
    z = keras.Input(shape=(int(latent_dim),), name="latent")
    x = layers.Dense(7 * 7 * widths[0], use_bias=False, name="dense")(z)
    if classes:
        embedding = layers.Embedding(classes, 7 * 7 * widths[0], name="class_embedding")(
            ClassCode(classes, name="class_code")(z))
        x = layers.Add(name="dense_and_class")([x, embedding])
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


def build_discriminator(widths=(64, 128), name: str = "discriminator", input_shape=(SIZE, SIZE, CHANNELS),
                        classes: int = 0) -> keras.Model:
    """A DCGAN discriminator: image in [-1, 1] -> one logit (real > 0); classes > 0: it takes
    [image, one-hot label] and adds the projection term."""
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
    if not _check_classes(classes):
        return keras.Model(image, logit, name=name)
    label = keras.Input(shape=(int(classes),), name="label")
    embedding = layers.Dense(x.shape[-1], use_bias=False, name="label_embedding")(label)
    projection = layers.Dot(axes=1, name="projection", dtype="float32")([x, embedding])
    logit = layers.Add(name="conditional_logit", dtype="float32")([logit, projection])
    return keras.Model([image, label], logit, name=name)
