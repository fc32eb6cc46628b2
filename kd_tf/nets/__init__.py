"""Architectures: residual U-Net denoisers (teacher and student family)."""

from kd_tf.nets.unet import build_unet, stride_of

__all__ = ["build_unet", "stride_of"]
