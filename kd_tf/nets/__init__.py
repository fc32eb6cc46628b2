"""Architectures: residual U-Net denoisers, DCGAN generator/discriminator, digit feature classifier."""

from kd_tf.nets.classifier import build_classifier, feature_extractor
from kd_tf.nets.dcgan import build_discriminator, build_generator, latent_dim_of
from kd_tf.nets.inherit import inherit_from_teacher
from kd_tf.nets.unet import build_unet, stride_of

__all__ = ["build_classifier", "build_discriminator", "build_generator", "build_unet", "feature_extractor",
           "inherit_from_teacher", "latent_dim_of", "stride_of"]
