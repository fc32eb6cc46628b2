"""int8 against float for a TFLite file already exported (issue 17), as the export report measures it.

    python -m benchmarks.int8_parity --model models/denoise/student.keras \
        --int8 models/denoise/student_int8.tflite [--float32 F.tflite] [--noise-draws N] [--out report.json]
    python -m benchmarks.int8_parity --generator models/gan/student_generator.keras \
        --int8 models/gan/student_generator_int8.tflite [--out report.json]

Denoiser: kd_tf.int8_parity's synthetic colour set, the embedded held-out photos and the photo
corpus's held-out set 2 when it is there (per-image PSNR drop, mean per-channel shift, worst
image). With --float32, the latency of both TFLite files at 1 and 2 threads on a 512x512 input,
measured alternately (so a busy machine slows both alike), and their sizes.
Generator: fixed latents, per-sample PSNR of the int8 image against the float one and the mean
intensity shift (kd_tf.generators.generator_parity).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def alternating_latency_ms(models: dict, size: int = 512, repeats: int = 15) -> dict:
    from benchmarks.tflite_speed import alternating_median_ms

    batch = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    return alternating_median_ms(models, batch, repeats)


def colour_over_noise_draws(colour: dict, first_seed: int = 2024) -> dict:
    """The single draws behind a parity report's colour set scored on several noise draws
    (kd_tf.int8_parity.image_parity(draws=...)), summarized by `summarize_draws`."""
    from kd_tf.int8_parity import draw_seeds

    drops = {name: row["drop_db_draws"] for name, row in colour["per_image"].items()}
    return summarize_draws(draw_seeds(first_seed, colour["noise_draws"]), drops)


def summarize_draws(seeds: list, drops: dict[str, list]) -> dict:
    """Each image's drop averaged over the draws; the set's mean drop, signed and as |drop| over
    every draw of every image (the mean each draw's parity check judges, kd_tf.int8_parity.summarize,
    averaged over the draws), and the images whose average lies beyond 0.2 dB either way."""
    from kd_tf.int8_parity import TARGET_MAX_DROP_DB

    means = {name: float(np.mean(values)) for name, values in drops.items()}
    worst = max(means, key=means.get)
    farthest = max(means, key=lambda name: abs(means[name]))
    mean_abs = float(np.mean([abs(drop) for values in drops.values() for drop in values]))
    print(f"colour set over {len(seeds)} noise draws: mean drop {np.mean(list(means.values())):.3f} dB, mean |drop| "
          f"{mean_abs:.3f}, worst image {worst} {means[worst]:.3f} dB on average (single "
          f"draws {min(drops[worst]):.3f}-{max(drops[worst]):.3f}), farthest {farthest} {means[farthest]:+.3f}")
    return {"seeds": seeds, "drop_db": drops, "mean_drop_db": means,
            "set_mean_drop_db": float(np.mean(list(means.values()))),
            "set_mean_abs_drop_db": mean_abs, "worst_image": worst,
            "farthest_image": farthest, "max_abs_drop_db": float(abs(means[farthest])),
            f"images_above_{TARGET_MAX_DROP_DB:g}_db_on_average": sorted(n for n, m in means.items() if m > TARGET_MAX_DROP_DB),
            f"images_beyond_{TARGET_MAX_DROP_DB:g}_db_either_way_on_average": sorted(
                n for n, m in means.items() if abs(m) > TARGET_MAX_DROP_DB)}


def main(argv=None) -> dict:
    from kd_tf.export import LiteRTModel, op_names
    from kd_tf.generators import generator_parity
    from kd_tf.int8_parity import format_parity, parity_report, parity_sets
    from kd_tf.model_io import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the float denoiser (.keras)")
    parser.add_argument("--generator", help="the float generator (.keras)")
    parser.add_argument("--int8", required=True)
    parser.add_argument("--float32", help="the float32 TFLite of the same model, for latency and size")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--noise-draws", type=int, default=0,
                        help="judge the colour set on its average over N noise draws, as the export report does "
                             "(a flat image's drop depends on its draw); each draw in colour_noise_draws")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = {"int8": args.int8, "int8_bytes": Path(args.int8).stat().st_size,
              "int8_ops": sorted(set(op_names(Path(args.int8).read_bytes())))}
    if args.generator:
        generator = load_model(args.generator)
        latent = int(generator.input_shape[-1])
        int8 = LiteRTModel(args.int8, num_threads=2)
        report.update(model=args.generator, parity=generator_parity(lambda z: generator(z, training=False), int8,
                                                                    latent, samples=512, seed=0))
        print(json.dumps(report["parity"], indent=1))
    else:
        from kd_tf.images import load_split
        from kd_tf.inference import stride_of

        model = load_model(args.model)
        sets, skipped = parity_sets(load_split().heldout)
        draws = {"colour": args.noise_draws} if args.noise_draws > 1 else {}
        report.update(model=args.model, parity=parity_report(lambda b: model(b, training=False),
                                                             LiteRTModel(args.int8, num_threads=2), sets, skipped,
                                                             stride=int(np.lcm(8, stride_of(model))), draws=draws))
        print(format_parity(report["parity"]))
        if draws:
            report["colour_noise_draws"] = colour_over_noise_draws(report["parity"]["sets"]["colour"])
        if args.float32:
            report["float32"], report["float32_bytes"] = args.float32, Path(args.float32).stat().st_size
            report["size_ratio_float32_over_int8"] = report["float32_bytes"] / report["int8_bytes"]
            report["latency_ms_512"] = {}
            for threads in args.threads:
                timed = alternating_latency_ms({"float32": LiteRTModel(args.float32, num_threads=threads),
                                                "int8": LiteRTModel(args.int8, num_threads=threads)})
                timed["speedup"] = timed["float32"] / timed["int8"]
                report["latency_ms_512"][f"{threads}_threads"] = timed
                print(f"512x512, {threads} thread(s): float32 {timed['float32']:.1f} ms, int8 {timed['int8']:.1f} ms, "
                      f"{timed['speedup']:.2f}x; size ratio {report['size_ratio_float32_over_int8']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
