"""The vocabulary of the validating readers: what a field of a JSON file may hold.

Each check takes a parsed JSON value and says whether it is of the expected kind; `validate`
holds an object to a schema of them. Run folders, analysis files and export manifests all
use these, so "a fraction" or "a count" means the same in each.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CifarError, RunFolderError

Check = Callable[[Any], bool]


def number(value) -> bool:
    return type(value) in (int, float)


def finite(value) -> bool:
    return number(value) and math.isfinite(value)


def fraction(value) -> bool:
    return number(value) and 0.0 <= value <= 1.0


def non_negative(value) -> bool:
    return finite(value) and value >= 0


def count(value) -> bool:
    return type(value) is int and value >= 0


def text(value) -> bool:
    return isinstance(value, str)


def plain_name(value) -> bool:
    """A file or folder name with no path in it: never empty, '.', '..' or a separator."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value \
        and Path(value).name == value


def flag(value) -> bool:
    return type(value) is bool


def json_object(value) -> bool:
    return isinstance(value, dict)


def all_are(check: Check, items) -> bool:
    return all(check(item) for item in items)


def texts(value) -> bool:
    return isinstance(value, list) and all_are(text, value)


def counts(value) -> bool:
    return isinstance(value, list) and all_are(count, value)


def list_of(check: Check, length: int | None = None) -> Check:
    """A list whose items all pass `check` (of exactly `length` items, where given)."""
    return lambda value: isinstance(value, list) and (length is None or len(value) == length) and all_are(
        check, value)


def record(schema: dict[str, Check]) -> Check:
    """An object with every field of `schema`, each passing its check."""
    return lambda value: isinstance(value, dict) and all(k in value and check(value[k]) for k, check in schema.items())


def optional(check: Check) -> Check:
    """null, or a value passing `check`."""
    return lambda value: value is None or check(value)


def validate(data: Any, schema: dict[str, Check], required: tuple[str, ...], what: str,
             error: type[CifarError] = RunFolderError) -> dict[str, Any]:
    """data if it is an object whose known fields have the right types; `error` otherwise.
    Unknown fields are kept: a newer writer may add some."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object; found {type(data).__name__}")
    for key in required:
        if data.get(key) is None:
            raise error(f"{what} has no {key}")
    for key, check in schema.items():
        value = data.get(key)
        if value is not None and not check(value):
            raise error(f"{what}: {key} has an unexpected value {preview(value)}")
    return data


def preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
