"""Learning-rate schedules, stepped per batch and saved with the optimizer.

They depend only on the optimizer's step counter, so a resumed run continues
exactly where the checkpoint left the schedule.
"""
from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="cifar_core")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` then linear decay to `peak * final_fraction`
    (the triangular schedule of airbench and 'How to train your ResNet')."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.2,
                 start_fraction: float = 0.1, final_fraction: float = 0.0):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_fraction = float(warmup_fraction)
        self.start_fraction = float(start_fraction)
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = max(self.total_steps * self.warmup_fraction, 1.0)
        rising = self.start_fraction + (1 - self.start_fraction) * step / warmup
        falling = 1 - (1 - self.final_fraction) * (step - warmup) / max(self.total_steps - warmup, 1.0)
        fraction = keras.ops.where(step < warmup, rising, falling)
        return self.peak * keras.ops.clip(fraction, self.final_fraction, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "start_fraction": self.start_fraction, "final_fraction": self.final_fraction}


@keras.saving.register_keras_serializable(package="cifar_core")
class Cosine(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from `peak` to zero over `total_steps`."""

    def __init__(self, peak: float, total_steps: int):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        progress = keras.ops.clip(keras.ops.cast(step, "float32") / self.total_steps, 0.0, 1.0)
        return self.peak * 0.5 * (1 + keras.ops.cos(math.pi * progress))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps}


def make_learning_rate(schedule: str, peak: float, total_steps: int, warmup_fraction: float = 0.2):
    if schedule == "onecycle":
        return OneCycle(peak, total_steps, warmup_fraction)
    if schedule == "cosine":
        return Cosine(peak, total_steps)
    return peak  # constant, or plateau (a callback lowers it)
