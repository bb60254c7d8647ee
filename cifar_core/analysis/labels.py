"""Label issues: test images whose given label the model least believes (cleanlab), and the marks
a person makes ("this label is wrong"), kept in a small JSON file under artifacts/."""
from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import RunFolderError
from ..safeio import read_json_file

MARKS_FILE = Path(__file__).resolve().parent.parent.parent / "artifacts" / "label_marks.json"
MAX_MARKS_BYTES = 1 << 20


def rank_label_issues(labels: np.ndarray, probs: np.ndarray, keep: int) -> list[dict]:
    """The `keep` test images of lowest label quality, worst first: [{index, given, suggested, quality,
    flagged}], quality being cleanlab's self-confidence score from out-of-sample probabilities and
    `flagged` whether cleanlab's find_label_issues (confident learning) calls the label an issue."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = find_label_issues(labels, probs)
    suggested = probs.argmax(axis=1)
    return [{"index": int(i), "given": int(labels[i]), "suggested": int(suggested[i]), "quality": float(quality[i]),
             "flagged": bool(flagged[i])} for i in np.argsort(quality, kind="stable")[:keep]]


def read_marks(path: Path = MARKS_FILE) -> set[int]:
    """Test indices a person marked as wrongly labelled (empty if none or unreadable)."""
    if not path.is_file():
        return set()
    data = read_json_file(path, MAX_MARKS_BYTES, RunFolderError)
    marked = data.get("wrong_labels") if isinstance(data, dict) else None
    if not isinstance(marked, list) or not all(type(i) is int and 0 <= i < 10_000_000 for i in marked):
        raise RunFolderError(f"corrupt {path.name}: 'wrong_labels' must be a list of test indices")
    return set(marked)


def write_marks(marked: set[int], path: Path = MARKS_FILE) -> None:
    runs.atomic_write_text(path, json.dumps({"wrong_labels": sorted(marked)}, indent=1) + "\n")


def set_mark(index: int, wrong: bool, path: Path = MARKS_FILE) -> set[int]:
    """Mark (or unmark) one test image as wrongly labelled; the marks after. The file is read and
    written under a lock: marks other visitors made meanwhile are kept, and a file that cannot be
    read is refused (RunFolderError), never replaced by this one mark."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # per open file: Streamlit's sessions (threads) wait for each other too
        marked = read_marks(path)
        if wrong:
            marked.add(index)
        else:
            marked.discard(index)
        write_marks(marked, path)
        return marked
    finally:
        os.close(folder)  # releases the lock


def accuracy_without(y_true: np.ndarray, y_pred: np.ndarray, excluded: set[int]) -> float:
    """Accuracy on the test images that are not excluded (the marked wrong labels)."""
    keep = ~np.isin(np.arange(len(y_true)), list(excluded))
    if not keep.any():
        return math.nan  # nothing left to measure
    return float(np.mean(y_true[keep] == y_pred[keep]))
