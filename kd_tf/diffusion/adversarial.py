"""An adversarial fine-tune of a few-step student sampler (the issue's "adversarial term on the
few-step student"; Sauer et al., 2023, adversarial diffusion distillation, do it from scratch).

Each progressive stage regresses two teacher steps onto one with an MSE, so each halving
averages over what it cannot fit and the errors compound: a 4-step student's digits are blurrier
than its teacher's. Here the few-step sampler, unrolled as a generator (noise in, image out,
`as_generator`), keeps the output MSE to its stage's teacher sampler (twice its steps, the same
noise, a `kd_tf.Distiller` term) and gains the GAN objective against a discriminator of real
digits (`kd_tf.objectives.Adversarial`; class-conditional samplers: the projection
discriminator of `kd_tf.conditional_gan`, told the class the noise asks for). Start the
discriminator from a trained one (the GAN task's): a fresh one first teaches noise.

>>> import numpy as np
>>> from kd_tf.diffusion.nets import build_denoiser
>>> net = build_denoiser(28, 1, (8, 16), 1)
>>> critic = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
>>> digits = np.zeros((16, 28, 28), np.uint8)
>>> tuned = adversarial_finetune(net, 1, net, 2, critic, digits, optimizer_steps=1, batch_size=8)
>>> tuned is net, tuned.count_params() == net.count_params()
(False, True)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from kd_tf.errors import InputError

log = logging.getLogger(__name__)


def adversarial_path(folder, steps: int) -> Path:
    """Where a fine-tuned `steps`-step network is kept: `folder`/student_denoiser_{steps}_steps_adversarial.keras."""
    return Path(folder) / f"student_denoiser_{int(steps)}_steps_adversarial.keras"


def adversarial_finetune(network: keras.Model, steps: int, teacher: keras.Model, teacher_steps: int,
                         discriminator: keras.Model, images: np.ndarray, labels: np.ndarray | None = None,
                         optimizer_steps: int = 600, batch_size: int = 64, learning_rate: float = 5e-5,
                         final_learning_rate_fraction: float = 0.1, student_loss_weight: float = 0.1,
                         discriminator_learning_rate: float = 2e-4, seed: int = 0, callbacks=(),
                         saved=None) -> keras.Model:
    """A copy of `network` whose `steps`-step sampler trained `optimizer_steps` steps against a copy
    of `discriminator`, its loss (1 - w) * MSE to `teacher`'s `teacher_steps`-step samples of the
    same noise + w * the non-saturating GAN loss (w = `student_loss_weight`).

    `images`: the real digits (N x 28 x 28 uint8, as `kd_tf.digits.load_digits` gives them); a
    class-conditional `network` needs their int `labels` and a discriminator of (image, one-hot
    label) pairs. Adam with beta_1 = 0.5 (as the GAN task's) at `learning_rate`, decaying along a
    cosine to `final_learning_rate_fraction` of it; the discriminator's Adam at
    `discriminator_learning_rate`. Neither `network`, `teacher` nor `discriminator` changes. With
    `saved` (a .keras path), the result is saved there with its cost beside it (.json) and a rerun
    loads it instead of training again.
    """
    from kd_tf.atomic import write_text_atomically
    from kd_tf.conditional_gan import (ClassLatentSampler, ConditionalAdversarial, ConditionalDistiller,
                                       labeled_real_dataset)
    from kd_tf.digits import real_dataset
    from kd_tf.diffusion.nets import denoiser_classes, with_shared_noise_level
    from kd_tf.diffusion.sampler import as_generator
    from kd_tf.distiller import Distiller
    from kd_tf.generators import LatentSampler
    from kd_tf.model_io import frozen_copy, load_model, save_model, trainable_copy
    from kd_tf.objectives import Adversarial, clone_discriminator

    if saved is not None and Path(saved).is_file():
        log.info("adversarial fine-tune of the %d-step student already done, loaded %s", steps, saved)
        return load_model(saved)
    if int(optimizer_steps) < 1 or not 0 <= float(student_loss_weight) <= 1 or not 0 < final_learning_rate_fraction <= 1:
        raise InputError(f"optimizer_steps={optimizer_steps!r}, student_loss_weight={student_loss_weight!r}, "
                         f"final_learning_rate_fraction={final_learning_rate_fraction!r}; accepted: an int >= 1, "
                         "a float in [0, 1] and a float in (0, 1]")
    classes = denoiser_classes(network)
    if classes != denoiser_classes(teacher):
        raise InputError(f"the student network is conditioned on {classes} classes, its teacher "
                         f"{teacher.name!r} on {denoiser_classes(teacher)}; accepted: the same")
    inputs = len(discriminator.inputs)
    if inputs != (2 if classes else 1):
        raise InputError(f"discriminator {discriminator.name!r} takes {inputs} input(s); accepted for a "
                         + (f"network conditioned on {classes} classes: (image, one-hot label) pairs, as "
                            "kd_tf.gan.nets.build_discriminator(classes=...) makes" if classes
                            else "class-free network: images only"))
    if classes and labels is None:
        raise InputError(f"network {network.name!r} is conditioned on {classes} classes; accepted: the images' "
                         "int labels as `labels`")
    student_network = trainable_copy(with_shared_noise_level(network), "student")
    teacher_network = frozen_copy(with_shared_noise_level(teacher))
    student, teacher_sampler = as_generator(student_network, steps), as_generator(teacher_network, teacher_steps)
    latent = int(student.input_shape[-1])
    critic = clone_discriminator(discriminator)
    critic_optimizer = keras.optimizers.Adam(discriminator_learning_rate, beta_1=0.5)
    if classes:
        objective = ConditionalAdversarial(critic, critic_optimizer)
        distiller = ConditionalDistiller(teacher_sampler, student, student_loss_weight=float(student_loss_weight),
                                         objective=objective, latent_sampler=ClassLatentSampler(latent, classes, seed))
        data = labeled_real_dataset(images, np.asarray(labels, np.int64), classes, batch_size, seed)
    else:
        distiller = Distiller(teacher_sampler, student, student_loss_weight=float(student_loss_weight),
                              objective=Adversarial(critic, critic_optimizer), latent_sampler=LatentSampler(latent, seed))
        data = real_dataset(images, batch_size, seed)
    schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate), int(optimizer_steps),
                                                      alpha=float(final_learning_rate_fraction))
    distiller.compile(optimizer=keras.optimizers.Adam(schedule, beta_1=0.5))
    log.info("adversarial fine-tune of the %d-step student: %d steps at %g, GAN weight %g, teacher %d steps",
             steps, optimizer_steps, learning_rate, student_loss_weight, teacher_steps)
    started = time.time()
    history = distiller.fit(data, epochs=1, steps_per_epoch=int(optimizer_steps), verbose=0, shuffle=False,
                            callbacks=list(callbacks))
    if saved is not None:
        save_model(student_network, saved)
        write_text_atomically(Path(saved).with_suffix(".json"), json.dumps(
            {"steps": int(steps), "teacher_steps": int(teacher_steps), "seconds": time.time() - started,
             "optimizer_steps": int(optimizer_steps), "learning_rate": float(learning_rate),
             "student_loss_weight": float(student_loss_weight),
             "final": {name: float(values[-1]) for name, values in history.history.items()}}))
    return student_network
