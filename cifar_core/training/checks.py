"""Refusals that need only the config and the file system.

They run before a run folder or a job exists: in train() for the CLI, and in jobs.launch()
for the dashboard, which must not import TensorFlow to refuse a form (this module and the ones
it imports stay free of it; tests/test_jobs.py checks).
"""
from __future__ import annotations

from ..config import TrainConfig
from ..errors import ConfigError
from ..models.registry import get_spec
from . import distill, distributed


def check_training_config(config: TrainConfig) -> None:
    transfer = get_spec(config.model).transfer
    distributed.check_config(config, transfer)
    check_stage_settings(config, transfer)
    distill.check_config(config, transfer)


def check_stage_settings(config: TrainConfig, transfer: bool) -> None:
    """Settings only a transfer model's stages use, refused elsewhere instead of ignored."""
    if config.low_res_epochs and not transfer:
        raise ConfigError(f"low_res_size and low_res_epochs are for transfer models' fine-tuning; "
                          f"{config.model} trains in one stage at its input size")
    if config.low_res_epochs and "altflip" in config.augmentations:
        # Its epoch counter lives in the pipeline, and each image size has a pipeline of its own.
        raise ConfigError("altflip cannot be combined with low_res_epochs; use flip")
