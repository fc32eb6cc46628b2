"""kd_tf: knowledge distillation for image generation on Keras 3 / TensorFlow."""

from kd_tf import schedules
from kd_tf.distiller import Distiller
from kd_tf.model_io import load_model, save_model

__all__ = ["Distiller", "load_model", "save_model", "schedules"]
__version__ = "0.1.0"
