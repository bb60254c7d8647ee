"""Run folders: the one place that knows their layout.

artifacts/runs/<run_id>/ holds config.json, data.json, status.json,
history.csv, metrics.json, predictions.npz, model.keras (plus checkpoint/
while training and tb/ for TensorBoard). Every file is written atomically
(temp file in the same folder, fsync, rename) so a reader polling the folder
never sees half a file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunFolderError

DEFAULT_RUNS_ROOT = Path(__file__).resolve().parent.parent / "artifacts" / "runs"

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
TENSORBOARD_DIR = "tb"
LOG_FILE = "train.log"

HISTORY_COLUMNS = ("epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")

RUN_STATES = ("queued", "running", "completed", "failed", "interrupted", "cancelled")
# No heartbeat for this long: whatever was writing the run is hung or gone.
STALE_SECONDS = 300.0


def runs_root() -> Path:
    return Path(os.environ.get("CIFAR_RUNS_DIR", DEFAULT_RUNS_ROOT))


def new_run_id(model: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    return f"{stamp}-{safe_model}-{os.getpid() % 10000:04d}"


# --- atomic writes ---------------------------------------------------------------

_UMASK = os.umask(0)
os.umask(_UMASK)

def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run folder is meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full, killed) leaves the previous file intact.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    # numpy scalars and arrays sneak into metrics; JSON wants plain Python.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"missing {path.name} in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"corrupt {path.name} in {path.parent}: {exc}") from None


# --- history ---------------------------------------------------------------------

def write_history(run_dir: Path | str, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in HISTORY_COLUMNS})
    atomic_write_text(Path(run_dir) / HISTORY_FILE, buffer.getvalue())


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_history(run_dir: Path | str) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key in HISTORY_COLUMNS:
                value = raw.get(key, "")
                row[key] = _parse_history_value(key, value)
            rows.append(row)
    return rows


def _parse_history_value(key: str, value: str | None):
    if value in ("", None):
        return None
    if key == "stage":
        return value
    return int(value) if key == "epoch" else float(value)


# --- predictions -----------------------------------------------------------------

def write_predictions(run_dir: Path | str, y_true, probs, probs_tta=None) -> None:
    """Test-set labels and probabilities (float16: 10k x 10 in ~200 kB) for error analysis."""
    import numpy as np

    arrays = {"y_true": np.asarray(y_true, np.int16), "probs": np.asarray(probs, np.float16)}
    if probs_tta is not None:
        arrays["probs_tta"] = np.asarray(probs_tta, np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(Path(run_dir) / PREDICTIONS_FILE, buffer.getvalue())


def read_predictions(run_dir: Path | str) -> dict:
    import numpy as np

    path = Path(run_dir) / PREDICTIONS_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise RunFolderError(f"no {PREDICTIONS_FILE} in {Path(run_dir).name}") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"corrupt {PREDICTIONS_FILE} in {Path(run_dir).name}: {exc}") from None


# --- status ----------------------------------------------------------------------

def write_status(run_dir: Path | str, state: str, **fields: Any) -> dict[str, Any]:
    if state not in RUN_STATES:
        raise ValueError(f"state must be one of {RUN_STATES}; received {state!r}")
    status = {"state": state, "heartbeat": time.time(), "pid": os.getpid(), **fields}
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def read_status(run_dir: Path | str) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    return read_json(path)


def effective_state(status: dict, now: float | None = None) -> str:
    """The status's state, except that a 'running' run whose heartbeat went
    stale is reported as interrupted (its process died without saying so)."""
    state = status.get("state", "unknown")
    heartbeat = status.get("heartbeat")
    if state in ("running", "queued") and isinstance(heartbeat, (int, float)) \
            and (now or time.time()) - heartbeat > STALE_SECONDS:
        return "interrupted"
    return state


# --- listing ---------------------------------------------------------------------

@dataclass(frozen=True)
class RunSummary:
    run_id: str
    path: Path
    config: dict[str, Any]
    status: dict[str, Any]
    metrics: dict[str, Any] | None
    data: dict[str, Any] | None

    @property
    def has_model(self) -> bool:
        return (self.path / MODEL_FILE).is_file()


def load_run(run_dir: Path | str) -> RunSummary:
    """Read a run's JSON files; raises RunFolderError when one is corrupt."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    config = read_json(run_dir / CONFIG_FILE)
    status = read_status(run_dir) or {"state": "unknown"}
    metrics = read_json(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else None
    data = read_json(run_dir / DATA_FILE) if (run_dir / DATA_FILE).exists() else None
    return RunSummary(run_dir.name, run_dir, config, status, metrics, data)


def list_runs(root: Path | str | None = None) -> tuple[list[RunSummary], list[str]]:
    """All readable runs under root, newest first, and a warning per skipped folder."""
    root = Path(root) if root is not None else runs_root()
    runs, problems = [], []
    if not root.is_dir():
        return runs, problems
    for run_dir in sorted(root.iterdir(), reverse=True):
        if not run_dir.is_dir() or run_dir.name.startswith("."):
            continue
        try:
            runs.append(load_run(run_dir))
        except RunFolderError as exc:
            problems.append(f"skipped {run_dir.name}: {exc}")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return runs, problems
