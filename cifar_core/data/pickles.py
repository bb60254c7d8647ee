"""The official CIFAR-10 python batches, read without trusting pickle.

A CIFAR batch is a dict of bytes -> (list of ints | bytes | uint8 ndarray).
The restricted unpickler resolves only the few globals numpy needs to rebuild
an ndarray; anything else (os.system, eval, builtins...) is refused before it
can be called.
"""
from __future__ import annotations

import _codecs
import io
import pickle

import numpy as np

from ..errors import UnsafePickleError

_NUMPY_RECONSTRUCT = np._core.multiarray._reconstruct
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol 2.
    ("_codecs", "encode"): _codecs.encode,
}
MAX_PICKLE_BYTES = 512 * 1024 * 1024
IMAGE_VALUES = 32 * 32 * 3


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"pickle asks for {module}.{name}, which a CIFAR batch never contains; refusing to load it") from None


def restricted_loads(data: bytes, name: str = "pickle"):
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{name}: {len(data)} bytes is larger than any CIFAR batch")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is the same user error
        raise UnsafePickleError(f"{name}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def _field(batch: dict, key: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise UnsafePickleError(f"CIFAR batch has no {key!r} entry")


def parse_batch(data: bytes, name: str = "batch", n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Validated (images NHWC uint8, labels int64) from one batch file."""
    batch = restricted_loads(data, name)
    if not isinstance(batch, dict):
        raise UnsafePickleError(f"{name}: expected a dict, found {type(batch).__name__}")
    images = _field(batch, "data")
    labels = _field(batch, "labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != IMAGE_VALUES:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise UnsafePickleError(f"{name}: data must be uint8 of shape (N, {IMAGE_VALUES}); found {shape} {dtype}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(images):
        raise UnsafePickleError(f"{name}: need one label per image ({len(images)} images)")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UnsafePickleError(f"{name}: labels must be integers") from None
    if label_array.ndim != 1 or (len(label_array) and (label_array.min() < 0 or label_array.max() >= n_classes)):
        raise UnsafePickleError(f"{name}: labels must be integers in [0, {n_classes - 1}]")
    # Stored channel-first (N, 3, 32, 32); everything here is channels-last.
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), label_array


def parse_label_names(data: bytes) -> list[str]:
    meta = restricted_loads(data, "batches.meta")
    if not isinstance(meta, dict):
        raise UnsafePickleError("batches.meta: expected a dict")
    names = _field(meta, "label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UnsafePickleError("batches.meta: label_names must be a list of strings")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
