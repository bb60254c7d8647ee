"""Process-wide TensorFlow/Keras settings, applied once before any op runs."""
from __future__ import annotations

import contextlib
import functools
import os
import platform

_configured = False


def configure(threads: int | None = None) -> None:
    """Pin op parallelism to the cores we have: on 2 shared cores, TensorFlow's
    defaults oversubscribe them (measured in MACHINE-NOTES / BENCHMARKS)."""
    global _configured
    if _configured:
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        _configured = True  # JAX and PyTorch size their own pools; TensorFlow may not even be installed
        return
    import tensorflow as tf

    threads = threads or int(os.environ.get("CIFAR_THREADS", 0)) or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised (e.g. in a test process); keep its settings
    _configured = True


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under `precision` ("float32" or "mixed_bfloat16"), then put
    the process-wide policy back: tests and the dashboard share one process."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def peak_memory_mb() -> float | None:
    """This process's peak resident memory (Linux/macOS), for metrics.json."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    except (ImportError, OSError):
        return None


# The instruction sets that decide how fast a CPU trains, as /proc/cpuinfo names them.
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16"}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The first processor's instruction-set flags, as /proc/cpuinfo names them (empty where unknown)."""
    return set(_cpuinfo().get("flags", "").split())


def has_bf16_units() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_name() -> str:
    """'AMD EPYC (family 26 model 2; AVX2, AVX-512, AVX512_BF16)': the model name alone does
    not tell a Zen 4 from a Zen 5, and the instruction sets decide the speed."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = cpu_flags()
    features = ", ".join(label for flag, label in CPU_FEATURES.items() if flag in flags)
    family = f"family {info['cpu family']} model {info.get('model', '?')}" if "cpu family" in info else ""
    detail = "; ".join(part for part in (family, features) if part)
    return f"{name} ({detail})" if detail else name


@functools.cache
def accelerator_name() -> str | None:
    """'1 x NVIDIA H100 80GB HBM3' for the accelerators Keras' backend trains on, or None on a CPU
    (looked up once per process: the devices do not change while it runs)."""
    try:
        import keras

        name = keras.backend.backend()
        if name == "tensorflow":
            import tensorflow as tf

            devices = tf.config.list_physical_devices("GPU")
            kinds = [tf.config.experimental.get_device_details(d).get("device_name", "GPU") for d in devices]
        elif name == "jax":
            import jax

            kinds = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        elif name == "torch":
            import torch

            kinds = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            kinds = []
    except ImportError:
        return None
    return f"{len(kinds)} x {kinds[0]}" if kinds else None


def machine_description() -> dict:
    try:
        import keras

        backend = keras.backend.backend()
        keras_version = keras.__version__
    except ImportError:
        backend, keras_version = "unknown", "unknown"
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "system": platform.system(),
            "python": platform.python_version(), "keras": keras_version, "backend": backend}
