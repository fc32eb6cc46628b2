"""The control arm of the conditional 4-step student's adversarial fine-tune: the same fine-tune
with its GAN term on (weight 0.1, as shipped) and off (weight 0: the MSE to the 8-step stage
sampler's samples alone, the discriminator still trained), paired: same start (the progressive
4-step student), seed, batches, schedule (Adam 5e-5, beta_1 0.5, cosine to 10 % over 600 steps) and
stop (after `--stop` steps), scored like the distillation report (its eval settings and score
cache, 2,000 samples).

    python -m benchmarks.diffusion_adversarial_control   # writes benchmarks/diffusion_adversarial_control.json
                                                          # (~20 min per arm on 2 AVX2 cores)

Each arm's network is kept under runs/diffusion-adversarial-control/ and not trained again (the
committed json's two networks were trained in session 21 by the same fine-tune built by hand in a /tmp
prototype, then placed there; every row was scored through the score cache).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import json
from pathlib import Path

from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
PAIR = MODELS_DIR / "diffusion" / "conditional"
CONFIG = "configs/diffusion/distill_conditional_adversarial.yaml"
SCHEDULE_STEPS = 600


def train(weight: float, stop: int, path: Path):
    """The shipped fine-tune (kd_tf.diffusion.adversarial_finetune, the report's settings) at GAN
    weight `weight`, stopped after `stop` of its 600 steps, saved to `path`."""
    import keras

    from kd_tf.digits import load_digits
    from kd_tf.diffusion.adversarial import adversarial_finetune
    from kd_tf.model_io import load_model, save_model

    class StopAfter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 >= stop:
                self.model.stop_training = True

    keras.utils.set_random_seed(0)
    digits = load_digits("auto")
    tuned = adversarial_finetune(
        load_model(PAIR / "stages" / "student_denoiser_4_steps.keras"), 4,
        load_model(PAIR / "stages" / "student_denoiser_8_steps.keras"), 8,
        load_model(MODELS_DIR / "gan" / "conditional" / "teacher_discriminator.keras"), digits.train_images,
        digits.train_labels, optimizer_steps=SCHEDULE_STEPS, student_loss_weight=weight, callbacks=[StopAfter()])
    save_model(tuned, path)


def main(argv=None) -> int:
    from kd_tf import config as cfg
    from kd_tf.diffusion.config import DiffusionDistillJobConfig
    from kd_tf.diffusion.jobs import COLLAPSE_ADVICE, ScoreCache, format_table
    from kd_tf.diffusion.nets import with_shared_noise_level
    from kd_tf.digits import load_digits
    from kd_tf.generators import Scorer
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop", type=int, default=200, help="fine-tune steps run (of the 600-step schedule)")
    args = parser.parse_args(argv)
    config = cfg.load(DiffusionDistillJobConfig, CONFIG)
    digits = load_digits(config.data.source)
    scorer = Scorer(config.eval.classifier, digits.test_images, config.eval.collapse_ratio, config.eval.seed,
                    COLLAPSE_ADVICE)
    scores = ScoreCache(Path(config.output.runs_dir) / "scores", config.eval, digits.source)
    folder = Path(config.output.runs_dir) / "diffusion-adversarial-control"
    rows = {"progressive 4-step student (the start)": scores.score(
        with_shared_noise_level(load_model(PAIR / "stages" / "student_denoiser_4_steps.keras")), 4, scorer,
        config.eval, "start")}
    for weight in (0.1, 0.0):
        path = folder / f"student_denoiser_4_steps_w{weight:g}_{args.stop}.keras"
        if not path.is_file():
            train(weight, args.stop, path)
        name = f"{args.stop} fine-tune steps, GAN weight {weight:g}" + (" (MSE only)" if weight == 0 else "")
        rows[name] = scores.score(with_shared_noise_level(load_model(path)), 4, scorer, config.eval, name)
    results = {"stop": args.stop, "schedule_steps": SCHEDULE_STEPS, "samples": config.eval.samples, "rows": rows,
               "table": format_table(rows)}
    (HERE / "diffusion_adversarial_control.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
