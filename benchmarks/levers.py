"""Benchmark 3: the levers that could make training faster, each with its speed ratio and PSNR cost.

Speed is the distillation step with the main job's losses (kd_tf.Distiller, output-only, the
live teacher; batch 16 of 64x64) with the lever on against off. The PSNR cost is measured where a lever changes the numbers:
short trainings of the student from the same initial weights on the same patch stream (same
seed), scored on the held-out photos at sigma 25, lever on minus lever off. Levers that leave the
computation unchanged (tf.data threading, thread counts) are checked for that instead: identical
batches, and the shipped student's held-out PSNR under each setting.

One seed per training: at a few hundred steps, differences of a few hundredths of a dB are
within run-to-run noise (configs/ablation/README.md); the results file says so beside each cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (DEFAULT_PRECISION, EVAL_SEED, EVAL_SIGMA, STUDENT_NET, Bench, distill_step,
                               forward_pass, student_step, time_loop)
from kd_tf.precision import bfloat16_is_fast
from kd_tf import config as cfg
from kd_tf.denoise import config as denoise_config
from kd_tf.denoise.evaluation import Method, evaluate
from kd_tf.runs import cosine_optimizer
from kd_tf.denoise.nets import float32_copy
from kd_tf.teacher_cache import cache_teacher_outputs

SPEED_TARGET = 1.3             # on by default where >= 1.3x ...
COST_LIMIT_DB = 0.05           # ... at <= 0.05 dB
SHIPPED_STUDENT_CONFIG = "configs/student.yaml"   # offline distillation as shipped: its bank and step budget


def _attempt(what: str, function, log):
    """A lever that fails (XLA cannot compile a graph, say) is reported, not fatal to the run."""
    try:
        return function()
    except Exception as error:                      # noqa: BLE001 - recorded in the results file
        log(f"  {what} failed: {error!r}")
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}


def heldout_score(bench: Bench, model: keras.Model) -> dict:
    """PSNR/SSIM on the held-out photos at sigma 25 with kd_tf.denoise.evaluation's protocol and noise."""
    report = evaluate([Method("model", model=model)], bench.heldout, sigmas=(EVAL_SIGMA,), seed=EVAL_SEED,
                      timing_size=bench.sizes.inference_size, progress=lambda *_: None)
    scores = report["methods"]["model"]["scores"][str(EVAL_SIGMA)]
    return {"psnr": scores["psnr"], "ssim": scores["ssim"]}


# -- speed -----------------------------------------------------------------------------------

def precision_and_xla_speed(bench: Bench) -> dict:
    """Step time of the output-only distill step (and of its parts) in fp32/bf16, with/without XLA."""
    rows = {}
    for precision in ("fp32", "bf16"):
        rows[f"distill {precision}"] = distill_step(bench, precision, features=False).as_dict()
        if precision in bench.sizes.xla_precisions:
            rows[f"distill {precision} + XLA"] = _attempt(
                f"XLA {precision}", lambda: distill_step(bench, precision, features=False, xla=True).as_dict(),
                bench.log)
        rows[f"teacher forward {precision}"] = forward_pass(bench, precision, "teacher").as_dict()
        rows[f"student step {precision}"] = student_step(bench, precision).as_dict()
    return rows


def _with_pipeline_threads(dataset: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def _in_memory(bench: Bench, count: int) -> tf.data.Dataset:
    """`count` batches materialised once and repeated: a pipeline that costs nothing per step."""
    noisy, clean = zip(*[(n.numpy(), c.numpy()) for n, c in bench.patches().take(count)])
    return tf.data.Dataset.from_tensor_slices((np.stack(noisy), np.stack(clean))).repeat().prefetch(2)


def tf_data_speed(bench: Bench) -> dict:
    """The shipped pipeline (parallel map, AUTOTUNE, prefetch) against one pipeline thread and
    against no per-step pipeline work at all (the most any tf.data tuning could give)."""
    precision, sizes = DEFAULT_PRECISION, bench.sizes
    shipped = distill_step(bench, precision, features=False)
    one_thread = distill_step(bench, precision, features=False,
                              dataset=_with_pipeline_threads(bench.patches(), 1), tag="pipeline 1 thread")
    in_memory = distill_step(bench, precision, features=False,
                             dataset=_in_memory(bench, min(8, sizes.warmup + sizes.steps)), tag="in-memory batches")
    alone = time_loop(lambda batch: batch[0].numpy(), iter(bench.patches()), sizes.warmup, sizes.steps)
    first = [b[0].numpy() for b in bench.patches().take(2)]
    second = [b[0].numpy() for b in _with_pipeline_threads(bench.patches(), 1).take(2)]
    return {"shipped": shipped.as_dict(), "one_pipeline_thread": one_thread.as_dict(),
            "in_memory_upper_bound": in_memory.as_dict(), "pipeline_alone_s_per_batch": alone.median_s,
            "one_thread_same_batches": all(np.array_equal(x, y) for x, y in zip(first, second))}


def thread_settings(bench: Bench) -> dict:
    """Intra/inter-op threads and oneDNN on/off, each in a fresh process (TensorFlow fixes them at
    start-up): distill step time, and the shipped student's held-out PSNR and ms per photo."""
    rows = {}
    for intra, inter, onednn in bench.sizes.thread_settings:
        name = f"intra {intra or 'default'}, inter {inter or 'default'}, oneDNN {'on' if onednn else 'off'}"
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0", TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, "-m", "benchmarks.thread_probe", str(intra), str(inter)]
        command += ["--quick"] if bench.quick else []
        bench.log(f"  thread probe: {name}")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            rows[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            sys.stderr.write(done.stderr)
            continue
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def teacher_cache_speed(bench: Bench, cache) -> dict:
    """Offline distillation: a step on cached teacher outputs against a live-teacher step, and the
    end-to-end gain once building the bank (one teacher pass per cached batch) is paid for."""
    precision, sizes = DEFAULT_PRECISION, bench.sizes
    online = distill_step(bench, precision, features=False)
    cached = distill_step(bench, precision, features=False, dataset=cache.dataset(sizes.batch, seed=0),
                          tag="teacher cache")
    bank_batches = len(cache) // sizes.batch
    bank_s_per_batch = cache.seconds / bank_batches

    def end_to_end(steps, bank_batches):
        if bank_batches == 0:                             # no bank: the teacher runs every step
            return 1.0
        return steps * online.median_s / (bank_batches * bank_s_per_batch + steps * cached.median_s)

    configs = {"main job": denoise_config.DistillJobConfig(), "shipped student": cfg.load(denoise_config.DistillJobConfig,
                                                                                SHIPPED_STUDENT_CONFIG)}
    budgets = {name: {"steps": c.train.steps, "bank_batches": cached_batches(c)} for name, c in configs.items()}
    for budget in budgets.values():
        budget["end_to_end_ratio"] = end_to_end(budget["steps"], budget["bank_batches"])
    return {"online": online.as_dict(), "cached": cached.as_dict(), "bank_batches": bank_batches,
            "bank_seconds": cache.seconds, "bank_mb": cache.nbytes / 2 ** 20,
            "step_ratio": online.median_s / cached.median_s,
            "end_to_end_ratio_lever_budget": end_to_end(sizes.lever_train_steps, bank_batches),
            "end_to_end_ratio_shipped_config": budgets["shipped student"]["end_to_end_ratio"],
            "configs": budgets}


# -- PSNR cost -------------------------------------------------------------------------------

def cached_batches(config: denoise_config.DistillJobConfig) -> int:
    """How many teacher batches a distill job caches (0: the teacher runs every step)."""
    from kd_tf.denoise import jobs

    if hasattr(jobs, "batches_to_cache"):                 # automatic when the config says null
        return int(jobs.batches_to_cache(config))
    return int(config.distill.cache_batches or 0)


def train_and_score(bench: Bench, precision: str, xla: bool, dataset: tf.data.Dataset, initial_weights) -> dict:
    """The main job's distillation (output MSE, student_loss_weight 0.5, cosine Adam) for the lever budget,
    from `initial_weights`; scored as kd_tf scores students (float32 copy, held-out photos)."""
    steps = bench.sizes.lever_train_steps
    student = bench.student(precision)
    student.set_weights(initial_weights)
    distiller = bench.distiller(precision, features=False, student=student)
    distiller.compile(optimizer=cosine_optimizer(cfg.TrainConfig(steps=steps)), jit_compile=xla)
    started = time.perf_counter()
    distiller.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    seconds = time.perf_counter() - started
    score = heldout_score(bench, float32_copy(student, STUDENT_NET.widths, STUDENT_NET.blocks))
    return {"train_seconds": seconds, "steps": steps, **score}


def psnr_costs(bench: Bench, cache, speed: dict) -> dict:
    """One short training per setting: fp32, bf16, bf16 + XLA, bf16 + teacher cache.

    A lever below the speed target is off whatever it costs, so XLA's training (its compile alone
    takes tens of seconds here) is skipped then, unless `bench.train_all_levers`.
    """
    initial = bench.student("fp32").get_weights()
    runs = {
        "fp32": lambda: train_and_score(bench, "fp32", False, bench.patches(), initial),
        "bf16": lambda: train_and_score(bench, "bf16", False, bench.patches(), initial),
        "bf16 + XLA": lambda: train_and_score(bench, "bf16", True, bench.patches(), initial),
        "bf16 + teacher cache": lambda: train_and_score(bench, "bf16", False,
                                                        cache.dataset(bench.sizes.batch, seed=0), initial),
    }
    xla_speed = _ratio(speed, "distill bf16", "distill bf16 + XLA")
    results = {}
    for name, run in runs.items():
        if name == "bf16 + XLA" and not bench.train_all_levers and (xla_speed is None or xla_speed < SPEED_TARGET):
            shown = "failed" if xla_speed is None else f"{xla_speed:.2f}x"
            results[name] = {"skipped": f"not trained: XLA step speed {shown}, below {SPEED_TARGET}x, so off at any cost"}
            continue
        bench.log(f"  lever training: {name} ({bench.sizes.lever_train_steps} steps)")
        results[name] = _attempt(f"training {name}", run, bench.log)
    return results


def _delta(results: dict, on: str, off: str):
    if "psnr" not in results.get(on, {}) or "psnr" not in results.get(off, {}):
        return None
    return results[on]["psnr"] - results[off]["psnr"]


def _ratio(rows: dict, off: str, on: str):
    """Speed of `on` against `off` (> 1: faster), None where either failed or was not measured."""
    if "median_s" not in rows.get(off, {}) or "median_s" not in rows.get(on, {}):
        return None
    return rows[off]["median_s"] / rows[on]["median_s"]


def xla_on_by_default(bench: Bench) -> bool:
    """What Keras resolves jit_compile="auto" to here, compiling as kd_tf.denoise.jobs does (no jit_compile)."""
    distiller = bench.distiller(DEFAULT_PRECISION, features=False)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    return bool(distiller.jit_compile)


def _thread_summary(threads: dict) -> dict:
    """Each setting against the first one, TensorFlow's default."""
    default = next(iter(threads.values()), {})
    summary = {}
    for name, row in threads.items():
        ok = "step_s" in row and "step_s" in default
        summary[name] = {"speed_vs_default": default["step_s"] / row["step_s"] if ok else None,
                         "psnr_delta_db": row["psnr"] - default["psnr"] if ok else None}
    return summary


def levers(bench: Bench) -> dict:
    """Every lever: speed ratio, PSNR cost, whether it is on by default, whether it should be."""
    speed = precision_and_xla_speed(bench)
    data = tf_data_speed(bench)
    threads = thread_settings(bench)
    cache = cache_teacher_outputs(bench.teacher(DEFAULT_PRECISION), bench.patches(), bench.sizes.cache_bank_batches)
    caching = teacher_cache_speed(bench, cache)
    trainings = psnr_costs(bench, cache, speed)

    summary = {
        "mixed_bfloat16": {"speed": _ratio(speed, "distill fp32", "distill bf16"),
                           "psnr_cost_db": _delta(trainings, "bf16", "fp32"),
                           "cost_measured_by": "training fp32 vs bf16",
                           "default_on": bfloat16_is_fast()},
        "xla": {"speed": _ratio(speed, f"distill {DEFAULT_PRECISION}", f"distill {DEFAULT_PRECISION} + XLA"),
                "speed_fp32": _ratio(speed, "distill fp32", "distill fp32 + XLA"),
                "psnr_cost_db": _delta(trainings, "bf16 + XLA", "bf16"),
                "cost_measured_by": "training bf16 vs bf16 + XLA", "default_on": xla_on_by_default(bench)},
        "tf.data tuning": {"speed": data["shipped"]["median_s"] / data["in_memory_upper_bound"]["median_s"],
                           "speed_one_thread": data["one_pipeline_thread"]["median_s"] / data["shipped"]["median_s"],
                           "psnr_cost_db": 0.0 if data["one_thread_same_batches"] else None,
                           "cost_measured_by": "identical batches (thread pool); upper bound changes the data",
                           "default_on": True},
        "threads": {"settings": _thread_summary(threads), "default_on": True,
                    "cost_measured_by": "shipped student's held-out PSNR under each setting"},
        "teacher cache": {"speed": caching["step_ratio"],
                          "speed_end_to_end_lever_budget": caching["end_to_end_ratio_lever_budget"],
                          "speed_end_to_end_shipped_config": caching["end_to_end_ratio_shipped_config"],
                          "psnr_cost_db": _delta(trainings, "bf16 + teacher cache", "bf16"),
                          "cost_measured_by": "training bf16 live teacher vs bf16 cached bank",
                          "default_on": cached_batches(denoise_config.DistillJobConfig()) > 0},
    }
    for lever in ("mixed_bfloat16", "xla"):                 # the rule of the issue: on iff >= 1.3x at <= 0.05 dB
        entry = summary[lever]
        if entry["speed"] is not None and entry["speed"] < SPEED_TARGET:
            entry["qualifies"] = False
        elif entry["speed"] is not None and entry["psnr_cost_db"] is not None:
            entry["qualifies"] = entry["psnr_cost_db"] >= -COST_LIMIT_DB
    return {"precision_default": DEFAULT_PRECISION, "train_steps": bench.sizes.lever_train_steps,
            "bank_batches": bench.sizes.cache_bank_batches, "speed": speed, "tf_data": data, "threads": threads,
            "teacher_cache": caching, "trainings": trainings, "summary": summary,
            "targets": {"speed_min": SPEED_TARGET, "cost_max_db": COST_LIMIT_DB}}
