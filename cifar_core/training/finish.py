"""Finishing a run: the inference model saved, measured on the test split, metrics written."""
from __future__ import annotations

import time
from pathlib import Path

from .. import backend, runs
from ..config import TrainConfig
from ..data import Dataset
from ..models import get_spec
from . import distill
from .callbacks import PredictHeartbeat


def input_size(config: TrainConfig) -> int:
    """The model's input size (the config resolves None to the model's default when it is made)."""
    return config.input_size or get_spec(config.model).input_size


def finish_run(model, config: TrainConfig, run_dir: Path, dataset: Dataset, history: list[dict],
               n_train: int) -> dict:
    """Save the inference model, measure it on the test split, write metrics."""
    import keras

    from ..evaluation import measure_on_test
    from ..models.layers import to_stock_layers
    from .checkpoint import save_model_atomically

    runs.write_status(run_dir, "running", stage="evaluate", epoch=len(history), n_epochs=len(history),
                      progress=1.0, eta_seconds=None)
    # An uncompiled clone of the graph: the saved file holds no optimizer, no custom
    # schedule and no training-speed layer, so it loads with safe_mode and plain Keras layers.
    inference = to_stock_layers(keras.Model(model.inputs, model.outputs, name=model.name))
    save_model_atomically(inference, run_dir / runs.MODEL_FILE)
    size = input_size(config)
    started = time.perf_counter()
    heartbeat = [PredictHeartbeat(run_dir, "evaluate")]
    # Measured on the saved form, so the figures describe the file a user loads.
    metrics, probs, probs_tta = measure_on_test(inference, dataset.x_test, dataset.y_test, dataset.class_names, size,
                                                config.tta, callbacks=heartbeat)
    eval_seconds = time.perf_counter() - started
    train_seconds = float(sum(row.get("seconds") or 0 for row in history))
    metrics.update(measurement_context(model, config, dataset, history, n_train, train_seconds, eval_seconds))
    metrics.update(runs.read_head_stats(run_dir) or {})  # transfer runs: the head's own accuracy, stage times
    metrics.update(distill.read_stats(run_dir) or {})  # distilled runs: which teacher, and its minutes
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
