"""Callbacks that make a run folder live: history, status, heartbeat, checkpoints."""
from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from .. import runs
from . import checkpoint

HEARTBEAT_SECONDS = 5.0
LIVE_POINT_SECONDS = 2.0  # how often live.csv gets a point: the Train page's curve moves this often
BEST_WEIGHTS_NAME = runs.BEST_WEIGHTS_FILE


def read_best_weights(path: Path, model: keras.Model) -> tuple[int, list[np.ndarray]] | None:
    """(0-based epoch, weights) from a best-weights file, or None if there is none, or it is damaged
    or holds weights of another shape than `model`'s (then the run goes on without them)."""
    from ..safeio import read_cached_npz

    shapes = [tuple(weight.shape) for weight in model.weights]
    max_bytes = sum(8 * int(np.prod(shape)) for shape in shapes) + (1 << 20)  # float64 at most
    saved = read_cached_npz(path, max_bytes, (*(f"arr_{i}" for i in range(len(shapes))), "epoch"))
    if saved is None or saved["epoch"].shape != () or not np.issubdtype(saved["epoch"].dtype, np.integer):
        return None
    weights = [saved[f"arr_{i}"] for i in range(len(shapes))]
    if [weight.shape for weight in weights] != shapes:
        return None
    return int(saved["epoch"]), weights


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: checkpoint (model + optimizer + history), history.csv, status.json.
    Per few seconds within an epoch: status.json with progress, ETA and heartbeat.

    The checkpoint carries its own copy of the history, so a resumed run's
    history has exactly one row per completed epoch, whatever moment it died.
    """

    def __init__(self, run_dir: Path, n_epochs: int, steps_per_epoch: int, history: list[dict],
                 stage: str = "train", epoch_offset: int = 0, total_epochs: int | None = None,
                 lead_seconds: float = 0.0):
        super().__init__()
        # Work before the run's first epoch that counts as training (a teacher's labelling):
        # added to that epoch's seconds, as a transfer run's features are to its first head epoch.
        self.lead_seconds = lead_seconds
        self.run_dir = Path(run_dir)
        self.n_epochs = n_epochs
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.history = history
        self.stage = stage
        # Fine-tuning continues the epoch count of the first stage.
        self.epoch_offset = epoch_offset
        self.total_epochs = total_epochs or n_epochs
        self._epoch_started = 0.0
        self._last_beat = 0.0
        self._last_point = 0.0
        self._seconds_per_epoch: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()
        self._beat(epoch, 0)

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self._last_point >= LIVE_POINT_SECONDS:
            self._last_point = now
            self._live_point(self._current_epoch + (batch + 1) / self.steps_per_epoch, now - self._epoch_started,
                             logs)
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._beat(self._current_epoch, batch + 1, logs)

    def _live_point(self, epochs_in_stage: float, seconds_in_epoch: float, logs) -> None:
        """A point of the live curve: training seconds so far (all stages, across resumes) and
        the running loss and accuracy of the epoch in progress."""
        logs = _scalars(logs)
        done = sum(row.get("seconds") or 0.0 for row in self.history) + self._lead
        runs.append_live_point(self.run_dir, done + seconds_in_epoch, self.epoch_offset + epochs_in_stage,
                               logs.get("loss"), logs.get("accuracy"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._seconds_per_epoch = time.perf_counter() - self._epoch_started
        seconds = self._seconds_per_epoch + self._lead
        row = {"epoch": self.epoch_offset + epoch + 1, "seconds": seconds,
               "learning_rate": current_learning_rate(self.model.optimizer), "stage": self.stage}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in logs:
                row[key] = float(logs[key])
        self.history.append(row)
        self._live_point(epoch + 1, 0.0, logs)
        checkpoint.save(self.run_dir, self.model, self.history)
        runs.write_history(self.run_dir, self.history)
        self._beat(epoch + 1, 0, logs, finished_epoch=True)

    @property
    def _lead(self) -> float:
        return 0.0 if self.history else self.lead_seconds

    @property
    def _current_epoch(self) -> int:
        return len(self.history) - self.epoch_offset

    def _beat(self, epoch_in_stage: int, batch: int, logs=None, finished_epoch: bool = False):
        self._last_beat = time.perf_counter()
        done_epochs = self.epoch_offset + (epoch_in_stage if finished_epoch else epoch_in_stage)
        fraction_of_epoch = 0.0 if finished_epoch else batch / self.steps_per_epoch
        progress = min((done_epochs + fraction_of_epoch) / self.total_epochs, 1.0)
        eta = None
        elapsed_in_epoch = time.perf_counter() - self._epoch_started
        per_epoch = self._seconds_per_epoch
        if per_epoch is None and fraction_of_epoch > 0.02:
            per_epoch = elapsed_in_epoch / fraction_of_epoch
        if per_epoch is not None:
            eta = per_epoch * (self.total_epochs - done_epochs - fraction_of_epoch)
        fields = {"epoch": done_epochs, "n_epochs": self.total_epochs, "stage": self.stage,
                  "progress": round(progress, 4), "eta_seconds": eta, "batch": batch,
                  "steps_per_epoch": self.steps_per_epoch}
        if logs:
            fields["last"] = _scalars(logs)
        runs.write_status(self.run_dir, "running", **fields)


def _scalars(logs) -> dict[str, float]:
    """Keras' batch logs as plain floats (they may be numpy or backend scalars)."""
    found = {}
    for key, value in (logs or {}).items():
        try:
            found[key] = float(value)
        except (TypeError, ValueError):
            continue
    return found


class EpochPredictions(keras.callbacks.Callback):
    """After each epoch, the validation images' predicted classes, kept in the run folder so a
    confusion matrix can be scrubbed epoch by epoch. Earlier epochs survive a resume."""

    def __init__(self, run_dir: Path, val_data, y_val: np.ndarray, epoch_offset: int = 0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.val_data = val_data
        self.y_val = np.asarray(y_val)
        self.epoch_offset = epoch_offset
        self._epochs: list[int] = []
        self._predicted: list[np.ndarray] = []

    def on_train_begin(self, logs=None):
        saved = runs.read_epoch_predictions(self.run_dir)
        if saved is not None and np.array_equal(saved["y_true"], self.y_val):
            self._epochs = [int(e) for e in saved["epochs"]]
            self._predicted = list(saved["predicted"])

    def on_epoch_end(self, epoch, logs=None):
        number = self.epoch_offset + epoch + 1
        probs = self.model.predict(self.val_data, verbose=0)
        kept = [i for i, e in enumerate(self._epochs) if e < number]  # a resumed epoch replaces its old copy
        self._epochs = [self._epochs[i] for i in kept] + [number]
        self._predicted = [self._predicted[i] for i in kept] + [np.argmax(probs, axis=1)]
        runs.write_epoch_predictions(self.run_dir, self.y_val, np.stack(self._predicted), self._epochs)


class PredictHeartbeat(keras.callbacks.Callback):
    """status.json heartbeats while a long predict() runs (features, evaluation)."""

    def __init__(self, run_dir: Path, stage: str):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.stage = stage
        self._last = 0.0

    def on_predict_batch_end(self, batch, logs=None):
        if time.perf_counter() - self._last >= HEARTBEAT_SECONDS:
            self._last = time.perf_counter()
            kept = {k: v for k, v in (runs.read_status(self.run_dir) or {}).items()
                    if k not in ("state", "heartbeat", "pid")}
            runs.write_status(self.run_dir, "running", **{**kept, "stage": self.stage, "batch": batch + 1})


def _replayable(rows: list[dict], monitor: str) -> list[tuple[int, dict]]:
    """(epoch index, logs) of earlier epochs that recorded the monitored value."""
    return [(int(row["epoch"]) - 1, dict(row)) for row in rows if row.get(monitor) is not None]


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose patience counter survives a resume.

    The killed run's epochs are replayed through Keras' own bookkeeping before
    training starts; replayed reductions leave the learning rate alone, since the
    checkpointed optimizer already carries every reduction that happened.
    """

    def __init__(self, past_rows: list[dict], **kwargs):
        super().__init__(**kwargs)
        self._past = list(past_rows)
        self._replaying = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._replaying = True
        try:
            for epoch, row in _replayable(self._past, self.monitor):
                self.on_epoch_end(epoch, row)
        finally:
            self._replaying = False

    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        if self._replaying:
            return True  # happened in the killed run; the optimizer state has it
        return super()._reduce_optimizer_lr(optimizer, epoch, name)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping (best-weight restore) whose state survives a resume.

    The patience counter and best value are replayed from the run's history; the
    best weights are kept in checkpoint/best-weights.npz, written when the monitored
    value improves and tagged with their epoch, so a run stopped across sessions
    still ends on the weights of its best epoch.
    """

    def __init__(self, run_dir: Path, past_rows: list[dict], **kwargs):
        super().__init__(restore_best_weights=True, **kwargs)
        self.path = checkpoint.checkpoint_dir(run_dir) / BEST_WEIGHTS_NAME
        self._past = list(past_rows)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        replay = _replayable(self._past, self.monitor)
        for epoch, row in replay:
            super().on_epoch_end(epoch, row)
        if replay:
            self.best_weights = self._saved_weights(self.best_epoch)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch and self.best_weights is not None:
            arrays = {f"arr_{index}": weights for index, weights in enumerate(self.best_weights)}
            runs.ensure_subfolder(self.path.parent)
            runs.atomic_write_npz(self.path, {**arrays, "epoch": np.int64(epoch)}, compressed=False)

    def _saved_weights(self, epoch: int) -> list | None:
        """The best epoch's weights, or None (then Keras starts over from the next epoch)."""
        saved = read_best_weights(self.path, self.model)
        if saved is None or saved[0] != epoch:
            return None  # killed between improving and saving: that file is older
        return saved[1]
