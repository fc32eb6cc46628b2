"""kd_tf: knowledge distillation for image models on Keras 3 / TensorFlow.

`kd_tf.Distiller`, `kd_tf.load_model`, `kd_tf.save_model` and `kd_tf.schedules` load TensorFlow on
first use, so that `python -m kd_tf` can start it quietly (kd_tf.cli).
"""

import importlib

__all__ = ["Distiller", "load_model", "save_model", "schedules"]
__version__ = "0.1.0"

_LAZY = {"Distiller": ("kd_tf.distiller", "Distiller"), "load_model": ("kd_tf.model_io", "load_model"),
         "save_model": ("kd_tf.model_io", "save_model"), "schedules": ("kd_tf.schedules", None)}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'kd_tf' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
