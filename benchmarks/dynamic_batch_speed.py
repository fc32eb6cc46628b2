"""Why the dynamic-range denoising file gains less from a second thread than float32 does: the same
pixels as one image and as a batch of tiles, each against the float32 TFLite twin, same threads.

    python -m benchmarks.dynamic_batch_speed     # writes benchmarks/dynamic_batch_speed.json (~3 min)

XNNPACK runs a dynamic-range convolution as: find its input's range, convert the input to int8
(one range per image), then the int8 convolution. Its conversion operator (`convert_nc_f32_qd8`)
is parallelized over the batch only, so for one image it runs on one thread while the convolutions
run on all of them; a batch of tiles gives each thread its own images. If that is the cause, the
dynamic-range file's speed-up at two threads is higher for 4 x 256^2 than for 1 x 512^2 (the same
pixels), and at one thread about the same (on session 41's AMD CPU two 61-run passes did not
separate the layouts: the two-thread figures moved more from pass to pass than between layouts,
benchmarks/dynamic_batch_speed.json and _pass2.json). The float32 file runs the same shapes, so each row is
a fair pair; `benchmarks.tflite_speed.compare` times them, invoked in turn. Run it on an otherwise
idle machine; the CPU flags go into the file.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import tflite_speed
from kd_tf.config import MODELS_DIR

HERE = Path(__file__).resolve().parent
STUDENT = MODELS_DIR / "denoise" / "student.keras"
DYNAMIC = MODELS_DIR / "denoise" / "student_int8_dynamic.tflite"
# 512 x 512 pixels each way: one image, two half images, four quarter tiles
LAYOUTS = {"one image": (1, 512, 512, 3), "two halves as a batch": (2, 256, 512, 3),
           "four tiles as a batch": (4, 256, 256, 3)}


def main(argv=None) -> int:
    models = [(f"denoise student, dynamic-range int8, {layout}", STUDENT, DYNAMIC, [shape])
              for layout, shape in LAYOUTS.items()]
    return tflite_speed.main(argv, models, HERE / "dynamic_batch_speed.json", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
