"""Reading and writing the analysis files: bounded, validated, stamped with the model's fingerprint."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..errors import RunFolderError
from ..safeio import read_json_file
from ..safeio import read_npz as safe_read_npz

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_NPZ_BYTES = 64 * 1024 * 1024
STAMPS_FILE = "stamps.json"  # {analysis file name: SHA-256 of the model file it was computed from}


def write_json(path: Path, data: Any, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    _stamp(path, fingerprint)


def write_npz(path: Path, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    runs.atomic_write_bytes(path, buffer.getvalue())
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
    if not path.is_file():
        return None
    return read_json_file(path, MAX_JSON_BYTES, RunFolderError)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of an analysis .npz (None if absent), bounded (safeio.read_npz)."""
    if not path.is_file():
        return None
    return safe_read_npz(path, MAX_NPZ_BYTES, keys, RunFolderError, f"{path.name} in {path.parent.parent.name}")


def stamped_fingerprint(path: Path) -> str | None:
    """The model fingerprint an analysis file was computed for (None if absent or unstamped)."""
    return _stamps(path.parent).get(path.name) if path.is_file() else None
