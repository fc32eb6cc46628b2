"""Which compute precision pays on this machine.

bfloat16 halves memory traffic and doubles peak throughput only where the hardware has it: CPUs
with AVX512_BF16 or AMX-BF16, GPUs of compute capability 8.0 and newer, TPUs. Elsewhere it is
emulated: measured on a 2-core AMD EPYC with AVX2 only, a student training step took 4.0 s in
bfloat16 against 0.30 s in float32, and FFDNet's 12.4 s against 0.85 s. The training verbs train in
float32 by default (on an AVX512_BF16 CPU bfloat16 made the main job 1.7x faster but its student
2.54 dB worse); `train.mixed_precision: auto` asks the hardware:

- bfloat16 (`mixed_bfloat16`) on TPUs, GPUs of compute capability >= 8.0 and CPUs with AVX512_BF16/AMX;
- float16 with loss scaling (`mixed_float16`) on older GPUs (T4, V100): Distiller.compile wraps the
  optimizer in a LossScaleOptimizer and train_step scales the loss, so small gradients survive;
- float32 everywhere else.

`true` / `bfloat16`, `float16` and `false` / `float32` force one.
"""

from __future__ import annotations

import functools
import logging

from kd_tf.errors import InputError

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def bfloat16_is_fast() -> bool:
    """True where bfloat16 runs in hardware: a TPU, a GPU of compute capability >= 8.0, or a CPU
    with AVX512_BF16 / AMX-BF16 (when there is no accelerator)."""
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return True
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                        for gpu in gpus]
        return all(tuple(capability) >= (8, 0) for capability in capabilities)
    return bool(cpu_flags() & set(CPU_BF16_FLAGS))


SETTINGS = (True, False, "auto", "bfloat16", "float16", "float32")


@functools.lru_cache(maxsize=None)
def float16_gpu() -> bool:
    """True where every GPU predates bfloat16 (compute capability < 8.0: T4, V100), whose float16
    tensor cores make mixed_float16 the fast choice."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return bool(gpus) and all(
        tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))) < (8, 0)
        for gpu in gpus)


def resolve_mixed_precision(setting):
    """`train.mixed_precision` as the nets take it: True (bfloat16), "float16" or False (float32).

    >>> resolve_mixed_precision("bfloat16"), resolve_mixed_precision("float16"), resolve_mixed_precision("float32")
    (True, 'float16', False)
    """
    if setting not in SETTINGS:
        raise InputError(f"mixed_precision={setting!r}; accepted: {', '.join(map(str, SETTINGS))}")
    if setting == "auto":
        if bfloat16_is_fast():
            log.info("train.mixed_precision=auto: bfloat16 (the hardware has it)")
            return True
        if float16_gpu():
            log.info("train.mixed_precision=auto: float16 with loss scaling (a GPU without bfloat16)")
            return "float16"
        log.info("train.mixed_precision=auto: float32 (no bfloat16 in this hardware: it would be emulated, "
                 "several times slower)")
        return False
    return {"bfloat16": True, "float32": False}.get(setting, setting)


def policy_name(mixed_precision) -> str:
    """The Keras dtype policy of a resolved setting: mixed_bfloat16, mixed_float16 or float32."""
    if mixed_precision == "float16":
        return "mixed_float16"
    return "mixed_bfloat16" if mixed_precision else "float32"


def computes_in_float16(model) -> bool:
    """Whether any layer of `model` computes in float16 (and so needs loss scaling)."""
    return any(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None) == "float16"
               for layer in getattr(model, "layers", []))


def with_loss_scaling(optimizer, model):
    """`optimizer`, wrapped in a LossScaleOptimizer when `model` computes in float16 (Keras wraps
    only models whose own policy is mixed_float16, not a functional model whose layers are)."""
    import keras

    optimizer = keras.optimizers.get(optimizer)
    if computes_in_float16(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
