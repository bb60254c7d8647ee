"""The official CIFAR-10 python batches, read without trusting pickle.

A CIFAR batch is a dict of bytes -> (list of ints | bytes | uint8 ndarray).
The restricted unpickler resolves only the few globals numpy's pickle of an
ndarray names, and even those to inert recipes: no array is allocated until
its declared shape and dtype are checked against the bytes present and the
dataset's expected shape. Anything else (os.system, eval, builtins...) is
refused before it can be called.
"""
from __future__ import annotations

import io
import math
import pickle

import numpy as np

from ..errors import UnsafePickleError, one_line

# A batch holds 10,000 images; a few more for hand-made ones, never gigabytes.
MAX_BATCH_IMAGES = 60_000
IMAGE_VALUES = 32 * 32 * 3
MAX_PICKLE_BYTES = 64 * 1024 * 1024
# Integer dtypes a CIFAR batch (or a numpy-saved label array) may use.
_INTEGER_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
_BYTE_ORDERS = frozenset({"|", "<", ">", "="})


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


class _NdarrayMarker:
    """Stands for numpy.ndarray in a pickle: nothing is built while unpickling."""


class _DtypeRecipe:
    """What a pickle says about a dtype, resolved only if it is a plain integer type."""

    byte_order = "|"  # until __setstate__ says otherwise

    def __init__(self, name, *_flags):  # numpy passes (name, align, copy); only the name matters
        self.name = _text(name)

    def __setstate__(self, state):
        # numpy's dtype state: (version, byte order, ...); Python 2 pickles give bytes.
        if isinstance(state, tuple) and len(state) > 1:
            self.byte_order = _text(state[1])

    def resolve(self, name: str) -> np.dtype:
        if self.name not in _INTEGER_DTYPES or self.byte_order not in _BYTE_ORDERS:
            raise UnsafePickleError(f"{name}: arrays must hold integers (uint8 images, integer labels); "
                                  f"found dtype {self.name!r}")
        return np.dtype(self.byte_order + self.name)


class _ArrayRecipe:
    """numpy's pickle of an ndarray: an empty array, then __setstate__ with the
    shape, dtype and raw bytes. Kept as a recipe until the declared shape is
    checked against the bytes actually present."""

    state = None  # until __setstate__ gives (version, shape, dtype, fortran order, raw bytes)

    def __setstate__(self, state):
        self.state = state

    def resolve(self, name: str, max_elements: int) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise UnsafePickleError(f"{name}: an array without its shape and data")
        _, shape, dtype, fortran_order, raw = self.state
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 2:
            raise UnsafePickleError(f"{name}: an array declares the shape {shape!r}")
        if not isinstance(dtype, _DtypeRecipe):
            raise UnsafePickleError(f"{name}: an array without a dtype")
        dtype = dtype.resolve(name)
        if not isinstance(raw, bytes):
            raise UnsafePickleError(f"{name}: array data must be raw bytes; found {type(raw).__name__}")
        count = math.prod(shape)
        if count > max_elements:
            raise UnsafePickleError(f"{name}: an array declares {count} values; a CIFAR batch has at most "
                                    f"{max_elements}")
        if count * dtype.itemsize != len(raw):
            raise UnsafePickleError(f"{name}: an array declares {shape} {dtype} ({count * dtype.itemsize} bytes) "
                                    f"but holds {len(raw)} bytes")
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran_order else "C")


def _reconstruct(subtype, shape, dtype):
    # numpy always pickles an ndarray as _reconstruct(ndarray, (0,), b"b") + __setstate__.
    if subtype is not _NdarrayMarker or shape != (0,):
        raise UnsafePickleError("pickle rebuilds an array in a way numpy never writes")
    return _ArrayRecipe()


def _latin1_encode(text, encoding):
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol 2.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"pickle asks for _codecs.encode with {encoding!r}; only latin1 text is allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _DtypeRecipe,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"pickle asks for {module}.{name}, which a CIFAR batch never contains; refusing to load it") from None


def restricted_loads(data: bytes, name: str = "pickle"):
    """Unpickle with only the array-recipe globals; arrays come back as recipes to resolve."""
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{name}: {len(data)} bytes is larger than any CIFAR batch")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is the same user error
        raise UnsafePickleError(f"{name}: not a readable CIFAR batch ({type(exc).__name__}: {one_line(exc)})") from None


def _field(batch: dict, key: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise UnsafePickleError(f"CIFAR batch has no {key!r} entry")


def parse_batch(data: bytes, name: str = "batch", num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Validated (images NHWC uint8, labels int64) from one batch file."""
    batch = restricted_loads(data, name)
    if not isinstance(batch, dict):
        raise UnsafePickleError(f"{name}: expected a dict, found {type(batch).__name__}")
    images = _images(_field(batch, "data"), name)
    labels = _labels(_field(batch, "labels"), len(images), name, num_classes)
    # Stored channel-first (N, 3, 32, 32); everything here is channels-last.
    return images.reshape(len(images), 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _images(value, name: str) -> np.ndarray:
    if not isinstance(value, _ArrayRecipe):
        raise UnsafePickleError(f"{name}: data must be a uint8 array of shape (N, {IMAGE_VALUES}); "
                                f"found {type(value).__name__}")
    images = value.resolve(name, MAX_BATCH_IMAGES * IMAGE_VALUES)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != IMAGE_VALUES:
        raise UnsafePickleError(f"{name}: data must be uint8 of shape (N, {IMAGE_VALUES}); "
                                f"found {images.shape} {images.dtype}")
    return images


def _labels(value, n_images: int, name: str, num_classes: int) -> np.ndarray:
    if isinstance(value, _ArrayRecipe):
        labels = value.resolve(name, MAX_BATCH_IMAGES)
    elif isinstance(value, list):
        # Only a flat list of ints: a nested list shared through the pickle memo
        # costs nothing to load and exponential time to convert.
        if len(value) != n_images:
            raise UnsafePickleError(f"{name}: need one label per image ({n_images} images, {len(value)} labels)")
        if not all(type(label) is int for label in value):
            raise UnsafePickleError(f"{name}: labels must be a flat list of integers")
        labels = np.array([min(max(label, -1), num_classes) for label in value])  # out of range stays out
    else:
        raise UnsafePickleError(f"{name}: labels must be a list of integers; found {type(value).__name__}")
    if labels.ndim != 1 or len(labels) != n_images:
        raise UnsafePickleError(f"{name}: need one label per image ({n_images} images, labels of shape "
                                f"{labels.shape})")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UnsafePickleError(f"{name}: labels must be integers in [0, {num_classes - 1}]")
    return labels.astype(np.int64)


def parse_label_names(data: bytes) -> list[str]:
    meta = restricted_loads(data, "batches.meta")
    if not isinstance(meta, dict):
        raise UnsafePickleError("batches.meta: expected a dict")
    names = _field(meta, "label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UnsafePickleError("batches.meta: label_names must be a list of strings")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
