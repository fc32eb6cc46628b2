"""The student's own objective: what it would minimise with no teacher at all.

An objective maps (inputs, targets, student output) to a per-sample loss. Reconstruction is the
denoising one; objectives that train a model of their own (a GAN discriminator) expose its
variables and optimizer here, never in the Distiller.
"""

from __future__ import annotations

from kd_tf.losses import output_loss


class Reconstruction:
    """Distance between the student's output and the clean target (MSE or L1)."""

    name = "reconstruction"

    def __init__(self, kind: str = "mse"):
        self.kind = kind
        self._distance = output_loss(kind)

    def __call__(self, inputs, targets, prediction):
        return self._distance(targets, prediction)

    def get_config(self):
        return {"name": self.name, "kind": self.kind}
