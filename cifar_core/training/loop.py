"""Training's API: config + data -> a complete, resumable run folder, one writer at a time.

train() and resume() own the run folder (its lock, its failures recorded in
status.json); stages.py runs the epochs, finish.py measures and saves the result.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backend, runs
from ..config import TrainConfig
from ..data import Dataset, load_dataset
from ..data.pipeline import AlternatingFlip, build_augmenter, make_dataset, split_train_val
from ..errors import CifarError, RunFolderError
from ..models import build_model, get_spec
from . import checkpoint, distill, distributed
from .checks import check_training_config
from .finish import finish_run, input_size
from .optimizers import compile_model
from .precision import resolve_precision
from .stages import FitContext, fit_stage, train_transfer


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def make_split(dataset: Dataset, config: TrainConfig) -> Split:
    train, val = split_train_val(dataset.y_train, config.val_fraction, config.random_state, config.limit)
    return Split(dataset.x_train[train], dataset.y_train[train], dataset.x_train[val], dataset.y_train[val])


def train(config: TrainConfig, run_dir: Path | str | None = None, dataset: Dataset | None = None,
          verbose: int | str = "auto", callbacks: list | None = None) -> Path:
    """Train a new run; returns its folder.

    Bad arguments and unreadable data fail before the run folder exists, so
    a typo does not leave a dead run on the leaderboard.
    """
    check_training_config(config)
    strategy = distributed.make_strategy(config.distribute)  # before any other TensorFlow op
    config = resolve_precision(config, report=None if verbose == 0 else print)
    if not distributed.is_chief(config.distribute):  # the chief writes the run folder; this worker, its own
        scratch = distributed.scratch_dir(run_dir or config.model)
        try:
            return _train_in(config, scratch / "run", True, dataset, verbose, callbacks, strategy, chief=False)
        finally:
            distributed.remove_scratch(scratch)
    return _train_in(config, run_dir, run_dir is None or not Path(run_dir).exists(), dataset, verbose, callbacks,
                     strategy)


def _train_in(config: TrainConfig, run_dir: Path | str | None, created: bool, dataset: Dataset | None, verbose,
              callbacks, strategy, chief: bool = True) -> Path:
    run_dir = Path(run_dir) if run_dir else runs.create_run_dir(config.model)
    runs.check_new_run_dir(run_dir)  # before the lock file goes in: never touch a user's folder
    with runs.RunWriter(run_dir):
        runs.check_new_run_dir(run_dir)  # again under the lock: another writer may have finished meanwhile
        try:
            dataset = dataset if dataset is not None else load_dataset(config.data)
        except BaseException:
            _remove_unstarted(run_dir, created)
            raise
        runs.atomic_write_text(run_dir / runs.CONFIG_FILE, config.to_json())
        runs.write_status(run_dir, "queued", epoch=0, n_epochs=_total_epochs(config), progress=0.0)
        return _guarded(config, run_dir, dataset, verbose, callbacks, state=None, strategy=strategy, chief=chief)


def _remove_unstarted(run_dir: Path, created: bool) -> None:
    """A run that failed before its config was written leaves no folder behind."""
    if created:
        (run_dir / runs.LOCK_FILE).unlink(missing_ok=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass


def resume(run_dir: Path | str, dataset: Dataset | None = None, verbose: int | str = "auto",
           callbacks: list | None = None) -> Path:
    """Continue a run from its last completed epoch."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise RunFolderError(f"not a run folder (no {runs.CONFIG_FILE}): {run_dir}")
    config = runs.read_config(run_dir)
    strategy = distributed.make_strategy(config.distribute)
    if not distributed.is_chief(config.distribute):
        # Another worker of a distributed run: the chief's checkpoint, read only, into a folder of its own.
        state = checkpoint.load_state(run_dir)
        scratch = distributed.scratch_dir(run_dir)
        try:
            with runs.RunWriter(scratch):
                dataset = dataset if dataset is not None else load_dataset(config.data)
                return _guarded(config, scratch, dataset, verbose, callbacks, state, strategy, source_dir=run_dir,
                                chief=False)
        finally:
            distributed.remove_scratch(scratch)
    with runs.RunWriter(run_dir):
        status = runs.read_status(run_dir) or {}
        if status.get("state") == "completed":
            raise RunFolderError(f"{run_dir.name} has already completed; nothing to resume")
        state = checkpoint.load_state(run_dir)  # a damaged checkpoint fails here, before the data loads
        dataset = dataset if dataset is not None else load_dataset(config.data)
        return _guarded(config, run_dir, dataset, verbose, callbacks, state, strategy)


def _total_epochs(config: TrainConfig) -> int:
    return config.n_epochs + (config.fine_tune_epochs if get_spec(config.model).transfer else 0)


def _guarded(config, run_dir, dataset, verbose, callbacks, state: dict | None, strategy=None,
             source_dir: Path | None = None, chief: bool = True) -> Path:
    """Run training; whatever stops it is recorded in status.json first."""
    try:
        _train(config, run_dir, dataset, verbose, callbacks or [], state, strategy, source_dir or run_dir, chief)
    except KeyboardInterrupt:
        _record_stop(run_dir, "interrupted", "stopped before the end; resume with --resume")
        raise
    except CifarError as exc:
        _record_stop(run_dir, "failed", str(exc))
        raise
    except OSError as exc:
        _record_stop(run_dir, "failed", f"{type(exc).__name__}: {exc}")
        raise CifarError(f"training stopped: {exc.strerror or exc}") from None
    except Exception as exc:
        _record_stop(run_dir, "failed", f"{type(exc).__name__}: {exc}")
        raise
    return run_dir


def _record_stop(run_dir: Path, state: str, message: str) -> None:
    try:
        runs.update_status(run_dir, state, message=message)
    except OSError:
        pass  # the disk is full or gone: the previous status file is still intact


def _train(config: TrainConfig, run_dir: Path, dataset: Dataset, verbose, extra_callbacks: list,
           state: dict | None, strategy=None, source_dir: Path | None = None, chief: bool = True) -> None:
    """Train from the checkpoint's state (None: from scratch), then finish the run. Under a
    tf.distribute `strategy` the model is made in its scope and trained by the custom step;
    `source_dir` is where the checkpoint to resume from lives (another worker's: the chief's)."""
    backend.configure()
    import keras

    keras.utils.set_random_seed(config.random_state)
    spec = get_spec(config.model)
    runs.atomic_write_json(run_dir / runs.DATA_FILE, {**dataset.summary(), "load_seconds": dataset.load_seconds})
    split = make_split(dataset, config)
    size = input_size(config)
    num_classes = len(dataset.class_names)

    history: list[dict] = list(state["history"]) if state else []
    completed = len(history)
    runs.write_history(run_dir, history)  # drops rows written after the checkpoint

    # Before the student is made, and the seed set again after: the teacher's loading draws
    # from Keras' generator, and the student starts as it would without a teacher.
    targets = distill.training_targets(config, run_dir, split.y_train, split.x_train, dataset.class_names,
                                       dataset.image_size)
    if targets is not None:
        keras.utils.set_random_seed(config.random_state)
    train_labels = split.y_train if targets is None else targets
    steps_per_epoch = math.ceil(len(split.y_train) / config.batch_size)
    with strategy.scope() if strategy else contextlib.nullcontext():
        if state:
            model = checkpoint.load_model(source_dir or run_dir, state)
        else:
            model = build_model(config.model, size, num_classes, config.precision, **config.model_options)
            _initialise(model, config, split)
            if not spec.transfer:  # transfer models compile per stage
                compile_model(model, config, config.learning_rate, steps_per_epoch * config.n_epochs)

    # Seeded by the run, not the resume point: a resumed run keeps every image's flip pattern.
    alternating_flip = (AlternatingFlip(len(split.y_train), config.random_state, first_epoch=completed)
                        if "altflip" in config.augmentations else None)

    def pipelines_at(size: int):
        train_data = make_dataset(split.x_train, train_labels, num_classes, config.batch_size, size,
                                  build_augmenter(config, dataset.image_size), shuffle=True,
                                  random_state=config.random_state + completed, alternating_flip=alternating_flip)
        val_data = (make_dataset(split.x_val, split.y_val, num_classes, config.batch_size, size)
                    if len(split.y_val) else None)
        return train_data, val_data

    context = FitContext(run_dir, split, history, *pipelines_at(size), steps_per_epoch, _total_epochs(config),
                         verbose, extra_callbacks, pipelines_at=pipelines_at,
                         lead_seconds=distill.lead_seconds(run_dir))
    if state and state.get("training_done"):
        pass  # killed while finishing: the checkpoint holds the final weights, train no further
    elif spec.transfer:
        train_transfer(model, config, dataset, size, context)
    elif strategy is not None and completed < config.n_epochs:
        distributed.fit_distributed(model, config, context, strategy, completed)
    elif completed < config.n_epochs:
        fit_stage(model, config, context, "train", 0, config.n_epochs, completed)
    if not chief:
        return  # the chief measures and saves the model; this worker's share ends with the last step
    if strategy is not None:
        model = distributed.local_copy(model, config, size, num_classes)
    if not (state and state.get("training_done")):
        # The final weights (early stopping's best restored), so a kill from here
        # on resumes straight to finishing instead of training another epoch.
        checkpoint.save(run_dir, model, history, training_done=True)
    finish_run(model, config, run_dir, dataset, history, n_train=len(split.y_train))


def _initialise(model, config: TrainConfig, split: Split) -> None:
    if any(layer.name == "whiten" for layer in model.layers):
        from ..models.homebrew import init_whitening

        init_whitening(model, split.x_train)


