"""The GAN task: a small DCGAN generator of 28x28 digits taught by a larger one.

- `config`: its job schemas (`--task gan`, `train-classifier`);
- `jobs`: the feature classifier, the teacher GAN, distillation (with the from-scratch
  baseline), evaluation and export of saved generators;
- `nets`: the DCGAN generator and discriminator.

What it shares with the diffusion task (digit sets, latents, FID/KID scoring, int8 export of a
generator, `generate`) is in the core: kd_tf.digits, kd_tf.classifier, kd_tf.generators.
"""
