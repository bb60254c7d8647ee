"""Training engine: fit loop, run-folder callbacks, schedules, checkpoints."""
from .loop import resume, train

__all__ = ["resume", "train"]
