"""The super-resolution task: an image `factor` times smaller in, the full-size image out.

Its degradation is kd_tf.degradations.Downscale (bicubic with antialiasing, as
`tf.image.resize(clean, size // factor, "bicubic", antialias=True)`); its nets are
`build_upscaler` (kd_tf.sr.nets).
"""

__all__ = ["build_upscaler"]


def __getattr__(name):
    """`build_upscaler` on first use (PEP 562): `kd_tf.sr.config` alone does not start TensorFlow."""
    if name != "build_upscaler":
        raise AttributeError(f"module 'kd_tf.sr' has no attribute {name!r}")
    from kd_tf.sr.nets import build_upscaler

    return build_upscaler
