"""Distillation: a finished run (the teacher) makes part of each training target.

The teacher's flip-TTA probabilities on the training images are computed once, before the
student is built, and kept in the run's checkpoint folder (a resume reuses them). Each target
is then `teacher_weight` of those probabilities and the rest the one-hot label; the loss, the
label smoothing and the augmentation stay the recipe's. The teacher's minutes count as training
time (in the first epoch, as a transfer run's frozen features do), so a figure never hides them.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import runs
from ..config import TrainConfig
from ..errors import ConfigError, RunFolderError
from ..safeio import file_sha256, read_cached_npy
from ..schema import plain_name

TEACHER_FILE = "teacher.json"
TEACHER_PROBABILITIES_FILE = "teacher-probabilities.npy"
TEACHER_REQUIRED = ("teacher_run", "teacher_model_sha256", "teacher_seconds")


def teacher_dir(name: str) -> Path:
    """A teacher named by its run folder's name lives among the studio's runs; anything else
    (a separator, '.' or '..' in it) is a path."""
    return runs.runs_root() / name if plain_name(name) else Path(name)


def check_config(config: TrainConfig, transfer: bool) -> None:
    """Refused before a run folder exists: a teacher for a model that cannot use one, or a
    teacher that is not a finished run."""
    if config.teacher is None:
        return
    if transfer:
        raise ConfigError(f"teacher is for homebrew models; {config.model} trains its head on frozen "
                          f"features with the labels alone")
    if config.distribute != "none":
        raise ConfigError("teacher cannot be combined with --distribute (each worker would label its own share)")
    folder = teacher_dir(config.teacher)
    if not (folder / runs.MODEL_FILE).is_file():
        raise ConfigError(f"teacher {config.teacher!r} is not a finished run (no {runs.MODEL_FILE} in {folder})")


def lead_seconds(run_dir: Path) -> float:
    """The teacher's labelling time, counted in the run's first epoch; 0 without a teacher."""
    stats = read_stats(run_dir)
    return float(stats["teacher_seconds"]) if stats else 0.0


def read_stats(run_dir: Path) -> dict | None:
    return runs.read_checkpoint_record(run_dir, TEACHER_FILE, runs.TEACHER_SCHEMA, TEACHER_REQUIRED)


def training_targets(config: TrainConfig, run_dir: Path, labels: np.ndarray, images: np.ndarray,
                     class_names, image_size: int) -> np.ndarray | None:
    """Float32 targets of shape (images, classes) mixing the teacher in; None without a teacher."""
    if config.teacher is None:
        return None
    probabilities = _cached_probabilities(run_dir, len(labels), len(class_names))
    if probabilities is None:
        probabilities = _label_with_teacher(config.teacher, run_dir, images, class_names, image_size)
    one_hot = np.eye(len(class_names), dtype=np.float32)[labels]
    return (1.0 - config.teacher_weight) * one_hot + config.teacher_weight * probabilities  # float32, as both are


def _cached_probabilities(run_dir: Path, n_images: int, n_classes: int) -> np.ndarray | None:
    """The probabilities an earlier attempt of this run stored, if they are whole and sound."""
    try:  # a damaged record is labelled again, never trusted
        if read_stats(run_dir) is None:
            return None
    except RunFolderError:
        return None
    probabilities = read_cached_npy(runs.checkpoint_file(run_dir, TEACHER_PROBABILITIES_FILE),
                                           4 * n_images * n_classes)  # float32 cells, no more
    return probabilities if probabilities is not None and _sound(probabilities, n_images, n_classes) else None


def _sound(probabilities: np.ndarray, n_images: int, n_classes: int) -> bool:
    return (probabilities.dtype == np.float32 and probabilities.shape == (n_images, n_classes)
            and bool(np.isfinite(probabilities).all()) and bool((probabilities >= 0).all())
            and bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)))


def _label_with_teacher(teacher: str, run_dir: Path, images: np.ndarray, class_names,
                        image_size: int) -> np.ndarray:
    from ..evaluation import predict_proba
    from ..inference import load_run_model
    from .callbacks import PredictHeartbeat

    started = time.perf_counter()
    folder = teacher_dir(teacher)
    loaded = load_run_model(folder)
    if tuple(loaded.class_names) != tuple(class_names):
        raise RunFolderError(f"teacher {folder.name} knows the classes {list(loaded.class_names)}, "
                             f"this run's data {list(class_names)}")
    if loaded.data_image_size != image_size:
        raise RunFolderError(f"teacher {folder.name} was trained on {loaded.data_image_size} px images, "
                             f"this run's data is {image_size} px")
    # Minutes of predicting: the heartbeat keeps the job registry from taking the worker for dead.
    probabilities = predict_proba(loaded.model, images, tta=True, input_size=loaded.input_size,
                                  callbacks=[PredictHeartbeat(run_dir, "teacher")]).astype(np.float32)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # a bf16 softmax sums to 1 within ~1e-3
    stats = {"teacher_run": folder.name, "teacher_model_sha256": file_sha256(folder / runs.MODEL_FILE),
             "teacher_seconds": round(time.perf_counter() - started, 2)}
    teacher_metrics = runs.read_metrics(folder) or {}
    stats.update({f"teacher_{key}": teacher_metrics[key] for key in ("test_accuracy", "test_accuracy_tta")
                  if key in teacher_metrics})
    runs.atomic_write_npy(runs.checkpoint_file(run_dir, TEACHER_PROBABILITIES_FILE), probabilities)
    runs.atomic_write_json(runs.checkpoint_file(run_dir, TEACHER_FILE), stats)
    return probabilities

