"""kd_tf: knowledge distillation for image generation on Keras 3 / TensorFlow."""
