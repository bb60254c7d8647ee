"""Reading and writing the analysis files: bounded, validated, stamped with the model's fingerprint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs, schema
from ..errors import RunFolderError
from ..safeio import parse_json, read_regular_file
from ..safeio import read_npz as safe_read_npz
from .calibration import TEMPERATURE_BOUNDS

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_NPZ_BYTES = 64 * 1024 * 1024
STAMPS_FILE = "stamps.json"  # {analysis file name: SHA-256 of the model file it was computed from}


def write_json(path: Path, data: Any, fingerprint: str) -> None:
    runs.ensure_subfolder(path.parent)
    runs.atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    _stamp(path, fingerprint)


def write_npz(path: Path, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    runs.ensure_subfolder(path.parent)
    runs.atomic_write_npz(path, arrays)
    _stamp(path, fingerprint)


def _stamps(folder: Path) -> dict[str, str]:
    try:
        stamps = read_json(folder / STAMPS_FILE)
    except RunFolderError:
        return {}
    return {k: v for k, v in stamps.items() if isinstance(v, str)} if isinstance(stamps, dict) else {}


def _stamp(path: Path, fingerprint: str) -> None:
    """Written after the file itself: a crash in between leaves it unstamped, so recomputed."""
    stamps = _stamps(path.parent)
    stamps[path.name] = fingerprint
    runs.atomic_write_text(path.parent / STAMPS_FILE, json.dumps(stamps, indent=1) + "\n")


def read_json(path: Path) -> Any:
    """An analysis JSON file (None if absent); RunFolderError if it is not bounded JSON."""
    if runs.absent(path):
        return None
    data = read_regular_file(path, MAX_JSON_BYTES, RunFolderError, what="JSON file")
    return parse_json(data, _where(path), RunFolderError)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of an analysis .npz (None if absent), bounded (safeio.read_npz)."""
    if runs.absent(path):
        return None
    return safe_read_npz(path, MAX_NPZ_BYTES, keys, RunFolderError, _where(path))


def _where(path: Path) -> str:
    """'calibration.json in RUN': an analysis file named with its run (RUN/analysis/NAME)."""
    return f"{path.name} in {path.parent.parent.name}"


def stamped_fingerprint(path: Path) -> str | None:
    """The model fingerprint an analysis file was computed for (None if absent or unstamped)."""
    return _stamps(path.parent).get(path.name) if path.is_file() else None


# --- what each analysis file must hold: checked on read, against the run it belongs to ------------

# The arrays each analysis .npz holds.
ARRAYS = {"embedding": ("coords", "indices", "labels", "predictions"),
          "neighbours.npz": ("mean", "components", "features", "labels")}
_BIN = schema.record({"lower": schema.fraction, "upper": schema.fraction, "count": schema.count,
                      "confidence": schema.optional(schema.fraction), "accuracy": schema.optional(schema.fraction)})
_CALIBRATION: dict[str, schema.Check] = {
    "temperature": lambda v: schema.number(v) and TEMPERATURE_BOUNDS[0] <= v <= TEMPERATURE_BOUNDS[1],
    "fitted_on": schema.text, "n_fit": schema.count,
    "n_test": schema.count, "ece_before": schema.fraction, "ece_after": schema.fraction,
    "nll_before": schema.non_negative, "nll_after": schema.non_negative, "brier_before": schema.non_negative,
    "brier_after": schema.non_negative,
    "bins": schema.record({"before": schema.list_of(_BIN), "after": schema.list_of(_BIN)})}
_ROBUSTNESS: dict[str, schema.Check] = {
    "subset_size": schema.count, "subset_seed": schema.count, "clean_accuracy": schema.fraction,
    "severities": lambda v: schema.counts(v) and len(v) > 0, "mean_corruption_accuracy": schema.fraction,
    "corruptions": lambda v: isinstance(v, dict) and len(v) > 0 and all(
        schema.list_of(schema.fraction)(curve) for curve in v.values()),
    "fgsm": lambda v: isinstance(v, list) and len(v) > 0 and schema.list_of(
        schema.record({"epsilon": schema.non_negative, "accuracy": schema.fraction}))(v)}
_LABEL_ISSUE = schema.record({"index": schema.count, "given": schema.count, "suggested": schema.count,
                              "quality": schema.fraction, "flagged": schema.flag})


def read_analysis(run_dir: Path | str, name: str) -> Any:
    """A run's analysis file (None if absent), checked field by field and against the run's own
    data.json (its classes and test images): RunFolderError, one line, for anything a page could
    not show (a missing field, a class or image index out of range, arrays of the wrong shape)."""
    from . import analysis_path

    path = analysis_path(run_dir, name)
    if runs.absent(path):
        return None
    where = _where(path)
    content = read_npz(path, ARRAYS[name]) if name in ARRAYS else read_json(path)
    info = runs.read_data_info(run_dir) or {}
    n_classes, n_test = len(info.get("class_names") or ()), info.get("n_test")
    if not n_classes or n_test is None:
        raise RunFolderError(f"{where}: the run's data.json does not say its classes and test images")
    _CHECKS[name](content, n_classes, n_test, where)
    return content


def _check_calibration(report, n_classes: int, n_test: int, where: str) -> None:
    schema.validate(report, _CALIBRATION, tuple(_CALIBRATION), where)


def _check_robustness(report, n_classes: int, n_test: int, where: str) -> None:
    schema.validate(report, _ROBUSTNESS, tuple(_ROBUSTNESS), where)
    if any(len(curve) != len(report["severities"]) for curve in report["corruptions"].values()):
        raise RunFolderError(f"{where}: a corruption's curve does not have one accuracy per severity")


def _check_labels(issues, n_classes: int, n_test: int, where: str) -> None:
    if not schema.list_of(_LABEL_ISSUE)(issues):
        raise RunFolderError(f"{where} must be a list of label issues (index, given, suggested, quality, flagged)")
    indices = [issue["index"] for issue in issues]
    if any(i >= n_test for i in indices) or len(set(indices)) != len(indices):
        raise RunFolderError(f"{where}: image indices must be distinct test images (below {n_test:,})")
    if any(issue[k] >= n_classes for issue in issues for k in ("given", "suggested")):
        raise RunFolderError(f"{where}: a class index is beyond the run's {n_classes} classes")


def _check_embedding(arrays: dict[str, np.ndarray], n_classes: int, n_test: int, where: str) -> None:
    coords = arrays["coords"]
    n = len(coords)
    _require(coords.ndim == 2 and coords.shape[1] == 2 and _finite(coords), where, "coords must be finite (n, 2)")
    for key, bound in (("indices", n_test), ("labels", n_classes), ("predictions", n_classes)):
        _require(_indices(arrays[key], n, bound), where, f"{key} must be {n:,} whole numbers below {bound:,}")


def _check_neighbours(arrays: dict[str, np.ndarray], n_classes: int, n_test: int, where: str) -> None:
    mean, components, features, labels = (arrays[k] for k in ARRAYS["neighbours.npz"])
    _require(mean.ndim == 1 and _finite(mean), where, "mean must be a finite vector")
    _require(components.ndim == 2 and components.shape[1] == len(mean) and _finite(components), where,
             "components must be finite (k, features)")
    _require(features.ndim == 2 and features.shape[1] == len(components) and _finite(features), where,
             "features must be finite (images, k)")
    _require(_indices(labels, len(features), n_classes), where, f"labels must be one class per image below {n_classes}")


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and bool(np.isfinite(array).all())  # analyze writes these as floats


def _indices(array: np.ndarray, n: int, bound: int) -> bool:
    return array.shape == (n,) and array.dtype.kind in ("i", "u") and bool(np.all((array >= 0) & (array < bound)))


def _require(sound: bool, where: str, what: str) -> None:
    if not sound:
        raise RunFolderError(f"{where}: {what}")


_CHECKS = {"calibration": _check_calibration, "robustness": _check_robustness, "labels": _check_labels,
           "embedding": _check_embedding, "neighbours.npz": _check_neighbours}
