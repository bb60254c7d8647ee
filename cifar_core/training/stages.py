"""The stages a run trains in: one fit() per stage, with the callbacks that make it resumable.

Homebrew models train in one stage ("train"). Transfer models train a head on
frozen features ("head"), then fine-tune the top of the backbone ("fine_tune").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import runs
from ..config import TrainConfig, fine_tune_plan
from ..data import Dataset
from . import checkpoint
from .callbacks import EpochPredictions, ResumableEarlyStopping, ResumablePlateau, RunRecorder
from .optimizers import compile_model


@dataclass
class FitContext:
    """What every stage of one run shares."""
    run_dir: Path
    split: object  # loop.Split: the training and validation arrays
    history: list[dict]  # one row per finished epoch, all stages; appended to as epochs end
    train_data: object  # tf.data pipelines
    val_data: object | None
    steps_per_epoch: int
    total_epochs: int  # all stages together, for progress and ETA
    verbose: int | str = "auto"
    extra_callbacks: list = field(default_factory=list)
    # (train, validation) pipelines at another input size: progressive resizing's low-resolution epochs
    pipelines_at: Callable[[int], tuple[object, object | None]] | None = None
    lead_seconds: float = 0.0  # counted in the run's first epoch (a teacher's labelling)

    def at_size(self, size: int) -> FitContext:
        train_data, val_data = self.pipelines_at(size)
        return replace(self, train_data=train_data, val_data=val_data)


def fit_stage(model, config: TrainConfig, context: FitContext, stage: str, offset: int, n_epochs: int,
              completed: int) -> None:
    """Epochs `completed`..`n_epochs` of one stage; `offset` numbers them after earlier stages."""
    import keras

    run_dir, history, val_data = context.run_dir, context.history, context.val_data
    recorder = RunRecorder(run_dir, n_epochs, context.steps_per_epoch, history, stage=stage,
                           epoch_offset=offset, total_epochs=context.total_epochs,
                           lead_seconds=context.lead_seconds)
    callbacks = [recorder, keras.callbacks.TensorBoard(log_dir=str(run_dir / runs.TENSORBOARD_DIR),
                                                       write_graph=False, profile_batch=0)]
    monitor = "val_loss" if val_data is not None else "loss"
    if val_data is not None:
        callbacks.append(EpochPredictions(run_dir, val_data, context.split.y_val, epoch_offset=offset))
    # This stage's epochs run before a resume, numbered as this fit() counts them.
    past = [{**row, "epoch": int(row["epoch"]) - offset} for row in history if row.get("stage", stage) == stage]
    if config.schedule == "plateau" and stage == "train":
        callbacks.append(ResumablePlateau(past, monitor=monitor, factor=config.plateau_factor,
                                          patience=config.plateau_patience, min_lr=1e-6))
    if config.early_stopping_patience and val_data is not None:
        callbacks.append(ResumableEarlyStopping(run_dir, past, monitor="val_loss",
                                                patience=config.early_stopping_patience))
    callbacks.extend(context.extra_callbacks)
    class_weight = class_weights(context.split.y_train) if config.class_weights else None
    # One iterator for the whole stage: the data repeated, each epoch `steps_per_epoch` batches of
    # it (an exact pass). Keras otherwise frees the last epoch's tf.data iterator as the next
    # begins, which stalled some epochs' first step by up to ~55 s (docs/experiments.md).
    model.fit(context.train_data.repeat(), steps_per_epoch=context.steps_per_epoch, validation_data=val_data,
              epochs=n_epochs, initial_epoch=completed, callbacks=callbacks, class_weight=class_weight,
              verbose=context.verbose)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse class frequency, 1 on average: a rare class weighs more."""
    counts = np.bincount(labels)
    weights = len(labels) / (len(counts) * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def train_transfer(model, config: TrainConfig, dataset: Dataset, size: int, context: FitContext) -> None:
    """Stage 1: head on cached frozen features. Stage 2: fine-tune the top of the backbone, its first
    `low_res_epochs` at `low_res_size` px where the config says so (progressive resizing)."""
    from ..models import transfer
    from .features import cached_features, train_head

    history, run_dir, split = context.history, context.run_dir, context.split
    if config.low_res_size:
        transfer.accept_any_size(model)
        size = config.low_res_size  # the head learns on the features its first fine-tune epochs see
    if not any(row.get("stage") == "head" for row in history):
        seconds = train_head(model, config, run_dir, split, len(dataset.class_names), size, history)
        test_features = cached_features(model, run_dir, "test", dataset.x_test, size)
        weights, bias = model.get_layer("predictions").get_weights()
        head_accuracy = float(np.mean((test_features @ weights + bias).argmax(axis=1) == dataset.y_test))
        runs.atomic_write_json(runs.checkpoint_file(run_dir, runs.HEAD_STATS_FILE),
                               {"test_accuracy_head": head_accuracy, "stage_seconds": seconds})
        checkpoint.save(run_dir, model, history)
        runs.write_history(run_dir, history)
    if config.fine_tune_epochs:
        if not any(row.get("stage") == "fine_tune" for row in history):
            transfer.unfreeze_top(model, config.fine_tune_layers)
            # One schedule over every fine-tune epoch, low resolution or not.
            compile_model(model, config, config.fine_tune_learning_rate,
                          context.steps_per_epoch * config.fine_tune_epochs, schedule="cosine")
        done, traced = len(history) - config.n_epochs, False
        for stretch_size, end in fine_tune_plan(config):
            if done >= end:
                continue
            if traced:  # a step traced for two image sizes would be generalised to unknown shapes
                model.make_train_function(force=True)
                model.make_test_function(force=True)
            stretch = context if stretch_size == config.input_size else context.at_size(stretch_size)
            fit_stage(model, config, stretch, "fine_tune", config.n_epochs, end, done)
            done, traced = end, True
