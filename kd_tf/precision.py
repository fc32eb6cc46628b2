"""Which compute precision pays on this machine.

bfloat16 halves memory traffic and doubles peak throughput only where the hardware has it: CPUs
with AVX512_BF16 or AMX-BF16, GPUs of compute capability 8.0 and newer, TPUs. Elsewhere it is
emulated: measured on a 2-core AMD EPYC with AVX2 only, a student training step took 4.0 s in
bfloat16 against 0.30 s in float32, and FFDNet's 12.4 s against 0.85 s. So the training verbs'
default (`train.mixed_precision: auto`) asks the hardware. float16 with loss scaling, for GPUs
without bfloat16 (T4, V100), is there through the Python API (a LossScaleOptimizer, which
Distiller.train_step scales the loss for); the CLI computes in float32 on them.
"""

from __future__ import annotations

import functools
import logging

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


def resolve_mixed_precision(setting) -> bool:
    """`train.mixed_precision`: true or false as given; "auto" -> bfloat16 where it is fast."""
    if setting == "auto":
        fast = bfloat16_is_fast()
        log.info("train.mixed_precision=auto: %s", "bfloat16 (the hardware has it)" if fast else
                 "float32 (no bfloat16 in this hardware: it would be emulated, several times slower)")
        return fast
    return bool(setting)
