"""What every benchmark shares: sizes (full or quick), the models and data, and step timing.

Step costs are timed inside one process, after warm-up steps that absorb tracing, as the median
of per-step wall times (robust to the odd scheduler hiccup); every ratio in the results divides
two such medians from the same run. Measurements are memoised by what was measured, so that a
figure needed by two benchmarks (the student step in `step_cost` and in `flops`) is taken once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import os
import platform
import resource
import time

import keras
import numpy as np
import tensorflow as tf

from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.images import load_split, patch_dataset
from kd_tf.distiller import Distiller
from kd_tf.model_io import load_teacher
from kd_tf.denoise.nets import build_unet
from kd_tf.precision import bfloat16_is_fast

# the kd_tf U-Net teacher: these benchmarks measure the Distiller's step mechanics with feature
# terms (dec0 adapters), which the default FFDNet teacher (no U-Net layers) cannot serve;
# FFDNet's own training step is benchmarks/teacher_step.py
TEACHER_PATH = str(cfg.MODELS_DIR / "denoise" / "teacher.keras")
STUDENT_PATH = denoise_config.DEFAULT_STUDENT
# the U-Net student these benchmarks measure (the shipped student's shape and the main job's default;
# family=ffdnet is the other): widths 11-22-44-88, 1 block
STUDENT_NET = denoise_config.NetConfig(family="unet", widths=[11, 22, 44, 88], blocks=1)
DEFAULT_PRECISION = "bf16" if bfloat16_is_fast() else "fp32"          # what train.mixed_precision=auto picks
STUDENT_LOSS_WEIGHT = cfg.WeightConfig().start              # the main job's constant weight (0.5)
FEATURES = [("dec0", "dec0", 0.1)]                         # "output + feature distillation" of benchmark 1
SIGMA_RANGE = (cfg.DataConfig().sigma_min, cfg.DataConfig().sigma_max)
EVAL_SIGMA = 25.0
EVAL_SEED = 2024                                           # kd_tf.denoise.evaluation's noise seeds: 2024 + image index


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size and budget of one run; `QUICK` shrinks them all to check the code in ~2 minutes."""

    batch: int = cfg.DataConfig().batch_size               # 16: the main job's batch
    patch: int = cfg.DataConfig().patch_size               # 64
    warmup: int = 4                                        # steps dropped before timing (tracing, pipeline fill)
    steps: int = 30                                        # timed steps per measurement
    naive_steps: int = 12                                  # the naive loop is slow; fewer timed steps
    peak_matmul: int = 2048                                # n of the n x n x n matmul that measures peak FLOP/s
    peak_conv: tuple = (16, 128, 128, 64)                  # NHWC input of the 3x3, C -> C conv peak
    peak_repeats: int = 5
    lever_train_steps: int = 600                           # steps of each lever's PSNR-cost training
    cache_bank_batches: int = 60                           # teacher bank for the cache lever (steps / 10, as shipped)
    thread_settings: tuple = ((0, 0, True), (2, 1, True), (1, 1, True), (0, 0, False))   # (intra, inter, oneDNN)
    xla_precisions: tuple = ("fp32", "bf16")               # XLA compiles take tens of seconds each
    inference_size: int = 512
    heldout_crop: int | None = None                        # None: whole held-out photos
    calibration_batches: int = 32                          # kd_tf.denoise.export_job.export_student's default
    scaling_batches: tuple = (4, 8, 16, 32, 64)
    scaling_patches: tuple = (32, 64, 128, 192)
    scaling_steps: int = 6
    profile_steps: int = 8                                 # traced steps of (a) and (d) (benchmark `profile`)
    profile_unprofiled_steps: int = 8                      # timed without the profiler first: its overhead
    profile_naive_steps: int = 3
    profile_naive_unprofiled_steps: int = 3
    variant_rounds: int = 3                                # alternating timing rounds of a benchmark variant


FULL = Sizes()
QUICK = Sizes(batch=2, patch=32, warmup=1, steps=2, naive_steps=2, peak_matmul=256, peak_conv=(2, 32, 32, 16),
              peak_repeats=2, lever_train_steps=3, cache_bank_batches=2,
              thread_settings=((1, 1, False),), xla_precisions=("bf16",), inference_size=64, heldout_crop=64,
              calibration_batches=2, scaling_batches=(2, 4), scaling_patches=(16, 32), scaling_steps=2,
              profile_steps=2, profile_unprofiled_steps=2, profile_naive_steps=2,
              profile_naive_unprofiled_steps=1, variant_rounds=1)


@dataclasses.dataclass
class StepStats:
    """Per-step wall time of one measurement (seconds)."""

    median_s: float
    mean_s: float
    steps: int

    @property
    def steps_per_s(self) -> float:
        return 1.0 / self.median_s

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "mean_s": self.mean_s, "steps": self.steps, "steps_per_s": self.steps_per_s}


def stats_from_ends(ends: list[float], warmup: int) -> StepStats:
    """Step durations from the end times of consecutive steps, the first `warmup` steps dropped."""
    durations = np.diff(np.asarray(ends[warmup - 1:] if warmup >= 1 else ends))
    if durations.size == 0:
        raise ValueError(f"no timed steps: {len(ends)} step ends with warmup {warmup}")
    return StepStats(float(np.median(durations)), float(np.mean(durations)), int(durations.size))


class StepTimer(keras.callbacks.Callback):
    """Records when each training step ends (Keras hands a non-async callback finished logs)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def time_fit(model: keras.Model, dataset: tf.data.Dataset, warmup: int, steps: int) -> StepStats:
    """Per-step time of `model.fit` on `dataset`: what a user's training step costs, data included."""
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False, callbacks=[timer])
    return stats_from_ends(timer.ends, warmup)


def time_loop(step, batches, warmup: int, steps: int) -> StepStats:
    """Per-step time of a Python loop `step(batch)` over an iterator; `step` must return host
    values (numpy) so that each step has finished when it returns."""
    ends = []
    for _ in range(warmup + steps):
        step(next(batches))
        ends.append(time.perf_counter())
    return stats_from_ends(ends, warmup)


def call_seconds(function, repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls, after one warm-up call (tracing, interpreter resizing)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(function, repeats: int) -> float:
    """The median call: a latency."""
    return float(np.median(call_seconds(function, repeats)))


def best_seconds(function, repeats: int) -> float:
    """The fastest call (for peak throughput, the best is the peak)."""
    return min(call_seconds(function, repeats))


# -- memory --------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident set size so far (`resource.getrusage`, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def children_peak_rss_mb() -> float:
    """The largest peak RSS of any finished child process (the thread-setting probes)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Returns freed heap to the OS and resets the kernel's peak-RSS mark (VmHWM), so that the
    next `window_peak_rss_mb()` is the peak of what runs in between. False if Linux refuses."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def window_peak_rss_mb() -> float | None:
    return _status_mb("VmHWM")


# -- the machine ---------------------------------------------------------------------------

def machine_info() -> dict:
    """What the figures were measured on: CPU model and flags, cores, library versions, load."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") and model in ("unknown", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
        "cores_busy_at_start": cores_busy_by_others(),
    }


def cores_busy_by_others(seconds: float = 1.0) -> float | None:
    """Cores busy over `seconds` while this process sleeps (from /proc/stat): what the rest of the
    machine uses right now. The load average cannot tell: it decays over a minute after a job ends."""
    def snapshot():
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]             # all, idle + iowait
    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, IndexError, ValueError):
        return None
    if total1 == total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


# -- models and data -----------------------------------------------------------------------

class Bench:
    """The shared state of one run: sizes, photos, teachers, and memoised measurements."""

    def __init__(self, sizes: Sizes, quick: bool, log=print, train_all_levers: bool = False):
        self.sizes, self.quick, self.log = sizes, quick, log
        self.train_all_levers = train_all_levers
        self._split = None
        self._teachers = {}
        self._memo = {}

    @property
    def split(self):
        if self._split is None:
            self._split = load_split()
        return self._split

    @property
    def heldout(self) -> dict:
        """The held-out photos, centre-cropped in quick mode."""
        crop = self.sizes.heldout_crop
        if crop is None:
            return self.split.heldout
        return {name: _centre_crop(image, crop) for name, image in self.split.heldout.items()}

    def teacher(self, precision: str) -> keras.Model:
        """The shipped teacher, frozen, computing in bfloat16 ("bf16") or float32 ("fp32")."""
        if precision not in self._teachers:
            self._teachers[precision] = load_teacher(TEACHER_PATH, mixed_precision=precision == "bf16")
        return self._teachers[precision]

    def student(self, precision: str, name: str = "student") -> keras.Model:
        """A fresh, untrained shipped-architecture student (seeded, so every run starts alike)."""
        keras.utils.set_random_seed(0)
        return build_unet(STUDENT_NET.widths, STUDENT_NET.blocks, name=name, mixed_precision=precision == "bf16")

    def patches(self, batch: int | None = None, patch: int | None = None, seed: int = 0) -> tf.data.Dataset:
        """The main job's training stream: endless (noisy, clean) batches from the training photos
        (those at least one patch big, as the main job's reader keeps them)."""
        patch = patch or self.sizes.patch
        images = {name: image for name, image in self.split.train.items() if min(image.shape[:2]) >= patch}
        return patch_dataset(images, patch, batch or self.sizes.batch, SIGMA_RANGE, seed=seed)

    def distiller(self, precision: str, features: bool, student: keras.Model | None = None) -> Distiller:
        """kd_tf's Distiller as the main job builds it (student_loss_weight 0.5, output MSE), features optional."""
        return Distiller(self.teacher(precision), student or self.student(precision), student_loss_weight=STUDENT_LOSS_WEIGHT,
                         output_loss="mse", features=FEATURES if features else ())

    def measure(self, key: tuple, function):
        """`function()` once per key and run: a figure shared by benchmarks is measured once."""
        if key not in self._memo:
            self.log(f"  measuring {' / '.join(map(str, key))}")
            self._memo[key] = function()
        return self._memo[key]


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


# -- the step costs several benchmarks share -----------------------------------------------

def distill_step(bench: Bench, precision: str, features: bool, xla: bool = False, batch: int | None = None,
                 patch: int | None = None, dataset: tf.data.Dataset | None = None, tag: str = "patches") -> StepStats:
    """kd_tf.Distiller.fit: one teacher and one student pass per step (the main job's step)."""
    sizes = bench.sizes
    batch, patch = batch or sizes.batch, patch or sizes.patch

    def run():
        distiller = bench.distiller(precision, features)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=xla)
        return time_fit(distiller, dataset or bench.patches(batch, patch), sizes.warmup, sizes.steps)

    return bench.measure(("distill", precision, "features" if features else "output-only",
                          "xla" if xla else "no-xla", f"b{batch}p{patch}", tag), run)


def student_step(bench: Bench, precision: str) -> StepStats:
    """The student alone trained with `fit` (MSE to the clean patch), as the main job's scratch run."""
    from kd_tf.metrics import psnr_metric

    def run():
        student = bench.student(precision)
        student.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=[psnr_metric])
        return time_fit(student, bench.patches(), bench.sizes.warmup, bench.sizes.steps)

    return bench.measure(("student step", precision, f"b{bench.sizes.batch}p{bench.sizes.patch}"), run)


def forward_pass(bench: Bench, precision: str, which: str) -> StepStats:
    """The teacher's forward pass alone (training=False), or the student's (training=True), on
    the training stream, in a tf.function: what one distillation step spends on that pass."""

    def run():
        model = bench.teacher(precision) if which == "teacher" else bench.student(precision)
        training = which == "student"
        forward = tf.function(lambda x: tf.reduce_sum(tf.cast(model(x, training=training), tf.float32)))
        batches = iter(bench.patches())
        return time_loop(lambda batch: forward(batch[0]).numpy(), batches, bench.sizes.warmup, bench.sizes.steps)

    return bench.measure((f"{which} forward", precision, f"b{bench.sizes.batch}p{bench.sizes.patch}"), run)


def write_results(results: dict, render, path) -> int:
    """Adds the rendered table to `results`, writes them to `path` as JSON and prints the table:
    a timing benchmark's last step (exit status 0)."""
    import json
    from pathlib import Path

    results["table"] = render(results)
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return 0
