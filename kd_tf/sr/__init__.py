"""The super-resolution task: an image `factor` times smaller in, the full-size image out.

Its degradation is kd_tf.degradations.Downscale (bicubic with antialiasing, as
`tf.image.resize(clean, size // factor, "bicubic", antialias=True)`); its nets are
`build_upscaler` (kd_tf.sr.nets).
"""

from kd_tf.sr.nets import build_upscaler

__all__ = ["build_upscaler"]
