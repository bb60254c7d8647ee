"""Using a finished run: load its model safely, classify images, re-measure it."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runs
from .config import TrainConfig
from .errors import RunFolderError
from .imaging import decode_image, resize_image


@dataclass
class LoadedRun:
    run_dir: Path
    model: object
    input_size: int
    data_image_size: int  # the resolution the model was trained from (before any upscaling)
    class_names: tuple[str, ...]
    config: TrainConfig
    model_stamp: int = -1  # the model file's mtime (ns) when it was loaded: what a cache of its answers keys on


def load_run_model(run_dir: Path | str) -> LoadedRun:
    from .models.loading import load_model_file

    run_dir = Path(run_dir)
    if not (run_dir / runs.MODEL_FILE).is_file():
        raise RunFolderError(f"{run_dir.name}: no trained model ({runs.MODEL_FILE}) in this run folder")
    data = runs.read_data_info(run_dir)
    if data is None:
        raise RunFolderError(f"{run_dir.name}: no {runs.DATA_FILE} (class names) in this run folder")
    class_names = tuple(data["class_names"])
    config = runs.read_config(run_dir)
    stamp = model_stamp(run_dir)  # before the load: a file replaced meanwhile reads as changed next time
    model, size = load_model_file(run_dir / runs.MODEL_FILE, expected_classes=len(class_names))
    return LoadedRun(run_dir, model, size, int(data.get("image_size") or size), class_names, config, stamp)


def model_stamp(run_dir: Path | str) -> int:
    """The version of a run's model file (its mtime in ns), -1 where there is none."""
    try:
        return (Path(run_dir) / runs.MODEL_FILE).stat().st_mtime_ns
    except OSError:
        return -1


# One loaded copy of each run's model per process (the dashboard's pages and its warm-up
# thread share them); a changed model file is loaded again.
MAX_SHARED_RUNS = 8
_shared: OrderedDict[str, LoadedRun] = OrderedDict()
_shared_lock = threading.Lock()
_loading_locks: dict[str, threading.Lock] = {}


def shared_run(run_dir: Path | str) -> LoadedRun:
    """The run's model, loaded once per process and kept while its file is unchanged."""
    key = str(Path(run_dir).resolve())
    with _shared_lock:
        loading = _loading_locks.setdefault(key, threading.Lock())
    with loading:  # two callers of one run wait for one load; other runs load meanwhile
        with _shared_lock:
            cached = _shared.get(key)
            if cached is not None:
                _shared.move_to_end(key)  # the least recently used goes first, not the first loaded
        if cached is not None and cached.model_stamp == model_stamp(key):
            return cached
        run = load_run_model(key)
        with _shared_lock:
            _shared[key] = run
            _shared.move_to_end(key)
            while len(_shared) > MAX_SHARED_RUNS:
                _shared.popitem(last=False)
        return run


def model_view(run: LoadedRun, image: np.ndarray) -> np.ndarray:
    """The photo as the model sees it: reduced to the training resolution."""
    return resize_image(image, run.data_image_size)


def classify_arrays(run: LoadedRun, images: list[np.ndarray], tta: bool = False) -> np.ndarray:
    from .evaluation import predict_proba

    batch = np.stack([model_view(run, image) for image in images])
    return predict_proba(run.model, batch, tta=tta, input_size=run.input_size)


def classify_bytes(run: LoadedRun, data: bytes, name: str = "image", k: int = 3) -> list[tuple[str, float]]:
    from .evaluation import top_k

    probs = classify_arrays(run, [decode_image(data, name)])
    return top_k(probs, run.class_names, k)[0]


def evaluate_run(run_dir: Path | str, source: str | None = None, input_size: int | None = None) -> dict:
    """Re-measure a saved model on the test split; rewrites metrics and predictions. At an
    `input_size` other than the model's it only measures (measure_at_input_size)."""
    from .evaluation import measure_on_test

    run = load_run_model(run_dir)
    if input_size not in (None, run.input_size):
        check_other_input_size(run, input_size)  # before the data is loaded
        return measure_at_input_size(run, _test_data(run, source), input_size)
    # It rewrites the run's figures: one writer per run folder, refused before minutes of measuring
    # while a resume, an analysis or an export holds it.
    with runs.RunWriter(run.run_dir):
        dataset = _test_data(run, source)
        fresh, probs, probs_tta = measure_on_test(run.model, dataset.x_test, dataset.y_test, dataset.class_names,
                                                  run.input_size, run.config.tta)
        metrics = runs.read_metrics(run.run_dir) or {}
        metrics.update(fresh, data=dataset.description)
        runs.write_predictions(run.run_dir, dataset.y_test, probs, probs_tta)
        runs.atomic_write_json(run.run_dir / runs.METRICS_FILE, metrics)
    return metrics


def _test_data(run: LoadedRun, source: str | None):
    """The dataset a run is measured on (the run's own unless `source` names another), with its classes."""
    from .data import load_dataset

    dataset = load_dataset(source or run.config.data, image_size=run.data_image_size)
    if tuple(dataset.class_names) != run.class_names:
        raise RunFolderError(f"the data's classes {list(dataset.class_names)} differ from the model's "
                             f"{list(run.class_names)}")
    return dataset


def check_other_input_size(run: LoadedRun, input_size: int) -> None:
    """Only a transfer model, convolutional up to its global pooling, takes another size, and only one
    a config could ask for."""
    from .config import RANGES
    from .errors import ConfigError
    from .models.registry import get_spec

    if not get_spec(run.config.model).transfer:
        raise ConfigError(f"{run.run_dir.name}: a {run.config.model} model takes {run.input_size} px images only; "
                          "another input size is for transfer models")
    low, high, _ = RANGES["input_size"]
    if not low <= input_size <= high:
        raise ConfigError(f"input size {input_size} px is outside {low}-{high}")


def measure_at_input_size(run: LoadedRun, dataset, input_size: int) -> dict:
    """The test split measured with its images resized to `input_size` instead of the size the model was
    trained at (the FixRes question: does a larger test size help?); the run's files are left as they are."""
    from .evaluation import measure_on_test
    from .models.transfer import accept_any_size

    check_other_input_size(run, input_size)
    accept_any_size(run.model)
    fresh, _, _ = measure_on_test(run.model, dataset.x_test, dataset.y_test, dataset.class_names, input_size,
                                  run.config.tta)
    return {**fresh, "data": dataset.description, "input_size": input_size, "trained_input_size": run.input_size}
