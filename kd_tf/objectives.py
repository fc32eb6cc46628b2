"""The student's own objective: what it would minimise with no teacher at all.

An objective maps (inputs, targets, student output) to a per-sample loss, and may name one
quality measure (`metric_name`, `metric`) that the Distiller tracks. Reconstruction is the
denoising one; objectives that train a model of their own (a GAN discriminator) expose its
variables and optimizer here, never in the Distiller.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kd_tf.distribute import global_batch_size, mean_results
from kd_tf.losses import output_loss, serialize_loss
from kd_tf.metrics import psnr
from kd_tf.model_io import frozen_copy, make_trainable, require_trainable, trainable_copy
from kd_tf.errors import InputError


class Reconstruction:
    """Distance between the student's output and the clean target: "mse", "l1", any Keras loss
    (name or object) or a callable, as kd_tf.losses.output_loss takes it. `Distiller.compile(loss=...)`
    sets it."""

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
        return {"name": self.name, "kind": serialize_loss(self.kind)}


ADVERSARIAL_LOSSES = ("non-saturating", "hinge")


class Adversarial:
    """The generator's own loss against a discriminator that keeps learning from its fakes.

    It owns the discriminator (start it from the teacher's: a clone with copied weights, see
    `clone_discriminator`), the discriminator's optimizer, the loss kind (non-saturating or
    hinge), `d_steps` discriminator updates per generator step and an optional R1 penalty
    (Mescheder et al., 2018) on real images. The Distiller calls `discriminator_step(real, fake)`
    after its generator step, with the fakes of that step's single student forward pass; they
    are constants there, so the discriminator phase never touches the student.

    Under tf.distribute build it in `strategy.scope()`: the discriminator's losses are averaged
    over the global batch, and its optimizer sums the replicas' gradients, as the Distiller does.
    """

    name = "adversarial"
    metric_name = None

    def __init__(self, discriminator, optimizer=None, loss: str = "non-saturating", d_steps: int = 1,
                 r1_weight: float = 0.0):
        if loss not in ADVERSARIAL_LOSSES:
            raise InputError(f"adversarial loss {loss!r} is not accepted; expected one of {ADVERSARIAL_LOSSES}")
        if not isinstance(d_steps, int) or d_steps < 1:
            raise InputError(f"d_steps={d_steps!r} is not accepted; expected an int >= 1")
        if not r1_weight >= 0:
            raise InputError(f"r1_weight={r1_weight!r} is not accepted; expected a float >= 0")
        self.discriminator = make_trainable(discriminator, "discriminator")
        self.optimizer = optimizer if optimizer is not None else keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.optimizer.build(discriminator.trainable_variables)   # here, so a checkpoint always holds its state
        self.kind, self.d_steps, self.r1_weight = loss, d_steps, float(r1_weight)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.real_tracker = keras.metrics.Mean(name="d_real_logit")
        self.fake_tracker = keras.metrics.Mean(name="d_fake_logit")
        self.r1_tracker = keras.metrics.Mean(name="r1") if self.r1_weight else None

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.real_tracker, self.fake_tracker] + ([self.r1_tracker] if self.r1_tracker else [])

    def trackables(self) -> dict:
        """What a checkpoint of the training model must hold besides the student."""
        return {"discriminator": self.discriminator, "discriminator_optimizer": self.optimizer}

    def check_prediction_shape(self, shape):
        """The discriminator must take what the generator makes (checked before any training)."""
        expected = tuple(self.discriminator.input_shape[1:])
        if tuple(shape[1:]) != expected:
            raise InputError(f"the discriminator takes inputs of shape {expected}, but the generator makes "
                             f"{tuple(shape[1:])}; build the discriminator for the generator's output")

    def _logits(self, images):
        return tf.reshape(tf.cast(self.discriminator(images, training=True), tf.float32), [-1])

    def __call__(self, inputs, targets, prediction):
        """Per-sample generator loss: softplus(-D(G(z))) (non-saturating) or -D(G(z)) (hinge)."""
        logits = self._logits(prediction)
        return tf.nn.softplus(-logits) if self.kind == "non-saturating" else -logits

    def _discriminator_terms(self, real, fake):
        if self.r1_weight:
            with tf.GradientTape() as tape:
                tape.watch(real)
                real_logits = self._logits(real)
                summed = tf.reduce_sum(real_logits)      # inside the tape: its gradient is the per-image slope
            slopes = tape.gradient(summed, real)
            r1 = tf.reduce_sum(tf.reshape(tf.square(slopes), [tf.shape(real)[0], -1]), axis=1)
        else:
            real_logits, r1 = self._logits(real), None
        fake_logits = self._logits(fake)
        if self.kind == "non-saturating":
            per_sample = tf.nn.softplus(-real_logits) + tf.nn.softplus(fake_logits)
        else:
            per_sample = tf.nn.relu(1.0 - real_logits) + tf.nn.relu(1.0 + fake_logits)
        if r1 is not None:
            per_sample = per_sample + 0.5 * self.r1_weight * r1
        return per_sample, real_logits, fake_logits, r1

    def discriminator_step(self, real, fake):
        """`d_steps` updates of the discriminator only, on this step's real images and fakes
        (the same batch each time: no second student pass). Loss averaged over the global batch."""
        real = tf.cast(real, tf.float32)
        fake = tf.stop_gradient(tf.cast(fake, tf.float32))
        samples = tf.shape(real)[0]
        total = global_batch_size(samples)
        variables = self.discriminator.trainable_variables
        for _ in range(self.d_steps):
            with tf.GradientTape() as tape:
                per_sample, real_logits, fake_logits, r1 = self._discriminator_terms(real, fake)
                loss = tf.nn.compute_average_loss(per_sample, global_batch_size=total)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
        weight = tf.cast(samples, tf.float32)
        self.d_loss_tracker.update_state(tf.reduce_mean(per_sample), sample_weight=weight)
        self.real_tracker.update_state(tf.reduce_mean(real_logits), sample_weight=weight)
        self.fake_tracker.update_state(tf.reduce_mean(fake_logits), sample_weight=weight)
        if self.r1_tracker is not None:
            self.r1_tracker.update_state(tf.reduce_mean(r1), sample_weight=weight)

    def get_config(self):
        return {"name": self.name, "loss": self.kind, "d_steps": self.d_steps, "r1_weight": self.r1_weight}


def clone_discriminator(discriminator, name: str = "discriminator"):
    """A trainable copy of a (teacher's) discriminator with the same weights: the objective trains
    the copy, so the shipped teacher discriminator never changes."""
    return trainable_copy(discriminator, "discriminator")


class AdversarialTraining(keras.Model):
    """A generator trained by its adversarial objective alone, no teacher: how the teacher GAN is
    trained, and the from-scratch baseline of the same student. It is the Distiller's GAN step
    without the teacher terms (a teacher pass would cost the baseline 10x its own compute).

    fit() on batches of real images; under tf.distribute: global-batch means, as the Distiller.
    With `ema` > 0, `ema_generator` follows the generator's weights as an exponential moving average
    after every step (as keras.io's DDIM example does for its network; StyleGAN and BigGAN sample
    from such an average): it smooths the oscillation of adversarial training, and it is what the
    teacher job scores and ships. Single replica only: the average is updated in place.
    """

    def __init__(self, generator, objective: Adversarial, latent_sampler, ema: float = 0.0, name: str = "gan",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(ema) < 1.0:
            raise InputError(f"ema={ema!r}; accepted: 0 (off) or a momentum 0 < ema < 1, e.g. 0.999")
        if ema and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise InputError(f"ema={ema!r} under {tf.distribute.get_strategy().num_replicas_in_sync} replicas; "
                             f"accepted: ema=0 with tf.distribute, or one replica")
        require_trainable(generator, "generator")
        self.generator, self.objective, self.latent_sampler = generator, objective, latent_sampler
        self.ema, self.ema_generator = float(ema), None
        if self.ema:
            self.ema_generator = frozen_copy(generator)
        for key, value in objective.trackables().items():      # checkpointed with the generator
            setattr(self, f"objective_{key}", value)
        objective.check_prediction_shape(tuple(generator.output_shape))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, *self.objective.metrics]

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def panels(self, z) -> dict:
        panels = {"generator": self.generator(z, training=False)}
        if self.ema_generator is not None:
            panels["generator (EMA)"] = self.ema_generator(z, training=False)
        return panels

    def train_step(self, data):
        real, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        z = self.latent_sampler(tf.shape(real)[0], self.optimizer.iterations)
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            fake = tf.cast(self.generator(z, training=True), tf.float32)
            per_sample = self.objective(z, real, fake)
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size(tf.shape(real)[0]))
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        if self.ema_generator is not None:
            for weight, average in zip(self.generator.weights, self.ema_generator.weights):
                average.assign(self.ema * average + (1.0 - self.ema) * weight)
        self.objective.discriminator_step(real, fake)
        self.loss_tracker.update_state(tf.reduce_mean(per_sample), sample_weight=tf.cast(tf.shape(real)[0], tf.float32))
        return mean_results(self.metrics)
