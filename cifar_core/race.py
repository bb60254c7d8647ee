"""Accuracy against training time, for live runs and for replays of recorded ones. No UI here.

A run's curve is what it measured: validation accuracy per epoch where it held out
a validation split, else training accuracy (fastnet's recipe trains on every
image), and always says which. Live runs add the running training accuracy of the
epoch in progress (live.csv), so the line moves every few seconds, not per epoch.
"""
from __future__ import annotations

CURVES = {"val_accuracy": "validation accuracy", "accuracy": "training accuracy"}
REPLAY_SPEEDS = (10, 30, 60, 120, 600)


def measured_curve(history: list[dict]) -> str | None:
    """The history column a run's curve draws: 'val_accuracy' if it has one, else 'accuracy'."""
    for column in CURVES:
        if any(row.get(column) is not None for row in history):
            return column
    return None


def epoch_points(history: list[dict], until_seconds: float | None = None) -> list[dict]:
    """(minutes, accuracy, epoch, curve) at the end of each epoch, on cumulative training time;
    only epochs finished by `until_seconds` of training when given (a replay in progress)."""
    column = measured_curve(history)
    points, seconds = [], 0.0
    for row in history:
        seconds += row.get("seconds") or 0.0
        if until_seconds is not None and seconds > until_seconds:
            break
        if column and row.get(column) is not None:
            points.append({"minutes": seconds / 60, "accuracy": row[column], "epoch": row["epoch"],
                           "curve": CURVES[column]})
    return points


def live_points(live: list[dict], after_seconds: float = 0.0) -> list[dict]:
    """The running training accuracy of epochs in progress, from live.csv, past `after_seconds`."""
    return [{"minutes": p["train_seconds"] / 60, "accuracy": p["accuracy"], "epoch": p["epoch"],
             "curve": "training accuracy (running)"}
            for p in live if p["accuracy"] is not None and p["train_seconds"] > after_seconds]


def total_seconds(history: list[dict]) -> float:
    return sum(row.get("seconds") or 0.0 for row in history)


def replay_seconds(started_at: float, now: float, speed: float, history: list[dict]) -> float:
    """How many seconds of the recorded training a replay started at `started_at` has shown."""
    return min(max(now - started_at, 0.0) * speed, total_seconds(history))


def replay_progress(started_at: float, now: float, speed: float, history: list[dict]) -> tuple[float, int]:
    """(fraction of the run replayed, epochs finished so far) of a replay."""
    total = total_seconds(history)
    shown = replay_seconds(started_at, now, speed, history)
    finished, seconds = 0, 0.0
    for row in history:
        seconds += row.get("seconds") or 0.0
        if seconds > shown:
            break
        finished += 1
    return (shown / total if total else 1.0), finished
