"""Several finished runs as one classifier: the mean of their test-split probabilities.

Reads only what each run saved (predictions.npz, data.json, metrics.json), so measuring an ensemble
costs no inference. The members must have been evaluated on the same test split: the same class names
and the same labels in the same order, checked image by image. Where every member saved flip-TTA
probabilities, the ensemble is measured with them too.

Besides the accuracy, the members' agreement is reported as a trust signal a user can see: how many
test images every member labels alike, and how accurate the ensemble is on those and on the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runs
from .errors import RunFolderError

MIN_MEMBERS = 2
MAX_MEMBERS = 16
# Every member's probabilities are held at once (16 x 10k x 10 float32, with TTA, is 13 MB); each file is
# bounded on its own (runs.MAX_PREDICTIONS_BYTES), and this bounds them together, checked as each is read.
MAX_VALUES = 32 * 1024 * 1024  # 128 MiB of float32


@dataclass(frozen=True)
class Member:
    run_id: str
    model: str
    train_seconds: float | None
    class_names: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray | None


def read_member(run_dir: Path | str) -> Member:
    """One finished run's saved test-split probabilities, labels and class names (bounded readers)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"not a run folder: {run_dir}")
    info = runs.read_data_info(run_dir)
    if info is None:
        raise RunFolderError(f"no {runs.DATA_FILE} in {run_dir.name}: which test split it was measured on is unknown")
    arrays = runs.read_predictions(run_dir)
    if not len(arrays["y_true"]):
        raise RunFolderError(f"{runs.PREDICTIONS_FILE} in {run_dir.name} holds no test images")
    class_names = list(info["class_names"])
    if arrays["probs"].shape[1] != len(class_names):
        raise RunFolderError(f"{run_dir.name}'s predictions have {arrays['probs'].shape[1]} classes; "
                             f"its {runs.DATA_FILE} names {len(class_names)}")
    try:  # only the member's labels come from metrics.json: a damaged one costs its model name and time
        metrics = runs.read_metrics(run_dir) or {}
    except RunFolderError:
        metrics = {}
    model = metrics.get("model") if isinstance(metrics.get("model"), str) else "?"
    seconds = metrics.get("train_seconds")
    seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
    return Member(run_dir.name, model, seconds, class_names, arrays["y_true"].astype(np.int64),
                  arrays["probs"].astype(np.float32),
                  arrays["probs_tta"].astype(np.float32) if "probs_tta" in arrays else None)


def read_members(run_dirs: list[Path | str]) -> list[Member]:
    """Each run's probabilities, checked to be on one test split: the same classes, the same labels in
    the same order."""
    run_dirs = [Path(d) for d in run_dirs]
    if not MIN_MEMBERS <= len(run_dirs) <= MAX_MEMBERS:
        raise RunFolderError(f"an ensemble takes {MIN_MEMBERS} to {MAX_MEMBERS} runs; {len(run_dirs)} given")
    if len(set(d.resolve() for d in run_dirs)) < len(run_dirs):
        raise RunFolderError(f"a run is named twice: {', '.join(d.name for d in run_dirs)}")
    members, values = [], 0
    for run_dir in run_dirs:
        members.append(read_member(run_dir))
        values += sum(a.size for a in (members[-1].probs, members[-1].probs_tta) if a is not None)
        if values > MAX_VALUES:
            raise RunFolderError(f"these runs' predictions hold more than {MAX_VALUES:,} probabilities together "
                                 f"(at {run_dir.name}); an ensemble reads at most that many")
    first = members[0]
    for member in members[1:]:
        if member.class_names != first.class_names:
            raise RunFolderError(f"{member.run_id} has other classes than {first.run_id}: {member.class_names}")
        if not np.array_equal(member.y_true, first.y_true):
            raise RunFolderError(f"{member.run_id} was measured on another test split than {first.run_id} "
                                 f"({len(member.y_true):,} against {len(first.y_true):,} images, or in another order)")
    return members


def mean_probabilities(arrays: list[np.ndarray]) -> np.ndarray:
    """The members' probabilities averaged, image by image: each member votes with its confidence."""
    total = np.zeros_like(arrays[0])
    for probabilities in arrays:  # summed in place: no stacked copy of every member
        total += probabilities
    return total / len(arrays)


def agreement(arrays: list[np.ndarray], y_true: np.ndarray, combined: np.ndarray) -> dict:
    """How often every member's top class is the same, and the ensemble's accuracy where they agree and
    where they do not: what the dashboard can say about one prediction."""
    from sklearn.metrics import accuracy_score

    tops = np.stack([a.argmax(axis=1) for a in arrays])
    unanimous = (tops == tops[0]).all(axis=0)
    predicted = combined.argmax(axis=1)

    def accuracy_where(mask):
        return float(accuracy_score(y_true[mask], predicted[mask])) if mask.any() else None

    return {"unanimous_fraction": float(unanimous.mean()), "accuracy_unanimous": accuracy_where(unanimous),
            "accuracy_split": accuracy_where(~unanimous)}


def measure_ensemble(run_dirs: list[Path | str]) -> dict:
    """Each member's test accuracy and the ensemble's, plain and with flip TTA where every member has it."""
    from sklearn.metrics import accuracy_score

    members = read_members(run_dirs)
    y_true = members[0].y_true
    result = {"members": [], "n_test": int(len(y_true)), "class_names": members[0].class_names}
    variants = {"": [m.probs for m in members]}
    if all(m.probs_tta is not None for m in members):
        variants["_tta"] = [m.probs_tta for m in members]
    for member in members:
        row = {"run": member.run_id, "model": member.model, "train_seconds": member.train_seconds,
               "test_accuracy": float(accuracy_score(y_true, member.probs.argmax(axis=1)))}
        if "_tta" in variants:
            row["test_accuracy_tta"] = float(accuracy_score(y_true, member.probs_tta.argmax(axis=1)))
        result["members"].append(row)
    seconds = [m.train_seconds for m in members]
    result["train_seconds"] = None if None in seconds else sum(seconds)  # what training every member cost
    for suffix, arrays in variants.items():
        combined = mean_probabilities(arrays)
        result[f"test_accuracy{suffix}"] = float(accuracy_score(y_true, combined.argmax(axis=1)))
        result[f"agreement{suffix}"] = agreement(arrays, y_true, combined)
    return result
