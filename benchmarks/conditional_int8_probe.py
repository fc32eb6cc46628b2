"""Why a class-conditional sampler loses more to full-integer int8 than to dynamic-range int8: the
4-step conditional diffusion student of progressive distillation (session 20's, before the adversarial
fine-tune that ships now; its network is kept in models/diffusion/conditional/stages/), scored (FID etc., kd_tf.generators.Scorer, the
distillation report's eval settings) as float, as float fed noise rounded the way the full-integer
file's input is, as float given only the class code the full-integer file reads, and as its full-
integer and dynamic-range TFLite files; and, per noise draw, which samples the full-integer file
draws unlike the float one and how close their two largest class entries were.

    python -m benchmarks.conditional_int8_probe  # writes benchmarks/conditional_int8_probe.json (~6 min)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import tempfile
from pathlib import Path

import numpy as np

from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
PAIR = MODELS_DIR / "diffusion" / "conditional"
NETWORK = PAIR / "stages" / "student_denoiser_4_steps.keras"
CLASSES, SAMPLES, DRAWS = 10, 2000, 256
UNLIKE = 0.1                      # per-sample MSE (model range [-1, 1]) above which an image is another drawing


def input_quantization(path: Path) -> tuple[float, int]:
    """(scale, zero point) of the tensor the full-integer file's first QUANTIZE op writes: the noise as int8."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    ops = interpreter._get_ops_details()                     # noqa: SLF001 - LiteRT has no public op walk
    first = next(op for op in ops if op["op_name"] == "QUANTIZE")["outputs"][0]
    scale, zero = next(d for d in interpreter.get_tensor_details() if d["index"] == first)["quantization"]
    return float(scale), int(zero)


def main() -> int:
    from kd_tf.digits import load_digits
    from kd_tf.generators import Scorer, export_generator, keras_generate, tflite_generate
    from kd_tf.diffusion.sampler import as_generator
    from kd_tf.model_io import load_model

    eval_config = json.loads((PAIR / "distill_report.json").read_text())["config"]["eval"]
    digits = load_digits("auto")
    scorer = Scorer(eval_config["classifier"], digits.test_images, eval_config["collapse_ratio"], eval_config["seed"], "")
    def generator():
        return as_generator(load_model(NETWORK), 4)

    generate = keras_generate(generator())
    with tempfile.TemporaryDirectory() as workdir:
        files = {mode: export_generator(generator(), Path(workdir) / mode, mode=mode)
                 for mode in ("int8", "dynamic")}
        scale, zero = input_quantization(files["int8"])

        def rounded(z):                                      # the noise as the full-integer file sees it
            return ((np.clip(np.round(z / scale) + zero, -128, 127) - zero) * scale).astype(np.float32)

        def int8_class_code(z):                              # float noise, the class the int8 file reads
            z = np.array(z, np.float32)
            code = rounded(z[:, :CLASSES]).argmax(1)             # ties: the first, as TFLite's ARG_MAX
            z[np.arange(len(z)), code] = z[:, :CLASSES].max(1) + 1e-3
            return z

        arms = {"float": generate,
                "float, noise rounded as the int8 file's input": lambda z: generate(rounded(np.asarray(z))),
                "float, the int8 file's class code": lambda z: generate(int8_class_code(z)),
                "full-integer int8": tflite_generate(files["int8"])[1],
                "dynamic-range int8": tflite_generate(files["dynamic"])[1]}
        rows = {}
        for name, arm in arms.items():
            row = scorer(arm, SAMPLES, 784, name=name)
            rows[name] = {key: row[key] for key in ("fid", "kid", "precision", "recall", "recognized")}
            print(name, rows[name], flush=True)
        z = np.random.default_rng(5).standard_normal((DRAWS, 784)).astype(np.float32)
        error = ((np.asarray(arms["full-integer int8"](z)) - np.asarray(generate(z))) ** 2).mean((1, 2, 3))
    top2 = np.sort(z[:, :CLASSES], axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    unlike = error > UNLIKE
    flips = rounded(z[:, :CLASSES]).argmax(1) != z[:, :CLASSES].argmax(1)
    results = {"generator": f"as_generator({NETWORK.relative_to(MODELS_DIR.parent)}, 4)", "samples": SAMPLES,
               "input_scale": scale, "input_zero_point": zero, "rows": rows,
               "fid_over_float": {name: row["fid"] / rows["float"]["fid"] for name, row in rows.items()},
               "per_draw": {"draws": DRAWS, "unlike_float": int(unlike.sum()),
                            "unlike_float_with_top_two_within_0.025": int((unlike & (gaps < 0.025)).sum()),
                            "class_code_flipped_by_rounding": int(flips.sum()),
                            "mse_quantiles_50_90_99": np.quantile(error, [0.5, 0.9, 0.99]).tolist()}}
    (HERE / "conditional_int8_probe.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
