"""Run folders: the one place that knows their layout.

artifacts/runs/<run_id>/ holds config.json, data.json, status.json,
history.csv, metrics.json, predictions.npz, model.keras (plus checkpoint/
while training and tb/ for TensorBoard). Every file is written atomically
(temp file in the same folder, fsync, rename) so a reader polling the folder
never sees half a file.

One writer per folder: a writer holds an exclusive lock on the folder's lock
file for its whole life (the OS drops it when the process dies, however it
dies), so a second writer is refused and "is anyone writing this run?" is
answered by the lock, not by the age of a heartbeat.

Every file kind has one validating reader (bounded size, bounded nesting, a
schema for its fields): a run folder with a bad file raises RunFolderError,
and listings skip it with a warning instead of taking a page down.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import secrets
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .config import MAX_INPUT_SIZE, TrainConfig
from .errors import CifarError, RunFolderError, one_line
from .safeio import file_where, open_for_writing, parse_json, read_npz, read_regular_file, regular_file_fd
from .schema import (
    Check,
    all_are,
    count,
    counts,
    finite,
    flag,
    fraction,
    json_object,
    number,
    preview,
    text,
    texts,
    validate,
)

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
LIVE_FILE = "live.csv"  # a point every few seconds while training: what the live curves draw
EPOCH_PREDICTIONS_FILE = "epoch-predictions.npz"  # validation predictions after each epoch
# Inside checkpoint/ (written while training, never shipped): the resume state, the transfer
# head's own figures, early stopping's best weights and the frozen-feature caches.
CHECKPOINT_STATE_FILE = "state.json"
HEAD_STATS_FILE = "head.json"
BEST_WEIGHTS_FILE = "best-weights.npz"
LOCK_FILE = ".writer.lock"
# What a job launcher may have put in a folder before its writer starts.
LAUNCH_FILES = frozenset({LOG_FILE, LOCK_FILE})
RUN_ID_TRIES = 20  # new ids drawn before create_run_dir gives up (each has a random part)
# Every run file is small (metrics with a 100-class confusion matrix: ~100 KB).
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_HISTORY_BYTES = 4 * 1024 * 1024
HISTORY_STAGES = ("train", "head", "fine_tune")
# What a shipped run holds (artifacts/runs/): never checkpoints, caches, TensorBoard logs or locks.
SHIPPED_FILES = (CONFIG_FILE, DATA_FILE, STATUS_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, MODEL_FILE)
MAX_SHIPPED_FILE_BYTES = 1 << 30  # the largest shipped model is 14 MB
# What a superseded run leaves behind (docs/experiments/): its record, not its weights.
SHIPPED_IF_PRESENT = (LIVE_FILE, EPOCH_PREDICTIONS_FILE)  # runs made before they existed ship without
RECORD_FILES = (CONFIG_FILE, METRICS_FILE, HISTORY_FILE)

LIVE_COLUMNS = ("train_seconds", "epoch", "loss", "accuracy")
MAX_LIVE_BYTES = 4 * 1024 * 1024  # a point per 2 s is ~40 bytes: 50 hours of training
MAX_EPOCH_PREDICTIONS_BYTES = 64 * 1024 * 1024
MAX_PREDICTIONS_BYTES = 64 * 1024 * 1024  # CIFAR-10's test split takes ~0.4 MB
HISTORY_COLUMNS = ("epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")

_UMASK = os.umask(0)  # read once: files made here honour it like any other file
os.umask(_UMASK)

RUN_STATES = ("queued", "running", "completed", "failed", "interrupted", "cancelled")
# No heartbeat for this long: whatever was writing the run is hung or gone.
STALE_SECONDS = 300.0


def checkpoint_file(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / name


def feature_cache_file(run_dir: Path | str, split: str, flip: bool = False) -> Path:
    return checkpoint_file(run_dir, f"features-{split}{'-flip' if flip else ''}.npy")


def runs_root() -> Path:
    return Path(os.environ.get("CIFAR_RUNS_DIR", DEFAULT_RUNS_ROOT))


def new_run_id(model: str, now: float | None = None) -> str:
    """<time>-<model>-<random>: two launches in one second (or one process) differ."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model)[:40]
    return f"{stamp}-{safe_model}-{secrets.token_hex(3)}"


def create_run_dir(model: str, root: Path | str | None = None) -> Path:
    """A new, empty run folder with a unique id, created atomically (mkdir fails if it exists)."""
    root = Path(root) if root is not None else runs_root()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(RUN_ID_TRIES):
        run_dir = root / new_run_id(model)
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RunFolderError(f"could not create a new run folder under {root}")


def check_new_run_dir(run_dir: Path | str) -> None:
    """A new run may be written only into a missing or empty folder (or one a job launcher made)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a run folder")
    if (run_dir / CONFIG_FILE).exists():
        raise RunFolderError(f"{run_dir} already holds a run; use --resume to continue it or pick a new --run-dir")
    foreign = sorted(entry.name for entry in run_dir.iterdir() if entry.name not in LAUNCH_FILES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunFolderError(f"{run_dir} is not empty and not a run folder (it holds {shown}); "
                             "pick an empty or new folder")


# --- one writer per folder --------------------------------------------------------

class RunWriter:
    """An exclusive lock on a run folder, held from __enter__ to __exit__.

    flock belongs to the open file: the kernel releases it when the process
    ends, even by SIGKILL, and a stopped (SIGSTOP) process keeps it.
    """

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunWriter:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = open_for_writing(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, RunFolderError, "writer lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunFolderError(f"{self.run_dir.name} is being written by another process (pid "
                                 f"{holder}); wait for it to finish or cancel it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _lock_holder(fd: int) -> str:
    """The pid its holder wrote into the open lock file ('?' if it has not yet)."""
    try:
        return os.pread(fd, 20, 0).decode("ascii", "replace").strip() or "?"
    except OSError:
        return "?"


def writer_alive(run_dir: Path | str) -> bool:
    """True while some process holds the run's writer lock."""
    fd = regular_file_fd(Path(run_dir) / LOCK_FILE)  # never inherited (PEP 446)
    if fd is None:
        return False  # no lock file (or a link, FIFO or device no writer could hold): no writer
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


def ensure_subfolder(path: Path | str) -> Path:
    """A folder inside a run folder that a writer fills (checkpoint/, analysis/, export/), made if
    missing. A link by that name is refused, not followed: a shared run folder must not send the
    studio's writes (or a checkpoint's clean-up of old epochs) into some other folder of the user's."""
    path = Path(path)
    if path.is_symlink():
        raise RunFolderError(f"{file_where(path)} is a link; the studio writes only into real "
                             f"folders (remove the link)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"{file_where(path)} is a file where a folder belongs") from None
    return path


# --- atomic writes ---------------------------------------------------------------


def atomic_write_with(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """A file whole or not at all: `write` streams its bytes into a fresh temporary file beside it,
    renamed onto the target once synced, so a large array is never held twice in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run folder is meant to be shared
        with os.fdopen(fd, "wb") as handle:
            write(handle)
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


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_npz(path: Path | str, arrays: dict, compressed: bool = True) -> None:
    """Named arrays as an .npz file, whole or not at all."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez
    atomic_write_with(path, lambda handle: save(handle, **arrays))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npy(path: Path | str, array) -> None:
    """One array as a .npy file, whole or not at all (a resume reads it back)."""
    import numpy as np

    atomic_write_with(path, lambda handle: np.save(handle, array, allow_pickle=False))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    # numpy scalars and arrays sneak into metrics; JSON wants plain Python.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def absent(path: Path) -> bool:
    """Nothing at path (a dangling symlink is something: its reader says what is wrong)."""
    return not path.exists() and not path.is_symlink()


def read_json(path: Path | str, where: str | None = None) -> Any:
    """Any JSON file of a run: bounded in bytes and nesting; RunFolderError otherwise, naming the
    file as `where` says (default: 'NAME in FOLDER')."""
    path = Path(path)
    if absent(path):
        raise RunFolderError(f"missing {path.name} in {path.parent}")
    data = read_regular_file(path, MAX_JSON_BYTES, RunFolderError, what="JSON file")
    return parse_json(data, where or file_where(path), RunFolderError)


def read_checkpoint_record(run_dir: Path | str, name: str, schema: dict[str, Check],
                           required: tuple[str, ...]) -> dict[str, Any] | None:
    """A record a run keeps in its checkpoint folder for its metrics (head.json, teacher.json), None if
    absent: validated, and only the schema's fields, so a record can never bring a figure the run
    did not measure (a test_accuracy) into metrics.json."""
    # Named with its run, the folder above checkpoint/.
    record = _read_validated_at(checkpoint_file(run_dir, name), schema, required, f"{name} in {Path(run_dir).name}")
    return None if record is None else {key: record[key] for key in schema if key in record}


# --- schemas: one validating reader per file kind ---------------------------------

def _matrix(value) -> bool:
    return isinstance(value, list) and all_are(counts, value)


def _seconds_by_stage(value) -> bool:
    return isinstance(value, dict) and all_are(number, value.values())


def _run_state(value) -> bool:
    return value in RUN_STATES


def _stored_size(value) -> bool:
    # The stored resolution the model saw: every source here is resized to at most this.
    return type(value) is int and 1 <= value <= MAX_INPUT_SIZE


def _class_names(value) -> bool:
    return texts(value) and 2 <= len(value) <= 1000


def _per_class(value) -> bool:
    scores = ("precision", "recall", "f1", "support")
    return isinstance(value, dict) and all(
        isinstance(row, dict) and all(number(row.get(k)) for k in scores) for row in value.values())


# A distilled run's teacher (training/distill.py writes it, finish merges it into metrics).
TEACHER_SCHEMA: dict[str, Check] = {
    "teacher_run": text, "teacher_model_sha256": text, "teacher_seconds": number,
    "teacher_test_accuracy": fraction, "teacher_test_accuracy_tta": fraction,
}
# A transfer run's frozen-feature head (training/stages.py writes it, finish merges it into metrics).
HEAD_STATS_SCHEMA: dict[str, Check] = {"test_accuracy_head": fraction, "stage_seconds": _seconds_by_stage}
METRICS_SCHEMA: dict[str, Check] = {
    **TEACHER_SCHEMA, **HEAD_STATS_SCHEMA,
    "test_accuracy": fraction, "test_accuracy_tta": fraction,
    "test_loss": number, "test_loss_tta": number, "train_seconds": number, "eval_seconds": number,
    "train_images_per_second": number, "peak_memory_mb": number,
    "n_params": count, "n_train": count, "n_test": count, "epochs_run": count, "input_size": count,
    "model": text, "data": text, "measured_at": text, "transfer": flag, "machine": json_object,
    "class_names": texts, "confusion_matrix": _matrix, "per_class": _per_class,
}
METRICS_REQUIRED = ("test_accuracy",)
STATUS_SCHEMA: dict[str, Check] = {
    "state": _run_state, "heartbeat": finite, "pid": count, "epoch": count,
    "n_epochs": count, "progress": fraction, "eta_seconds": number, "message": text, "stage": text,
    "test_accuracy": fraction, "batch": count, "steps_per_epoch": count, "last": json_object,
}
STATUS_REQUIRED = ("state",)
DATA_SCHEMA: dict[str, Check] = {
    "image_size": _stored_size, "class_names": _class_names,
    "n_train": count, "n_test": count, "train_counts": counts, "test_counts": counts,
    "source": text, "description": text, "load_seconds": number,
}
DATA_REQUIRED = ("class_names",)


def _read_validated(run_dir: Path | str, name: str, schema, required) -> dict[str, Any] | None:
    path = Path(run_dir) / name
    return _read_validated_at(path, schema, required, file_where(path))


def _read_validated_at(path: Path, schema, required, where: str) -> dict[str, Any] | None:
    """The JSON object at path held to `schema`, named `where` in any refusal; None if nothing is there."""
    if absent(path):
        return None
    return validate(read_json(path, where), schema, required, where)


def read_metrics(run_dir: Path | str) -> dict[str, Any] | None:
    return _read_validated(run_dir, METRICS_FILE, METRICS_SCHEMA, METRICS_REQUIRED)


def read_head_stats(run_dir: Path | str) -> dict[str, Any] | None:
    return read_checkpoint_record(run_dir, HEAD_STATS_FILE, HEAD_STATS_SCHEMA, tuple(HEAD_STATS_SCHEMA))


def read_data_info(run_dir: Path | str) -> dict[str, Any] | None:
    return _read_validated(run_dir, DATA_FILE, DATA_SCHEMA, DATA_REQUIRED)


def read_config(run_dir: Path | str):
    """The run's TrainConfig, validated field by field."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(read_json(path))
    except RunFolderError:
        raise
    except CifarError as exc:
        raise RunFolderError(f"{file_where(Path(run_dir) / CONFIG_FILE)}: {exc}") from None




# --- history ---------------------------------------------------------------------

def write_history(run_dir: Path | str, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
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
    """history.csv rows, every field parsed and checked; RunFolderError on any bad row."""
    found = _read_run_text(run_dir, HISTORY_FILE, MAX_HISTORY_BYTES, "history file")
    if found is None:
        return []
    text, where = found
    try:
        rows = [_history_row(raw, line, where) for line, raw in enumerate(csv.DictReader(io.StringIO(text)), 2)]
    except csv.Error as exc:
        raise RunFolderError(f"corrupt {where}: {one_line(exc)}") from None
    return rows


def _read_run_text(run_dir: Path | str, name: str, max_bytes: int, what: str) -> tuple[str, str] | None:
    """(text, 'NAME in RUN') of a run's text file, or None if there is none; bounded, UTF-8 or refused."""
    path = Path(run_dir) / name
    if absent(path):
        return None
    data = read_regular_file(path, max_bytes, RunFolderError, what=what)
    where = file_where(path)
    try:
        return data.decode("utf-8"), where
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"corrupt {where}: {one_line(exc)}") from None


def _history_row(raw: dict, line: int, where: str) -> dict[str, Any]:
    row = {}
    for key in HISTORY_COLUMNS:
        try:
            row[key] = _parse_history_value(key, raw.get(key))
        except ValueError:
            raise RunFolderError(f"corrupt {where}, line {line}: {key} is {preview(raw.get(key))}") from None
    return row


def _history_epoch(value) -> bool:
    return type(value) is int and value >= 1


def _history_stage(value) -> bool:
    return isinstance(value, str) and value in HISTORY_STAGES


# What a history row may hold once parsed: the one rule for history.csv and a checkpoint's rows.
HISTORY_FIELD_CHECKS: dict[str, Check] = {
    key: {"epoch": _history_epoch, "stage": _history_stage}.get(key, number) for key in HISTORY_COLUMNS}


def history_rows_problem(rows) -> str | None:
    """What is wrong with history rows held as JSON (a checkpoint's), or None: each an object whose
    fields pass HISTORY_FIELD_CHECKS, numbered 1, 2, 3... in order (a resume counts its stages by them)."""
    if not isinstance(rows, list):
        return f"the history is {type(rows).__name__}, not a list"
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"history row {index + 1} is {type(row).__name__}, not an object"
        if row.get("epoch") != index + 1 or not _history_epoch(row.get("epoch")):
            return f"history row {index + 1} has epoch {preview(row.get('epoch'))}"
        for key, check in HISTORY_FIELD_CHECKS.items():
            if row.get(key) is not None and not check(row[key]):
                return f"history row {index + 1}: {key} is {preview(row[key])}"
    return None


def _parse_history_value(key: str, value: str | None):
    if value in ("", None):
        return None
    parsed = value if key == "stage" else int(value) if key == "epoch" else float(value)  # "2.0" is not an epoch
    if not HISTORY_FIELD_CHECKS[key](parsed):
        raise ValueError
    return parsed


# --- live points -----------------------------------------------------------------

def append_live_point(run_dir: Path | str, train_seconds: float, epoch: float, loss: float | None,
                      accuracy: float | None) -> None:
    """One line of live.csv (the run's one writer appends; readers tolerate a half-written last line)."""
    path = Path(run_dir) / LIVE_FILE
    values = [train_seconds, epoch, loss, accuracy]
    line = ",".join("" if value is None else f"{float(value):.6g}" for value in values) + "\n"
    fd = open_for_writing(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, RunFolderError, "live progress file")
    try:
        header = "" if os.fstat(fd).st_size else ",".join(LIVE_COLUMNS) + "\n"
        os.write(fd, (header + line).encode("utf-8"))
    finally:
        os.close(fd)


def read_live(run_dir: Path | str) -> list[dict[str, float | None]]:
    """live.csv rows, each number checked; a torn last line (being written) is left out."""
    found = _read_run_text(run_dir, LIVE_FILE, MAX_LIVE_BYTES, "live progress file")
    if found is None:
        return []
    text, where = found
    lines = text.split("\n")
    if lines[0].split(",") != list(LIVE_COLUMNS):
        raise RunFolderError(f"corrupt {where}: the header is not {','.join(LIVE_COLUMNS)}")
    complete = lines[1:-1]  # the text after the last newline may still be being written
    return [_live_row(line, number, where) for number, line in enumerate(complete, 2) if line]


def _live_row(line: str, number: int, where: str) -> dict[str, float | None]:
    try:
        # strict: a line with more or fewer cells than the header is a ValueError too.
        row = {key: (float(cell) if cell else None) for key, cell in zip(LIVE_COLUMNS, line.split(","), strict=True)}
        if not all(value is None or finite(value) for value in row.values()) or \
                row["train_seconds"] is None or row["train_seconds"] < 0 or row["epoch"] is None or row["epoch"] < 0:
            raise ValueError
    except ValueError:
        raise RunFolderError(f"corrupt {where}, line {number}: {preview(line)}") from None
    return row


# --- predictions -----------------------------------------------------------------

def write_predictions(run_dir: Path | str, y_true, probs, probs_tta=None) -> None:
    """Test-set labels and probabilities (float16: 10k x 10 in ~200 kB) for error analysis."""
    import numpy as np

    arrays = {"y_true": np.asarray(y_true, np.int16), "probs": np.asarray(probs, np.float16)}
    if probs_tta is not None:
        arrays["probs_tta"] = np.asarray(probs_tta, np.float16)
    atomic_write_npz(Path(run_dir) / PREDICTIONS_FILE, arrays)


def read_predictions(run_dir: Path | str) -> dict:
    """{'y_true' (N,), 'probs' (N, classes)[, 'probs_tta' (N, classes)]}, bounded like every run file
    (its bytes and unpacked size before numpy reads it, no device or FIFO) and checked to fit together:
    a damaged file is one RunFolderError, never an IndexError on a page."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS_FILE
    where = file_where(path)
    if absent(path):
        raise RunFolderError(f"no {where}")
    arrays = read_npz(path, MAX_PREDICTIONS_BYTES, ("y_true", "probs"), RunFolderError, optional=("probs_tta",))
    y_true, probs = arrays["y_true"], arrays["probs"]
    fits = (np.issubdtype(y_true.dtype, np.integer) and y_true.ndim == 1 and probs.ndim == 2
            and probs.shape[0] == len(y_true) and probs.shape[1] >= 2
            and all(np.issubdtype(arrays[key].dtype, np.floating) and arrays[key].shape == probs.shape
                    and np.isfinite(arrays[key]).all() for key in arrays if key != "y_true")
            and (not len(y_true) or 0 <= y_true.min() and y_true.max() < probs.shape[1]))
    if not fits:
        raise RunFolderError(f"corrupt {where}: its arrays do not fit together")
    return arrays


def write_epoch_predictions(run_dir: Path | str, y_true, predicted, epochs) -> None:
    """Validation labels and each finished epoch's predicted classes, for scrubbing by epoch."""
    import numpy as np

    atomic_write_npz(Path(run_dir) / EPOCH_PREDICTIONS_FILE, {
        "y_true": np.asarray(y_true, np.int16), "predicted": np.asarray(predicted, np.int16),
        "epochs": np.asarray(epochs, np.int32)})


def read_epoch_predictions(run_dir: Path | str) -> dict | None:
    """{'y_true' (N,), 'predicted' (epochs, N), 'epochs' (epochs,)}, or None if the run saved none.

    Bounded before numpy decompresses anything: the file's bytes, then each member's
    declared size; then every array's dtype and shape must agree."""
    import numpy as np

    path = Path(run_dir) / EPOCH_PREDICTIONS_FILE
    if absent(path):
        return None
    where = file_where(path)
    arrays = read_npz(path, MAX_EPOCH_PREDICTIONS_BYTES, ("y_true", "predicted", "epochs"), RunFolderError)
    y_true, predicted, epochs = arrays["y_true"], arrays["predicted"], arrays["epochs"]
    if not all(np.issubdtype(a.dtype, np.integer) for a in arrays.values()) or y_true.ndim != 1 or \
            predicted.ndim != 2 or predicted.shape != (len(epochs), len(y_true)) or epochs.ndim != 1 or \
            (len(epochs) and (epochs.min() < 1 or predicted.min() < 0 or y_true.min() < 0)):
        raise RunFolderError(f"corrupt {where}: its arrays do not fit together")
    return arrays


# --- status ----------------------------------------------------------------------

def write_status(run_dir: Path | str, state: str, **fields: Any) -> dict[str, Any]:
    if state not in RUN_STATES:
        raise ValueError(f"state must be one of {RUN_STATES}; received {state!r}")
    status = {"state": state, "heartbeat": time.time(), "pid": os.getpid(), **fields}
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def read_status(run_dir: Path | str) -> dict[str, Any] | None:
    return _read_validated(run_dir, STATUS_FILE, STATUS_SCHEMA, STATUS_REQUIRED)


def update_status(run_dir: Path | str, state: str, **fields: Any) -> dict[str, Any]:
    """write_status keeping the progress fields (epoch, n_epochs, progress) already recorded."""
    try:
        previous = read_status(run_dir) or {}
    except RunFolderError:
        previous = {}
    return write_status(run_dir, state, **{**progress_fields(previous), **fields})


def progress_fields(status: dict[str, Any]) -> dict[str, Any]:
    """The fields of a status that say how far training got, which a new state keeps."""
    return {key: status[key] for key in ("epoch", "n_epochs", "progress") if key in status}


def machine_name(machine: Any) -> str | None:
    """'AMD EPYC, 2 cores' from a run's recorded machine, or None if it recorded none."""
    if not isinstance(machine, dict) or not machine.get("cpu"):
        return None
    cores = machine.get("cores")
    return f"{machine['cpu']}, {cores} cores" if isinstance(cores, int) else str(machine["cpu"])


def effective_state(status: dict, now: float | None = None, run_dir: Path | str | None = None) -> str:
    """The status's state, except that a 'running' or 'queued' run nobody is
    writing any more is reported as interrupted (its process died without
    saying so). With run_dir the writer lock decides; without it, the heartbeat's age."""
    state = status.get("state", "unknown")
    if state not in ("running", "queued"):
        return state
    if run_dir is not None and (Path(run_dir) / LOCK_FILE).exists():
        return state if writer_alive(run_dir) else "interrupted"
    heartbeat = status.get("heartbeat")
    if isinstance(heartbeat, (int, float)) and (now or time.time()) - heartbeat > STALE_SECONDS:
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
    """Read and validate a run's JSON files; raises RunFolderError when one is bad."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    config = read_config(run_dir).to_dict()
    status = read_status(run_dir) or {"state": "unknown"}
    return RunSummary(run_dir.name, run_dir, config, status, read_metrics(run_dir), read_data_info(run_dir))


def _being_created(run_dir: Path) -> bool:
    """A folder a job launcher made whose writer has not written its config yet."""
    try:
        return not (run_dir / CONFIG_FILE).exists() and {e.name for e in run_dir.iterdir()} <= LAUNCH_FILES
    except OSError:
        return False


# The dashboard lists the runs again every few seconds, reading four small files of each: a folder of
# 3,000 took 1.2 s, the first 500 of it 0.2 s (2 Zen 4 cores, tools.listing_cost). A root with more is
# read this far, and says so.
MAX_LISTED_RUNS = 500


def list_runs(root: Path | str | None = None) -> tuple[list[RunSummary], list[str]]:
    """The readable runs among root's first MAX_LISTED_RUNS entries (newest first: run ids begin with
    their time, and named runs such as the shipped ones come before them), and a warning per skipped
    folder."""
    root = Path(root) if root is not None else runs_root()
    runs, problems = [], []
    if not root.is_dir():
        return runs, problems
    names = sorted((name for name in os.listdir(root) if not name.startswith(".")), reverse=True)
    for position, name in enumerate(names):
        if position == MAX_LISTED_RUNS:  # entries, not runs: a root full of stray files is bounded too
            problems.append(f"{root} holds {len(names):,} entries; only the first {MAX_LISTED_RUNS:,} were read "
                            "(newest runs first)")
            break
        run_dir = root / name
        if not run_dir.is_dir() or _being_created(run_dir):
            continue
        try:
            runs.append(load_run(run_dir))
        except RunFolderError as exc:
            problems.append(f"skipped {run_dir.name}: {exc}")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return runs, problems


# The validating reader of each JSON file kind, by file name.
READERS: dict[str, Callable[[Path | str], Any]] = {
    CONFIG_FILE: lambda run_dir: read_config(run_dir).to_dict(), METRICS_FILE: read_metrics,
    DATA_FILE: read_data_info, STATUS_FILE: read_status}


def read_run_file(run_dir: Path | str, name: str) -> Any:
    """The validated content of one of a run's JSON files, or None if it is absent."""
    if name not in READERS:
        raise ValueError(f"no reader for {name!r}; one of {sorted(READERS)}")
    return READERS[name](run_dir)


def copy_files(run_dir: Path, destination: Path, names: tuple[str, ...]) -> Path:
    """Copy the named files into destination (a new folder), all or nothing."""
    if destination.exists():
        raise RunFolderError(f"{destination} already exists")
    staging = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    staging.mkdir(parents=True)
    try:
        for name in names:
            atomic_write_bytes(staging / name, read_regular_file(run_dir / name, MAX_SHIPPED_FILE_BYTES,
                                                                 RunFolderError))
        os.replace(staging, destination)
    except BaseException:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
        raise
    return destination


def ship(run_dir: Path | str, root: Path | str, name: str | None = None) -> Path:
    """Copy a completed, valid run into root/<name> with SHIPPED_FILES (and SHIPPED_IF_PRESENT)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.status.get("state") != "completed" or run.metrics is None:
        raise RunFolderError(f"{run_dir.name} has not completed; only finished runs ship")
    missing = [f for f in SHIPPED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise RunFolderError(f"{run_dir.name} lacks {missing}")
    read_history(run_dir)
    present = tuple(f for f in SHIPPED_IF_PRESENT if (run_dir / f).is_file())
    return copy_files(run_dir, Path(root) / (name or run_dir.name), SHIPPED_FILES + present)


def keep_record(run_dir: Path | str, root: Path | str) -> Path:
    """Copy a run's record (config, metrics, history; no weights) into root/<run name>."""
    run_dir = Path(run_dir)
    load_run(run_dir)
    read_history(run_dir)
    return copy_files(run_dir, Path(root) / run_dir.name, RECORD_FILES)
