"""The denoising task: noisy photos in, clean photos out.

- `config`: its job schemas (`train-teacher`, `distill`, `evaluate`, `export`);
- `jobs`: training the U-Net teacher, distillation (assistant, fine-tuning, chains), evaluation,
  the `denoise` verb; `unlabeled`: distillation on degraded photos with no clean versions;
  `export_job`: the student to every deployable format with its int8 parity report;
- `nets`: the residual U-Nets (teacher and students); `inherit`: a student starting from its
  teacher's strongest channels; `ffdnet`: FFDNet's published weights as a Keras teacher;
- `evaluation`: the held-out report against the classical `baselines` (NL-means, CBM3D); whether
  the int8 student keeps its colours is the core's kd_tf.int8_parity (the SR task uses it too).

Its images, noise and patches come from the core (kd_tf.images, kd_tf.degradations,
kd_tf.photo_corpus), which the super-resolution task shares.
"""
