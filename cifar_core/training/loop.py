"""The fit loop: config + data -> a complete, resumable run folder."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backend, runs
from ..config import TrainConfig
from ..data import Dataset, load_dataset
from ..data.pipeline import AlternatingFlip, build_augmenter, make_dataset, split_train_val
from ..errors import CifarError, RunFolderError
from ..models import build_model, get_spec
from . import checkpoint
from .callbacks import PredictHeartbeat, ResumableEarlyStopping, ResumablePlateau, RunRecorder
from .optimizers import compile_model


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def make_split(dataset: Dataset, config: TrainConfig) -> Split:
    train, val = split_train_val(dataset.y_train, config.val_fraction, config.random_state, config.limit)
    return Split(dataset.x_train[train], dataset.y_train[train], dataset.x_train[val], dataset.y_train[val])


def input_size(config: TrainConfig) -> int:
    return config.image_size or get_spec(config.model).input_size


def train(config: TrainConfig, run_dir: Path | str | None = None, dataset: Dataset | None = None,
          verbose: int | str = "auto", callbacks: list | None = None) -> Path:
    """Train a new run; returns its folder.

    Bad arguments and unreadable data fail before the run folder exists, so
    a typo does not leave a dead run on the leaderboard.
    """
    get_spec(config.model)
    created = run_dir is None or not Path(run_dir).exists()
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
        return _guarded(config, run_dir, dataset, verbose, callbacks, resuming=False)


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
    with runs.RunWriter(run_dir):
        config = runs.read_config(run_dir)
        status = runs.read_status(run_dir) or {}
        if status.get("state") == "completed":
            raise RunFolderError(f"{run_dir.name} has already completed; nothing to resume")
        checkpoint.load_state(run_dir)  # a damaged checkpoint fails here, before the data loads
        dataset = dataset if dataset is not None else load_dataset(config.data)
        return _guarded(config, run_dir, dataset, verbose, callbacks, resuming=True)


def _total_epochs(config: TrainConfig) -> int:
    return config.n_epochs + (config.fine_tune_epochs if get_spec(config.model).transfer else 0)


def _guarded(config, run_dir, dataset, verbose, callbacks, resuming) -> Path:
    """Run training; whatever stops it is recorded in status.json first."""
    try:
        _train(config, run_dir, dataset, verbose, callbacks or [], resuming)
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
           resuming: bool) -> None:
    backend.configure()
    import keras

    keras.utils.set_random_seed(config.random_state)
    spec = get_spec(config.model)
    runs.atomic_write_json(run_dir / runs.DATA_FILE, {**dataset.summary(), "load_seconds": dataset.load_seconds})
    split = make_split(dataset, config)
    size = input_size(config)
    n_classes = len(dataset.class_names)

    state = checkpoint.load_state(run_dir) if resuming else None
    history: list[dict] = list(state["history"]) if state else []
    completed = len(history)
    runs.write_history(run_dir, history)  # drops rows written after the checkpoint

    steps_per_epoch = math.ceil(len(split.y_train) / config.batch_size)
    if state:
        model = checkpoint.load_model(run_dir, state)
    else:
        model = build_model(config.model, size, n_classes, config.precision, **config.model_options)
        _initialise(model, config, split)
        if not spec.transfer:  # transfer models compile per stage
            compile_model(model, config, config.learning_rate, steps_per_epoch * config.n_epochs)

    # Seeded by the run, not the resume point: a resumed run keeps every image's flip pattern.
    alternating_flip = (AlternatingFlip(len(split.y_train), config.random_state, first_epoch=completed)
                        if "altflip" in config.augmentations else None)
    train_data = make_dataset(split.x_train, split.y_train, n_classes, config.batch_size, size,
                              build_augmenter(config, dataset.image_size), shuffle=True,
                              seed=config.random_state + completed, alternating_flip=alternating_flip)
    val_data = (make_dataset(split.x_val, split.y_val, n_classes, config.batch_size, size)
                if len(split.y_val) else None)
    common = dict(train_data=train_data, val_data=val_data, verbose=verbose, history=history,
                  extra_callbacks=extra_callbacks, steps_per_epoch=steps_per_epoch,
                  total_epochs=_total_epochs(config), run_dir=run_dir, split=split)
    if state and state.get("training_done"):
        pass  # killed while finishing: the checkpoint holds the final weights, train no further
    elif spec.transfer:
        _train_transfer(model, config, dataset, size, **common)
    elif completed < config.n_epochs:
        _fit_stage(model, config, "train", 0, config.n_epochs, completed, **common)
    if not (state and state.get("training_done")):
        # The final weights (early stopping's best restored), so a kill from here
        # on resumes straight to finishing instead of training another epoch.
        checkpoint.save(run_dir, model, history, training_done=True)
    finish_run(model, config, run_dir, dataset, history, n_train=len(split.y_train))


def _train_transfer(model, config: TrainConfig, dataset: Dataset, size: int, **common) -> None:
    """Stage 1: head on cached frozen features. Stage 2: fine-tune the top of the backbone."""
    from ..models import transfer
    from .features import cached_features, train_head

    history, run_dir, split = common["history"], common["run_dir"], common["split"]
    if not any(row.get("stage") == "head" for row in history):
        seconds = train_head(model, config, run_dir, split, len(dataset.class_names), size, history)
        test_features = cached_features(model, run_dir, "test", dataset.x_test, size)
        weights, bias = model.get_layer("predictions").get_weights()
        head_accuracy = float(np.mean((test_features @ weights + bias).argmax(axis=1) == dataset.y_test))
        runs.atomic_write_json(run_dir / runs.CHECKPOINT_DIR / "head.json",
                               {"test_accuracy_head": head_accuracy, "stage_seconds": seconds})
        checkpoint.save(run_dir, model, history)
        runs.write_history(run_dir, history)
    if config.fine_tune_epochs:
        if not any(row.get("stage") == "fine_tune" for row in history):
            transfer.unfreeze_top(model, config.fine_tune_layers)
            compile_model(model, config, config.fine_tune_learning_rate,
                          common["steps_per_epoch"] * config.fine_tune_epochs, schedule="cosine")
        done = len(history) - config.n_epochs
        _fit_stage(model, config, "fine_tune", config.n_epochs, config.fine_tune_epochs, done, **common)


def _initialise(model, config: TrainConfig, split: Split) -> None:
    if any(layer.name == "whiten" for layer in model.layers):
        from ..models.homebrew import init_whitening

        init_whitening(model, split.x_train)


def _fit_stage(model, config: TrainConfig, stage: str, offset: int, n_epochs: int, completed: int, *,
               train_data, val_data, verbose, history, steps_per_epoch, total_epochs, run_dir, split,
               extra_callbacks) -> None:
    import keras

    recorder = RunRecorder(run_dir, n_epochs, steps_per_epoch, history, stage=stage,
                           epoch_offset=offset, total_epochs=total_epochs)
    callbacks = [recorder, keras.callbacks.TensorBoard(log_dir=str(run_dir / runs.TENSORBOARD_DIR),
                                                       write_graph=False, profile_batch=0)]
    monitor = "val_loss" if val_data is not None else "loss"
    # This stage's epochs run before a resume, numbered as this fit() counts them.
    past = [{**row, "epoch": int(row["epoch"]) - offset} for row in history if row.get("stage", stage) == stage]
    if config.schedule == "plateau" and stage == "train":
        callbacks.append(ResumablePlateau(past, monitor=monitor, factor=config.plateau_factor,
                                          patience=config.plateau_patience, min_lr=1e-6))
    if config.early_stopping_patience and val_data is not None:
        callbacks.append(ResumableEarlyStopping(run_dir, past, monitor="val_loss",
                                                patience=config.early_stopping_patience))
    callbacks.extend(extra_callbacks)
    class_weight = _class_weights(split.y_train) if config.class_weights else None
    model.fit(train_data, validation_data=val_data, epochs=n_epochs, initial_epoch=completed,
              callbacks=callbacks, class_weight=class_weight, verbose=verbose)


def _class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels)
    weights = len(labels) / (len(counts) * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def finish_run(model, config: TrainConfig, run_dir: Path, dataset: Dataset, history: list[dict],
               n_train: int) -> dict:
    """Save the inference model, measure it on the test split, write metrics."""
    import keras

    from ..evaluation import measure_on_test
    from .checkpoint import save_model_atomically

    runs.write_status(run_dir, "running", stage="evaluate", epoch=len(history), n_epochs=len(history),
                      progress=1.0, eta_seconds=None)
    # An uncompiled clone of the graph: the saved file holds no optimizer and no
    # custom schedule, so it loads with safe_mode and plain Keras layers.
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    save_model_atomically(inference, run_dir / runs.MODEL_FILE)
    size = input_size(config)
    started = time.perf_counter()
    heartbeat = [PredictHeartbeat(run_dir, "evaluate")]
    metrics, probs, probs_tta = measure_on_test(model, dataset.x_test, dataset.y_test, dataset.class_names, size,
                                                config.tta, callbacks=heartbeat)
    eval_seconds = time.perf_counter() - started
    train_seconds = float(sum(row.get("seconds") or 0 for row in history))
    metrics.update(measurement_context(model, config, dataset, history, n_train, train_seconds, eval_seconds))
    head_file = run_dir / runs.CHECKPOINT_DIR / "head.json"
    if head_file.is_file():  # transfer runs: the frozen-feature head's own accuracy and stage times
        metrics.update(runs.read_json(head_file))
    runs.write_predictions(run_dir, dataset.y_test, probs, probs_tta)
    runs.atomic_write_json(run_dir / runs.METRICS_FILE, metrics)
    runs.write_status(run_dir, "completed", epoch=len(history), n_epochs=len(history), progress=1.0,
                      eta_seconds=0, test_accuracy=metrics["test_accuracy"])
    return metrics


def measurement_context(model, config: TrainConfig, dataset: Dataset, history, n_train: int,
                        train_seconds: float, eval_seconds: float) -> dict:
    images_seen = n_train * len(history)
    return {
        "model": config.model,
        "transfer": bool(get_spec(config.model).transfer),
        "data": dataset.description,
        "input_size": input_size(config),
        "n_params": int(model.count_params()),
        "n_train": int(n_train),
        "epochs_run": len(history),
        "train_seconds": round(train_seconds, 2),
        "train_images_per_second": round(images_seen / train_seconds, 1) if train_seconds else None,
        "eval_seconds": round(eval_seconds, 2),
        "peak_memory_mb": backend.peak_memory_mb(),
        "machine": backend.machine_description(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
