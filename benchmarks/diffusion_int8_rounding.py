"""Where the shipped 4-step class-conditional diffusion student loses FID to dynamic-range int8, and
what GPTQ weight rounding wins back: the student (the adversarially fine-tuned network of
models/diffusion/conditional/stages/) scored (kd_tf.generators.Scorer, the distillation report's
eval settings and 2,000 latents) as float; in Keras as its dynamic-range file computes
(kd_tf.weight_rounding.simulated_dynamic_int8) with only the weights rounded, only the activations,
both, and both with GPTQ-rounded weights (kd_tf.diffusion.jobs.int8_rounded, as the distill job
rounds them: 512 calibration noise draws of their own seed stream); and as the dynamic-range TFLite
files of the nearest-rounded and the GPTQ-rounded network.

    python -m benchmarks.diffusion_int8_rounding  # writes benchmarks/diffusion_int8_rounding.json (~10 min)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import tempfile
import time
from pathlib import Path

from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
PAIR = MODELS_DIR / "diffusion" / "conditional"
NETWORK = PAIR / "stages" / "student_denoiser_4_steps_adversarial.keras"
STEPS, SAMPLES = 4, 2000


def main() -> int:
    from kd_tf.diffusion.jobs import int8_rounded
    from kd_tf.diffusion.sampler import as_generator
    from kd_tf.digits import load_digits
    from kd_tf.generators import Scorer, export_generator, keras_generate, tflite_generate
    from kd_tf.model_io import load_model
    from kd_tf.weight_rounding import simulated_dynamic_int8

    report = json.loads((PAIR / "distill_report.json").read_text())
    eval_config, job = report["config"]["eval"], report["config"]
    digits = load_digits("auto")
    scorer = Scorer(eval_config["classifier"], digits.test_images, eval_config["collapse_ratio"], eval_config["seed"], "")
    network = load_model(NETWORK)
    started = time.time()
    gptq, layer_errors = int8_rounded(network, STEPS, job["int8_calibration_samples"], job["seed"])
    gptq_seconds = time.time() - started

    def keras_arm(model):
        return keras_generate(as_generator(model, STEPS))

    with tempfile.TemporaryDirectory() as workdir:
        files = {name: export_generator(as_generator(model, STEPS), Path(workdir) / name, mode="dynamic")
                 for name, model in (("nearest", network), ("gptq", gptq))}
        arms = {"float": keras_arm(network),
                "Keras, int8 weights (nearest) only": keras_arm(simulated_dynamic_int8(network, activations=False)),
                "Keras, int8 activations only": keras_arm(simulated_dynamic_int8(network, weights=False)),
                "Keras, int8 weights (nearest) and activations": keras_arm(simulated_dynamic_int8(network)),
                "Keras, int8 weights (GPTQ) and activations": keras_arm(
                    simulated_dynamic_int8(gptq, weights=False)),       # GPTQ's kernels already lie on the grid
                "TFLite dynamic range, nearest": tflite_generate(files["nearest"])[1],
                "TFLite dynamic range, GPTQ": tflite_generate(files["gptq"])[1]}
        rows = {}
        for name, arm in arms.items():
            row = scorer(arm, SAMPLES, 784, name=name)
            rows[name] = {key: row[key] for key in ("fid", "kid", "precision", "recall", "recognized")}
            print(name, rows[name], flush=True)
    results = {"network": str(NETWORK.relative_to(MODELS_DIR.parent)), "steps": STEPS, "samples": SAMPLES,
               "calibration_samples": job["int8_calibration_samples"], "gptq_seconds": gptq_seconds,
               "rows": rows, "fid_over_float": {name: row["fid"] / rows["float"]["fid"] for name, row in rows.items()},
               "layer_errors": layer_errors}
    (HERE / "diffusion_int8_rounding.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: results[key] for key in ("fid_over_float",)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
