"""The diffusion task: a DDIM teacher whose N-step sampler teaches few-step students.

- `schedule`: the continuous-time cosine noise schedule (keras.io's DDIM example's) and DDIM steps;
- `nets`: the noise-predicting U-Net with a sinusoidal noise embedding;
- `model.DiffusionModel`: trains that network with `fit()` (noise prediction, EMA weights);
- `sampler.DDIMSampler`: a network and a step count as a Keras model, noise in, image out, so
  that an N-step sampler is a `kd_tf.Distiller` teacher like any other (one-step students:
  Luhman & Luhman, 2021);
- `progressive`: progressive distillation (Salimans & Ho, 2022) as multi-stage distillation
  through the same `Distiller`: N -> N/2 -> ... -> 1 steps, each stage's teacher the student
  before it, each target two teacher DDIM steps folded into one.
"""

from kd_tf.diffusion.model import DiffusionModel
from kd_tf.diffusion.nets import build_denoiser
from kd_tf.diffusion.progressive import TwoStepTarget, XPrediction, progressive_distillation, stage_dataset
from kd_tf.diffusion.sampler import DDIMSampler

__all__ = ["DDIMSampler", "DiffusionModel", "TwoStepTarget", "XPrediction", "build_denoiser",
           "progressive_distillation", "stage_dataset"]
