"""The GAN task: a small DCGAN generator of 28x28 digits taught by a larger one.

- `config`: its job schemas (`--task gan`, `train-classifier`);
- `jobs`: the feature classifier, the teacher GAN, distillation (with the from-scratch
  baseline), evaluation and export of saved generators;
- `nets`: the DCGAN generator and discriminator (class-conditional with `classes` > 0);
- `conditional`: class-conditional GANs whose class rides in z (sampler, projection objective,
  the Distiller and the GAN step on labeled batches, class accuracy, `generate --digit`).

What it shares with the diffusion task (digit sets, latents, FID/KID scoring, int8 export of a
generator, `generate`) is in the core: kd_tf.digits, kd_tf.classifier, kd_tf.generators.
"""
