"""The diffusion task: a DDIM teacher whose N-step sampler teaches few-step students.

- `schedule`: the continuous-time cosine noise schedule (keras.io's DDIM example's) and DDIM steps;
- `nets`: the velocity-predicting U-Net with a sinusoidal noise embedding (and, class-conditional,
  a class embedding: its sampler reads the class from the noise, as a conditional GAN reads its
  latent, kd_tf.class_latents; `warm_start` starts it from an unconditional network);
- `model.DiffusionModel`: trains that network with `fit()` (noise prediction, EMA weights);
- `sampler.DDIMSampler`: a network and a step count as a Keras model, noise in, image out, so
  that an N-step sampler is a `kd_tf.Distiller` teacher like any other (one-step students:
  Luhman & Luhman, 2021);
- `progressive`: progressive distillation (Salimans & Ho, 2022) as multi-stage distillation
  through the same `Distiller`: N -> N/2 -> ... -> 1 steps, each stage's teacher the student
  before it, each target two teacher DDIM steps folded into one;
- `adversarial`: a GAN-loss fine-tune of a few-step student beside the MSE to its stage teacher.
"""

import importlib

# Imported on first use (PEP 562), so that `kd_tf.diffusion.config` (the CLI's job list) does not
# start TensorFlow: `python -m kd_tf config` stays quiet and quick.
_EXPORTS = {"DDIMSampler": "sampler", "adversarial_finetune": "adversarial", "as_generator": "sampler", "DiffusionModel": "model", "TwoStepTarget": "progressive",
            "XPrediction": "progressive", "build_denoiser": "nets", "progressive_distillation": "progressive",
            "stage_dataset": "progressive"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kd_tf.diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kd_tf.diffusion.{_EXPORTS[name]}"), name)
