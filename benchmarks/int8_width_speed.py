"""Does full-integer int8 pay for a narrow network on this CPU? One 3x3 convolution, and whole
denoising U-Nets, at several channel counts: float32 TFLite against int8, same LiteRT threads.

    python -m benchmarks.int8_width_speed        # writes benchmarks/int8_width_speed.json (~3 min)

Why: the shipped denoising student (widths 11-22-44-88) runs 3x faster in int8 than in float32 on
an AMD EPYC with AVX512-VNNI, but 1.6x on an Intel Xeon with AMX (`tflite_speed.json` and
`tflite_speed_intel_amx.json`), while the SR student (wider at full resolution) keeps 3.2-3.5x on
both. If an int8 convolution's time stops falling with fewer channels on a CPU, a network that
narrow cannot reach issue 17's "2x faster than float32" there, whatever the quantization; the same
budget spent at half resolution (pixel-unshuffle, twice the channels) can. The
weights are random (speed does not depend on them); the int8 files come from the export's own
path (`kd_tf.export.int8_ready`, `to_tflite`), calibrated on random images in [0, 1]; both files of a
U-Net trace its transposed convolutions the same way (see `_flatbuffers`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, median_seconds, write_results
from benchmarks.render_tables import int8_width_speed as render

HERE = Path(__file__).resolve().parent
REPEATS = 11
THREADS = (1, 2)
CONV_CHANNELS = (8, 11, 16, 24, 32, 64)
# (widths, unshuffle): the last one is the shipped student's budget at half resolution (configs/student_unshuffled.yaml)
UNETS = (((8, 16, 32, 64), 1), ((11, 22, 44, 88), 1), ((16, 32, 64, 128), 1), ((22, 44, 88, 176), 2))
SHAPE = (1, 256, 256, 3)


def _one_conv(channels: int):
    """A 3x3 convolution, channels -> channels, behind a 1x1 one that makes its input channels (so the
    input stays an RGB image for calibration)."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(channels, 1, name="widen")(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="conv")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1, name="narrow")(x))


def _flatbuffers(model, workdir: Path, calibration) -> tuple[bytes, bytes]:
    """float32 and full-integer int8 TFLite. The int8 file is what `python -m kd_tf export` writes; the
    float32 one has its 2x2 transposed convolutions traced as 1x1 + depth-to-space like the int8 one
    (the export's float32 keeps them transposed), so that both files compute the same ops."""
    from kd_tf import export

    saved = export.export_saved_model(export.shuffle_upsampling(model), workdir / "float32")
    ready = export.int8_ready(model, calibration, input_range=(0, 1), output_range=(0, 1))
    saved8 = export.export_saved_model(ready, workdir / "int8")
    return export.to_tflite(saved, "float32"), export.to_tflite(saved8, "int8", calibration)


def _time(name: str, model, workdir: Path, batch: np.ndarray, calibration) -> dict:
    from kd_tf.complexity import count_macs
    from kd_tf.export import LiteRTModel

    flat32, flat8 = _flatbuffers(model, workdir, calibration)
    row = {"macs_per_pixel": count_macs(model, SHAPE[1:]) / (SHAPE[1] * SHAPE[2]), "timings": []}
    for threads in THREADS:
        ms = [1000.0 * median_seconds(lambda m=LiteRTModel(flat, num_threads=threads): m(batch), REPEATS)
              for flat in (flat32, flat8)]
        row["timings"].append({"threads": threads, "float32_ms": ms[0], "int8_ms": ms[1], "speedup_int8": ms[0] / ms[1]})
        print(f"{name}, {threads} thread(s): float32 {ms[0]:.1f} ms, int8 {ms[1]:.1f} ms, {ms[0] / ms[1]:.2f}x",
              flush=True)
    return row


def main(argv=None) -> int:
    from kd_tf.denoise.nets import build_unet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "int8_width_speed.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    batch = rng.random(SHAPE).astype(np.float32)
    calibration = [rng.random((4, 64, 64, 3)).astype(np.float32) for _ in range(4)]
    results = {"machine": machine_info(), "repeats": REPEATS, "input_shape": list(SHAPE), "conv": {}, "unet": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for channels in CONV_CHANNELS:
            name = f"3x3 conv, {channels} -> {channels} channels"
            results["conv"][name] = _time(name, _one_conv(channels), Path(workdir) / f"conv{channels}", batch,
                                          calibration)
        for widths, unshuffle in UNETS:
            half = ", at half resolution" if unshuffle == 2 else ""
            name = f"U-Net {'-'.join(map(str, widths))}, 1 block{half}"
            results["unet"][name] = _time(name, build_unet(widths=widths, blocks=1, unshuffle=unshuffle),
                                          Path(workdir) / f"unet{widths[0]}", batch, calibration)
    return write_results(results, render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
