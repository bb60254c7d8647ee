"""`precision="auto"`: float32 or mixed bfloat16, whichever trains faster on this machine.

A short probe times a few training steps of the run's model in each precision; the
choice is written into the run's config, so the run reproduces on any machine from
that config. Choices are kept per device (the accelerator, else the CPU), backend and
model shape in the studio's cache, so a second run of the same recipe does not probe again. Where the CPU has no bf16
instructions (and no accelerator is present) bf16 is emulated and always slower, so
float32 is chosen without a probe.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import backend
from ..config import TrainConfig
from ..errors import CifarError

CANDIDATES = ("float32", "mixed_bfloat16")
PROBE_WARMUP_STEPS = 2
PROBE_STEPS = 4
MAX_CHOICES_BYTES = 1 << 20


def choices_file() -> Path:
    from ..data.sources import cache_dir

    return cache_dir() / "precision-choices.json"


def resolve_precision(config: TrainConfig, report=None) -> TrainConfig:
    """`config` with "auto" replaced by the precision this machine trains faster in;
    any other precision is returned unchanged. `report(line)` hears the decision."""
    if config.precision != "auto":
        return config
    key = _choice_key(config)
    known = _read_choices().get(key)
    if _sound_choice(known):
        choice, reason = known["choice"], f"chosen earlier on this machine ({_speeds_text(known)})"
    elif not _may_gain_from_bf16():
        choice, reason = "float32", "this CPU has no bfloat16 instructions"
        _remember(key, {"choice": choice, "reason": reason})
    else:
        started = time.perf_counter()
        speeds = probe_speeds(config)
        choice = max(speeds, key=speeds.get)
        record = {"choice": choice, "images_per_second": speeds,
                  "probe_seconds": round(time.perf_counter() - started, 1)}
        reason = f"probe: {_speeds_text(record)}"
        _remember(key, record)
    if report:
        report(f"precision auto -> {choice} ({reason})")
    return config.replace(precision=choice)


def probe_speeds(config: TrainConfig) -> dict[str, float]:
    """Training images/s of the config's model in each candidate precision (random images)."""
    backend.configure()
    import keras

    from ..models import build_model
    from .finish import input_size
    from .optimizers import compile_model

    size = input_size(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (config.batch_size, size, size, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, config.batch_size), 10)
    speeds = {}
    for precision in CANDIDATES:
        candidate = config.replace(precision=precision)
        model = build_model(config.model, size, 10, precision, **config.model_options)
        compile_model(model, candidate, candidate.learning_rate, 1000)
        for _ in range(PROBE_WARMUP_STEPS):
            model.train_on_batch(images, labels)
        started = time.perf_counter()
        for _ in range(PROBE_STEPS):
            model.train_on_batch(images, labels)
        speeds[precision] = round(PROBE_STEPS * config.batch_size / (time.perf_counter() - started), 1)
    return speeds


def _may_gain_from_bf16() -> bool:
    return backend.has_bf16_units() or backend.accelerator_name() is not None


def _choice_key(config: TrainConfig) -> str:
    """What decides the faster precision: the device that trains (an accelerator, if any, else the
    CPU), the backend and the model's shape."""
    import keras

    shape = {"model": config.model, "batch_size": config.batch_size, "input_size": config.input_size,
             "model_options": config.model_options, "optimizer": config.optimizer}
    device = backend.accelerator_name() or backend.cpu_name()
    return f"{device} | {keras.backend.backend()} | {json.dumps(shape, sort_keys=True)}"


def _speeds_text(record: dict) -> str:
    speeds = record.get("images_per_second") or {}
    return ", ".join(f"{name} {value:,.0f} images/s" for name, value in speeds.items()) or record.get("reason", "")


def _sound_choice(record) -> bool:
    """Whether a remembered choice is one `_remember` writes (a damaged cache only costs a probe)."""
    from .. import schema

    speeds = record.get("images_per_second") if isinstance(record, dict) else None
    return (isinstance(record, dict) and record.get("choice") in CANDIDATES
            and (speeds is None or isinstance(speeds, dict) and schema.all_are(schema.non_negative, speeds.values()))
            and schema.optional(schema.text)(record.get("reason")))


def _read_choices() -> dict:
    from ..safeio import read_json_file

    try:
        found = read_json_file(choices_file(), MAX_CHOICES_BYTES)
    except (CifarError, OSError):
        return {}  # none yet, or damaged: probe again
    return found if isinstance(found, dict) else {}


def _remember(key: str, record: dict) -> None:
    from ..runs import atomic_write_text

    choices = _read_choices()
    choices[key] = record
    try:
        choices_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(choices_file(), json.dumps(choices, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only cache only costs the next run another probe
