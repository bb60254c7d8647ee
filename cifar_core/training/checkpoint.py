"""Per-epoch checkpoints for resuming: full model (with optimizer) + history."""
from __future__ import annotations

import os
from pathlib import Path

import keras

from .. import runs

STATE_NAME = "state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / runs.CHECKPOINT_DIR


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """model.save to a temp name, then rename: a killed save leaves the old file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(run_dir: Path, model: keras.Model, history: list[dict]) -> None:
    """Write epoch N's model under its own name, then point the state at it.

    A kill at any moment leaves a state whose model file and history agree.
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model_name = f"epoch-{len(history):04d}.keras"
    save_model_atomically(model, folder / model_name)
    runs.atomic_write_json(folder / STATE_NAME, {"epochs_completed": len(history), "model_file": model_name,
                                                 "history": history})
    for old in folder.glob("epoch-*.keras"):
        if old.name != model_name:
            old.unlink(missing_ok=True)


def load_state(run_dir: Path) -> dict | None:
    path = checkpoint_dir(run_dir) / STATE_NAME
    if not path.is_file():
        return None
    state = runs.read_json(path)
    if not (checkpoint_dir(run_dir) / state.get("model_file", "")).is_file():
        return None
    return state


def load_model(run_dir: Path, state: dict) -> keras.Model:
    # Our own checkpoint, written by this code, so the registered schedules may load.
    return keras.models.load_model(checkpoint_dir(run_dir) / state["model_file"])
