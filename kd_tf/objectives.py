"""The student's own objective: what it would minimise with no teacher at all.

An objective maps (inputs, targets, student output) to a per-sample loss, and may name one
quality measure (`metric_name`, `metric`) that the Distiller tracks. Reconstruction is the
denoising one; objectives that train a model of their own (a GAN discriminator) expose its
variables and optimizer here, never in the Distiller.
"""

from __future__ import annotations

import tensorflow as tf

from kd_tf.losses import output_loss
from kd_tf.metrics import psnr


class Reconstruction:
    """Distance between the student's output and the clean target (MSE or L1)."""

    name = "reconstruction"
    metric_name = "psnr"

    def __init__(self, kind: str = "mse"):
        self.kind = kind
        self._distance = output_loss(kind)

    def __call__(self, inputs, targets, prediction):
        return self._distance(targets, prediction)

    def metric(self, inputs, targets, prediction):
        """What a user watches: mean PSNR of the student against the clean image."""
        return tf.reduce_mean(psnr(targets, prediction))

    def get_config(self):
        return {"name": self.name, "kind": self.kind}
