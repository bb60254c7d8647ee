"""Training engine: fit loop, run-folder callbacks, schedules, checkpoints.

train and resume load on first use, so that a TensorFlow-free module of this package
(checks.py, which the dashboard's job launcher imports) does not pull in the fit loop.
"""
__all__ = ["resume", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
