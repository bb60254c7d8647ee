"""Per-epoch checkpoints for resuming: full model (with optimizer) + history."""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import keras

from .. import runs
from ..errors import ModelFileError, RunFolderError
from ..models.loading import check_checkpoint_file
from ..safeio import private_path_beside
from ..schema import count, flag, preview

STATE_NAME = runs.CHECKPOINT_STATE_FILE


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / runs.CHECKPOINT_DIR


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """model.save into a fresh private folder beside the target, then rename: a killed save leaves
    the old file, and no name anyone could have placed a link at beforehand is ever written."""
    with private_path_beside(path) as tmp:
        model.save(tmp)
        os.replace(tmp, path)


def save(run_dir: Path, model: keras.Model, history: list[dict], training_done: bool = False) -> None:
    """Write epoch N's model under its own name, then point the state at it.

    A kill at any moment leaves a state whose model file and history agree.
    training_done marks the final weights: a resume finishes the run, it does not train on.
    """
    folder = runs.ensure_subfolder(checkpoint_dir(run_dir))
    model_name = f"epoch-{len(history):04d}{'-final' if training_done else ''}.keras"
    save_model_atomically(model, folder / model_name)
    runs.atomic_write_json(folder / STATE_NAME, {"epochs_completed": len(history), "model_file": model_name,
                                                 "history": history, "training_done": training_done})
    for old in folder.glob("epoch-*.keras"):
        if old.name != model_name:
            old.unlink(missing_ok=True)


_MODEL_NAME = re.compile(r"epoch-\d{4,}(-final)?\.keras")


def load_state(run_dir: Path) -> dict | None:
    """The checkpoint's state, None if the run never checkpointed; RunFolderError if it is damaged."""
    path = checkpoint_dir(run_dir) / STATE_NAME
    if not path.exists():
        return None
    state = runs.read_json(path)
    where = f"{run_dir.name}'s checkpoint"
    problem = _state_problem(state)
    if problem:
        raise RunFolderError(f"{where} ({STATE_NAME}) is damaged: {problem}; start a new run")
    if not count(state.get("epochs_completed")) or state["epochs_completed"] != len(state["history"]):
        raise RunFolderError(f"{where} lists {len(state['history'])} epochs but says "
                             f"{state.get('epochs_completed')!r} completed; start a new run")
    model_path = checkpoint_dir(run_dir) / state["model_file"]
    if not model_path.is_file():
        raise RunFolderError(f"{where} names {state['model_file']}, which is missing; it cannot be resumed")
    if not zipfile.is_zipfile(model_path):  # a cheap look at the end of the file: truncated or empty
        raise RunFolderError(f"{where} model {model_path.name} is unreadable (truncated?); it cannot be resumed")
    return state


def _state_problem(state) -> str | None:
    """What makes a parsed state unusable, or None. Its history goes on into history.csv and counts the
    stages of the resume, so each row is held to history.csv's own rules."""
    if not isinstance(state, dict):
        return f"it holds {type(state).__name__}, not an object"
    model_file = state.get("model_file")
    if not isinstance(model_file, str) or not _MODEL_NAME.fullmatch(model_file):
        return f"model_file is {preview(model_file)}"
    if not flag(state.get("training_done", False)):
        return f"training_done is {preview(state['training_done'])}"
    return runs.history_rows_problem(state.get("history"))


def load_model(run_dir: Path, state: dict) -> keras.Model:
    """The checkpoint's model with its optimizer. A run folder may come from someone else, so the file
    is bounded like any model file first (its training objects and this package's classes allowed)."""
    # The classes a checkpoint may name, registered before the check and Keras look them up.
    from ..models import layers  # noqa: F401
    from . import optimizers, schedules  # noqa: F401

    path = checkpoint_dir(run_dir) / state["model_file"]
    try:
        check_checkpoint_file(path)
    except ModelFileError as exc:
        raise RunFolderError(f"{run_dir.name}'s checkpoint cannot be resumed: {exc}") from None
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip or h5 shows up as many types
        raise RunFolderError(f"{run_dir.name}'s checkpoint model {path.name} is unreadable "
                             f"({type(exc).__name__}); it cannot be resumed") from None
