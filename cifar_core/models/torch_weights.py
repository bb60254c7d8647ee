"""Reading a PyTorch state dict without PyTorch, and without trusting pickle.

Supports both serialization formats torch.save has used: the legacy stream
(magic number, header pickles, the state-dict pickle, the storage key list,
then raw storages) and the zip format (archive/data.pkl + archive/data/<key>).
The unpickler resolves only the handful of globals a state dict needs.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..safeio import ZIP_READ_ERRORS, size_text

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# The backbones this studio reads hold 20-50 MB of weights; more is not one of them, and every size a
# file declares is checked against this (and against the bytes really there) before anything is read.
MAX_STATE_DICT_BYTES = 512 << 20
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass
class _StorageType:
    dtype: type


@dataclass
class _StorageRef:
    key: str
    dtype: type
    numel: int


@dataclass
class _LazyTensor:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise ModelFileError(f"state dict asks for {module}.{name}; refusing to load it")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" \
                or not isinstance(pid[1], _StorageType):
            raise ModelFileError(f"unexpected persistent id in state dict: {pid!r:.80}")
        return _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))


def load_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """name -> numpy array, for a file written by torch.save(model.state_dict())."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except ModelFileError:
        raise
    except (*ZIP_READ_ERRORS, pickle.UnpicklingError, struct.error, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path.name}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from None


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as handle:
        if _plain_load(handle) != LEGACY_MAGIC:
            raise ModelFileError(f"{path.name}: not a PyTorch file (bad magic number)")
        _plain_load(handle)  # protocol version
        info = _plain_load(handle)
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise ModelFileError(f"{path.name}: big-endian files are not supported")
        tree = _state_tree(_StateDictUnpickler(handle).load())
        keys = _plain_load(handle)
        file_size = min(os.fstat(handle.fileno()).st_size, MAX_STATE_DICT_BYTES)
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", handle.read(8))
            ref = _find_ref(tree, key)
            n_bytes = count * np.dtype(ref.dtype).itemsize
            if not 0 <= n_bytes <= file_size - handle.tell():  # a read of a declared size allocates it first
                raise ModelFileError(f"{path.name}: storage {key!r} declares {count} values, more than the file "
                                     "holds")
            storages[key] = _storage(ref, handle.read(n_bytes))
    return _materialise(tree, storages)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickle_name = next((n for n in names if n.endswith("/data.pkl")), None)
        if pickle_name is None:
            raise ModelFileError(f"{path.name}: a zip without the state dict's data.pkl")
        if sum(info.file_size for info in archive.infolist()) > MAX_STATE_DICT_BYTES:
            raise ModelFileError(f"{path.name}: more than {size_text(MAX_STATE_DICT_BYTES)} once unpacked")
        prefix = pickle_name[: -len("data.pkl")]
        tree = _state_tree(_StateDictUnpickler(io.BytesIO(archive.read(pickle_name))).load())
        storages = {}
        for ref in _iter_refs(tree):
            storages[ref.key] = _storage(ref, archive.read(f"{prefix}data/{ref.key}"))
    return _materialise(tree, storages)


def _storage(ref: _StorageRef, data: bytes) -> np.ndarray:
    """A storage's values, as many as the pickle said it holds."""
    values = np.frombuffer(data, dtype=ref.dtype)
    if len(values) != ref.numel:
        raise ModelFileError(f"storage {ref.key!r} holds {len(values)} values where its tensors say {ref.numel}")
    return values


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise ModelFileError(f"file header asks for {module}.{name}; refusing to load it")


def _plain_load(handle):
    return _PlainUnpickler(handle).load()


def _iter_refs(tree):
    for value in tree.values():
        if isinstance(value, _LazyTensor):
            yield value.storage


def _find_ref(tree, key) -> _StorageRef:
    for ref in _iter_refs(tree):
        if ref.key == key:
            return ref
    raise ModelFileError(f"storage {key!r} is not used by any tensor")


def _state_tree(tree):
    """The unpickled object, if it is a state dict's {name: tensor} mapping."""
    if not isinstance(tree, dict):
        raise ModelFileError("file does not hold a state dict")
    return tree


def _materialise(tree, storages) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in tree.items():
        if not isinstance(value, _LazyTensor):
            continue
        storage = storages[value.storage.key]
        itemsize = storage.itemsize
        needed = value.offset + sum((s - 1) * st for s, st in zip(value.size, value.stride, strict=True)) + 1
        if value.size and min(value.size) == 0:
            arrays[name] = np.zeros(value.size, storage.dtype)
            continue
        if needed > len(storage):
            raise ModelFileError(f"tensor {name!r} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(storage[value.offset:], shape=value.size,
                                               strides=tuple(st * itemsize for st in value.stride))
        arrays[name] = np.array(view)  # copy: detach from the file buffer
    return arrays
