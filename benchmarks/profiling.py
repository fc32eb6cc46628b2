"""Benchmark 6 (`--only profile`): where a step's time goes, from a real tf.profiler trace.

A few steps of (a) kd_tf.Distiller.fit (output + feature distillation, as in step_cost), (d) Keras'
Distiller and (e) the naive loop are traced with `tf.profiler.experimental` (host tracer) after
warm-up. The trace (`*.xplane.pb`, written under the system temp folder, never into the repository)
is read with the XPlane protobuf that TensorFlow ships (tensorflow.tsl.profiler.protobuf.xplane_pb2)
and turned into a per-phase breakdown of the timed steps:

- every TensorFlow op event on the executor threads (`tf_Compute`) is put in one phase by its name
  scope: the teacher's forward pass, the student's forward pass, the feature adapter, the backward
  pass (`gradient_tape/`), the optimizer (`adam/`), the wait for the next batch (IteratorGetNext),
  and the rest (losses, metrics); ms/step is the wall time the phase's ops cover (union of their
  intervals, so two ops running at once on the two executor threads count once);
- 'no op running' is the part of a step no op covers (Python, Keras and function dispatch);
- op types that are overheads rather than math: Cast (float32 <-> bfloat16), layout conversions;
- cores busy: CPU seconds of each thread group of the process (/proc/self/task/*/stat) over the
  traced window divided by its wall time, and, per phase, the intra-op pool's activity from the
  trace (`ThreadpoolListener` regions of the Eigen threads, which oneDNN's kernels also run on).

The naive loop (e) runs most of its work outside tf.functions, so its phases are the annotated
parts of its Python step (`tf.profiler.experimental.Trace`): teacher.predict, student.predict,
the PSNR on the host, the eager GradientTape step.

A variant checks the one inefficiency the trace shows in kd_tf's step: the frozen teacher kept in
`mixed_bfloat16` stores float32 weights and casts every kernel to bfloat16 on every step; a teacher
cloned under the `bfloat16` policy casts them once. Both are timed in the same process, and their
outputs are compared on one batch.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (DEFAULT_PRECISION, TEACHER_PATH, Bench, StepTimer, stats_from_ends)
from benchmarks.step_cost import keras_distiller, naive_loop_step

TRACE_ROOT = Path(os.environ.get("KD_TF_PROFILE_DIR", Path(tempfile.gettempdir()) / "kd_tf_bench_profile"))
ADAM_SCOPE = re.compile(r"(^|/)adam(_\d+)?/")              # Keras names a second Adam "adam_1"
LAYOUT_OPS = re.compile(r"transpose|mkltotf|reorder|tomkl|layout", re.IGNORECASE)
PHASES = ["teacher forward", "student forward", "feature adapter forward", "student backward",
          "feature adapter backward", "loss backward", "optimizer (Adam)", "waiting for the next batch",
          "losses, metrics, other ops"]
NAIVE_PHASES = ["teacher.predict", "student.predict", "PSNR on the host", "eager tape step"]


# -- capturing -------------------------------------------------------------------------------

def _thread_cpu_s() -> dict:
    """CPU seconds (user + system) of every thread of this process, by thread id: (name, seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[task.name] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def _thread_group(tid: str, name: str) -> str:
    """The OS names TensorFlow's executor and tf.data threads; the intra-op (Eigen/oneDNN) pool's
    threads keep the process name."""
    if tid == str(os.getpid()):
        return "Python main thread"
    if name.startswith("tf_Compute"):
        return "executor threads (tf_Compute)"
    if name.startswith("tf_data"):
        return "tf.data threads"
    if name.startswith("tf_"):
        return "other TF threads"
    return "intra-op pool and other unnamed threads"


def _cpu_by_group(before: dict, after: dict) -> dict:
    groups = collections.Counter()
    for tid, (name, seconds) in after.items():
        groups[_thread_group(tid, name)] += seconds - before.get(tid, (name, 0.0))[1]
    return dict(groups)


class _Window:
    """Starts the profiler before step `start` and stops it after the last step; records step ends
    (perf_counter for the timings, epoch ns to cut the trace) and each thread's CPU time."""

    def __init__(self, logdir: Path, start: int, steps: int):
        self.logdir, self.start, self.steps = logdir, start, steps
        self.ends = []
        self.trace_zero = self.traced_from = None
        self.cpu_before = self.cpu_after = None

    def begin(self, index: int):
        if index == self.start:
            self.cpu_before = _thread_cpu_s()
            # the trace's timestamps count from the session's start: anchor them to perf_counter
            self.trace_zero = time.perf_counter()
            tf.profiler.experimental.start(str(self.logdir), options=tf.profiler.experimental.ProfilerOptions(
                host_tracer_level=3, python_tracer_level=0, device_tracer_level=0))
            self.traced_from = time.perf_counter()

    def end(self, index: int):
        self.ends.append(time.perf_counter())
        if index == self.start + self.steps - 1:
            self.cpu_after = _thread_cpu_s()
            tf.profiler.experimental.stop()


class _FitWindow(keras.callbacks.Callback):
    def __init__(self, window: _Window):
        super().__init__()
        self.window = window

    def on_train_batch_begin(self, batch, logs=None):
        self.window.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.window.end(batch)


def _fresh_dir(name: str) -> Path:
    path = TRACE_ROOT / name
    if path.exists():
        for file in sorted(path.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def trace_fit(model: keras.Model, dataset, name: str, warmup: int, unprofiled: int, steps: int) -> dict:
    """`model.fit`: `warmup` steps, `unprofiled` timed steps without the profiler (its overhead),
    then `steps` traced steps."""
    window = _Window(_fresh_dir(name), warmup + unprofiled, steps)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + unprofiled + steps, verbose=0, shuffle=False,
              callbacks=[_FitWindow(window)])
    return _finish(window, name, warmup, unprofiled)


def trace_loop(step, batches, name: str, warmup: int, unprofiled: int, steps: int) -> dict:
    window = _Window(_fresh_dir(name), warmup + unprofiled, steps)
    for index in range(warmup + unprofiled + steps):
        window.begin(index)
        step(next(batches))
        window.end(index)
    return _finish(window, name, warmup, unprofiled)


def _finish(window: _Window, name: str, warmup: int, unprofiled: int) -> dict:
    first = warmup + unprofiled                              # index of the first traced step
    plain = stats_from_ends(window.ends[:first], warmup) if unprofiled else None
    traced = np.diff(np.asarray(window.ends[first - 1:]))
    files = sorted(window.logdir.rglob("*.xplane.pb"))
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {window.logdir}")
    # the analysed window: from the profiler's start (just before the first traced step) to the
    # end of the last traced step, in the trace's clock (ns since the session started)
    wall = window.ends[-1] - window.traced_from
    window_ns = (int(1e9 * (window.traced_from - window.trace_zero)), int(1e9 * (window.ends[-1] - window.trace_zero)))
    return {"trace": str(files[-1]), "window_ns": window_ns, "steps": len(traced),
            "traced_ms_per_step": 1000 * float(np.median(traced)),
            "unprofiled_ms_per_step": None if plain is None else 1000 * plain.median_s,
            "cpu_s_by_threads": _cpu_by_group(window.cpu_before, window.cpu_after), "window_s": wall}


# -- reading the trace -----------------------------------------------------------------------

def _load_host_plane(path: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    for plane in space.planes:
        if plane.name == "/host:CPU":
            return plane
    raise RuntimeError(f"no /host:CPU plane in {path}")


def _events(plane, line, lo: int, hi: int):
    """(start ns, end ns, name, op type) of a line's events inside [lo, hi] (epoch ns)."""
    base = line.timestamp_ns
    for event in line.events:
        start = base + event.offset_ps // 1000
        end = start + event.duration_ps // 1000
        if end < lo or start > hi:
            continue
        meta = plane.event_metadata[event.metadata_id]
        yield max(start, lo), min(end, hi), meta.name, meta.display_name


def _union_ns(intervals) -> int:
    total, cur_start, cur_end = 0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0)


def _intersect_ns(a, b) -> int:
    """Total overlap of two interval lists, each merged first."""
    def merged(intervals):
        out = []
        for start, end in sorted(intervals):
            if out and start <= out[-1][1]:
                out[-1][1] = max(out[-1][1], end)
            else:
                out.append([start, end])
        return out
    a, b, i, j, total = merged(a), merged(b), 0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _pool_regions(plane, lo: int, hi: int) -> list:
    """Busy intervals of each intra-op pool thread: between its ThreadpoolListener::StartRegion and
    StopRegion markers (a task of the Eigen pool, oneDNN's parallel sections included)."""
    regions = []
    for line in plane.lines:
        if not ("Eigen" in line.name or line.name.startswith("tf_numa")):
            continue
        thread, open_at = [], None
        for start, _, name, _ in _events(plane, line, lo, hi):
            if name == "ThreadpoolListener::StartRegion":
                open_at = start
            elif name == "ThreadpoolListener::StopRegion" and open_at is not None:
                thread.append((open_at, start))
                open_at = None
        regions.append(thread)
    return regions


def phase_of(name: str, op_type: str) -> str:
    lower = name.lower()
    if op_type == "IteratorGetNext" or "iteratorgetnext" in lower:
        return "waiting for the next batch"
    if "gradient_tape/" in lower:
        if "adapter" in lower:
            return "feature adapter backward"
        if "student" in lower:
            return "student backward"
        return "loss backward"
    if ADAM_SCOPE.search(lower) or op_type in ("AssignSubVariableOp", "AssignAddVariableOp"):
        return "optimizer (Adam)"
    if "teacher" in lower:
        return "teacher forward"
    if "adapter" in lower:
        return "feature adapter forward"
    if "student" in lower:
        return "student forward"
    return "losses, metrics, other ops"


def analyse_graph_trace(captured: dict) -> dict:
    """Per-phase breakdown of a traced `fit` (ops inside tf.functions, on the executor threads)."""
    plane = _load_host_plane(captured["trace"])
    lo, hi = captured["window_ns"]
    steps = captured["steps"]
    window_ns = hi - lo
    ops = []                                           # (start, end, phase, op type, name)
    data_busy = []
    for line in plane.lines:
        if line.name.startswith("tf_Compute"):
            for start, end, name, op_type in _events(plane, line, lo, hi):
                if ":" in name and op_type and not name.startswith(("ExecutorState", "Threadpool")):
                    ops.append((start, end, phase_of(name, op_type), op_type, name))
        elif line.name.startswith("tf_data"):
            data_busy += [(s, e) for s, e, name, _ in _events(plane, line, lo, hi) if name.startswith("Iterator::")]
    pool = _pool_regions(plane, lo, hi)
    pool_all = [interval for thread in pool for interval in thread]
    per_ms = 1e-6 / steps

    phases = {}
    for phase in PHASES:
        intervals = [(s, e) for s, e, p, _, _ in ops if p == phase]
        if not intervals:
            continue
        wall = _union_ns(intervals)
        pool_busy = sum(_intersect_ns(intervals, thread) for thread in pool)
        phases[phase] = {"ms_per_step": wall * per_ms, "share": wall / window_ns,
                         "op_thread_ms_per_step": sum(e - s for s, e in intervals) * per_ms,
                         "ops_per_step": len(intervals) / steps,
                         # pool threads busy while the phase's ops run (0-N; oneDNN/Eigen parallelism)
                         "pool_threads_busy": pool_busy / wall if wall else None}
    any_op = _union_ns([(s, e) for s, e, *_ in ops])
    teacher_ops = [(s, e) for s, e, p, _, _ in ops if p == "teacher forward"]
    other_ops = [(s, e) for s, e, p, _, _ in ops if p != "teacher forward"]
    by_type = collections.Counter()
    for s, e, _, op_type, _ in ops:
        by_type[op_type] += e - s
    casts = collections.Counter()
    for s, e, phase, op_type, name in ops:
        if op_type == "Cast":
            kind = "kernel (weight) casts" if re.search(r"(convolution|conv_transpose|matmul)[^/]*/cast", name,
                                                         re.IGNORECASE) else "other casts"
            casts[f"{phase}: {kind}"] += e - s
    layout = sum(e - s for s, e, _, op_type, _ in ops if LAYOUT_OPS.search(op_type))
    cpu = captured["cpu_s_by_threads"]
    return {
        "steps": steps, "traced_ms_per_step": captured["traced_ms_per_step"],
        "unprofiled_ms_per_step": captured["unprofiled_ms_per_step"],
        "window_ms_per_step": window_ns * per_ms, "window_ns": [lo, hi], "window_s": captured["window_s"],
        "cpu_s_by_threads": cpu,
        "phases": phases,
        "no_op_running_ms_per_step": (window_ns - any_op) * per_ms,
        # the executor runs independent ops at once: teacher ops alongside the student's
        "teacher_overlap_ms_per_step": _intersect_ns(teacher_ops, other_ops) * per_ms,
        "no_op_running_share": (window_ns - any_op) / window_ns,
        "op_types_ms_per_step": {t: v * per_ms for t, v in by_type.most_common(12)},
        "casts_ms_per_step": {k: v * per_ms for k, v in casts.most_common() if v},
        "cast_ops_per_step": sum(1 for *_, t, _ in ops if t == "Cast") / steps,
        "layout_ops_ms_per_step": layout * per_ms,
        "data_pipeline_thread_ms_per_step": _union_ns(data_busy) * per_ms,
        "pool_threads": len(pool),
        "pool_threads_busy_overall": sum(_union_ns(t) for t in pool) / window_ns if pool else None,
        "cores_busy": sum(cpu.values()) / captured["window_s"],
        "cores_busy_by_threads": {k: v / captured["window_s"] for k, v in cpu.items()},
        "top_ops_ms_per_step": _top_ops(ops, steps),
        "trace": captured["trace"],
    }


def _top_ops(ops, steps, n=8):
    total = collections.Counter()
    for s, e, _, _, name in ops:
        total[name.split("StatefulPartitionedCall/", 1)[-1]] += e - s
    return {name: v * 1e-6 / steps for name, v in total.most_common(n)}


def analyse_loop_trace(captured: dict) -> dict:
    """(e): phases are the annotated parts of the Python step (TraceMe on the Python thread)."""
    plane = _load_host_plane(captured["trace"])
    lo, hi = captured["window_ns"]
    steps = captured["steps"]
    window_ns = hi - lo
    spans = collections.defaultdict(list)
    for line in plane.lines:
        for start, end, name, _ in _events(plane, line, lo, hi):
            if name in NAIVE_PHASES:
                spans[name].append((start, end))
    phases = {name: {"ms_per_step": _union_ns(spans[name]) * 1e-6 / steps,
                     "share": _union_ns(spans[name]) / window_ns} for name in NAIVE_PHASES if spans[name]}
    covered = _union_ns([i for v in spans.values() for i in v])
    pool = _pool_regions(plane, lo, hi)
    cpu = captured["cpu_s_by_threads"]
    for name in phases:
        wall = _union_ns(spans[name])
        phases[name]["pool_threads_busy"] = (sum(_intersect_ns(spans[name], t) for t in pool) / wall) if wall else None
    return {"steps": steps, "traced_ms_per_step": captured["traced_ms_per_step"],
            "unprofiled_ms_per_step": captured["unprofiled_ms_per_step"], "window_ms_per_step": window_ns * 1e-6 / steps,
            "window_ns": [lo, hi], "window_s": captured["window_s"], "cpu_s_by_threads": cpu,
            "phases": phases, "outside_annotated_ms_per_step": (window_ns - covered) * 1e-6 / steps,
            "cores_busy": sum(cpu.values()) / captured["window_s"],
            "cores_busy_by_threads": {k: v / captured["window_s"] for k, v in cpu.items()},
            "trace": captured["trace"]}


# -- the variant: a teacher whose weights are bfloat16 already -------------------------------

def mixed_precision_teacher() -> keras.Model:
    """The shipped teacher as kd_tf loaded it before it stored frozen teachers in bfloat16: cloned
    under `mixed_bfloat16`, float32 weights cast to bfloat16 on every step, output layer float32."""
    from kd_tf.model_io import load_model, with_dtype_policy
    teacher = with_dtype_policy(load_model(TEACHER_PATH), "mixed_bfloat16")
    teacher.trainable = False
    return teacher


def _timed_fit(model, dataset, warmup, steps) -> float:
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False, callbacks=[timer])
    return stats_from_ends(timer.ends, warmup).median_s


def teacher_weights_variant(bench: Bench, precision: str) -> dict:
    """(a) with a mixed_bfloat16 teacher (float32 weights) vs (a) with kd_tf's bfloat16-weight teacher
    (kd_tf.model_io.load_teacher); alternating rounds in one process so that load drifts hit both alike.
    Also the teacher forward alone."""
    from kd_tf.distiller import Distiller
    from benchmarks.common import FEATURES, STUDENT_LOSS_WEIGHT
    sizes = bench.sizes
    mixed, pure = mixed_precision_teacher(), bench.teacher(precision)
    noisy, _ = next(iter(bench.patches()))
    out_mixed = tf.cast(mixed(noisy, training=False), tf.float32).numpy()
    out_pure = tf.cast(pure(noisy, training=False), tf.float32).numpy()
    max_diff = float(np.max(np.abs(out_mixed - out_pure)))

    def distiller(teacher):
        model = Distiller(teacher, bench.student(precision), student_loss_weight=STUDENT_LOSS_WEIGHT, output_loss="mse", features=FEATURES)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    def forward(teacher):
        function = tf.function(lambda x: tf.reduce_sum(tf.cast(teacher(x, training=False), tf.float32)))
        batches = iter(bench.patches())
        ends = []
        for _ in range(sizes.warmup + sizes.steps):
            function(next(batches)[0]).numpy()
            ends.append(time.perf_counter())
        return stats_from_ends(ends, sizes.warmup).median_s

    models = {"mixed": distiller(mixed), "bf16 weights": distiller(pure),
              "keras (d), bf16 weights": keras_distiller(bench, precision, teacher=pure)[0]}
    rounds = {k: [] for k in models}
    for _ in range(sizes.variant_rounds):
        for key, model in models.items():
            rounds[key].append(_timed_fit(model, bench.patches(), sizes.warmup, sizes.steps))
    step = {k: float(np.median(v)) for k, v in rounds.items()}
    fwd = {"mixed": forward(mixed), "bf16 weights": forward(pure)}
    casts = {}
    for key, teacher in (("mixed", mixed), ("bf16 weights", pure)):
        casts[key] = sum(1 for w in teacher.weights if w.dtype == "float32")
    return {"max_abs_output_difference": max_diff, "step_s": step, "step_rounds_s": rounds,
            "teacher_forward_s": fwd, "float32_teacher_weights": casts,
            "step_speedup": step["mixed"] / step["bf16 weights"],
            "d_over_a_both_bf16_weights": step["keras (d), bf16 weights"] / step["bf16 weights"],
            "forward_speedup": fwd["mixed"] / fwd["bf16 weights"]}


# -- the benchmark ---------------------------------------------------------------------------

def profile(bench: Bench) -> dict:
    precision, sizes = DEFAULT_PRECISION, bench.sizes
    warmup, unprofiled, steps = sizes.warmup, sizes.profile_unprofiled_steps, sizes.profile_steps
    out = {"precision": precision, "batch": sizes.batch, "patch": sizes.patch, "trace_root": str(TRACE_ROOT),
           "load_average_at_start": os.getloadavg()[0], "cores": len(os.sched_getaffinity(0)),
           "tool": "tf.profiler.experimental (host tracer level 3) -> .xplane.pb, read with TensorFlow's "
                   "xplane_pb2; thread CPU time from /proc/self/task", "setups": {}}

    bench.log("  profiling (a) kd_tf Distiller.fit, output + feature")
    a = bench.distiller(precision, features=True)
    a.compile(optimizer=keras.optimizers.Adam(1e-3))
    out["setups"]["a"] = analyse_graph_trace(trace_fit(a, bench.patches(), "a", warmup, unprofiled, steps))

    bench.log("  profiling (d) keras.distillation.Distiller")
    d, _ = keras_distiller(bench, precision)
    out["setups"]["d"] = analyse_graph_trace(trace_fit(d, bench.patches(), "d", warmup, unprofiled, steps))

    bench.log("  profiling (e) naive loop")
    e = naive_loop_step(bench, precision, annotate=True)
    out["setups"]["e"] = analyse_loop_trace(trace_loop(e, iter(bench.patches()), "e", max(2, warmup // 2),
                                                       sizes.profile_naive_unprofiled_steps, sizes.profile_naive_steps))

    bench.log("  variant: teacher with float32 weights under mixed_bfloat16 (per-step kernel casts)")
    out["variant_bf16_teacher_weights"] = teacher_weights_variant(bench, precision)
    return out
