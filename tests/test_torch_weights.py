"""The PyTorch state-dict reader: a damaged or foreign zip is one ModelFileError, never a crash."""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
from helpers import damage_deflate

from cifar_core.errors import ModelFileError
from cifar_core.models.torch_weights import LEGACY_MAGIC, load_state_dict


def _state_dict_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_an_empty_state_dict_in_the_zip_format_is_read(tmp_path):
    import collections

    path = _state_dict_zip(tmp_path / "weights.pth",
                           {"archive/data.pkl": pickle.dumps(collections.OrderedDict(), protocol=2)})
    assert load_state_dict(path) == {}


def test_a_zip_without_the_state_dicts_pickle_is_refused_by_name(tmp_path):
    path = _state_dict_zip(tmp_path / "weights.pth", {"archive/other.txt": b"x"})
    with pytest.raises(ModelFileError, match=r"^weights.pth: a zip without the state dict's data.pkl$"):
        load_state_dict(path)


@pytest.mark.parametrize("where", ["start", "middle"])
def test_a_damaged_deflate_stream_is_an_unreadable_state_dict(tmp_path, where):
    pickled = pickle.dumps({f"layer{i}.weight": list(range(200)) for i in range(200)}, protocol=2)
    path = _state_dict_zip(tmp_path / "weights.pth", {"archive/data.pkl": pickled}, zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFileError, match=r"^weights.pth: not a readable PyTorch state dict \((error|BadZipFile): "):
        load_state_dict(damage_deflate(path, where))


# --- state dicts written as torch.save writes them, without PyTorch ----------------------------

class _StorageId:
    """A storage in the pickle: written as the persistent id torch.save gives it."""

    def __init__(self, storage_type, key: str, values: np.ndarray):
        self.storage_type, self.key, self.values = storage_type, key, values


class _Tensor:
    def __init__(self, storage: _StorageId, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageId):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.values.size)
        return None


@pytest.fixture
def torch_names(monkeypatch):
    """Stand-ins for the globals a state dict's pickle names (torch.FloatStorage, ...)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: the reader resolves this name itself")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickled(tree, pickler=_TorchPickler) -> bytes:
    buffer = io.BytesIO()
    pickler(buffer, protocol=2).dump(tree)
    return buffer.getvalue()


def _write(path, tree, storages: list[_StorageId], legacy: bool):
    if legacy:
        with open(path, "wb") as file:
            for header in (LEGACY_MAGIC, 1001, {"little_endian": True, "protocol_version": 1001}):
                pickle.dump(header, file, protocol=2)
            file.write(_pickled(tree))
            pickle.dump([storage.key for storage in storages], file, protocol=2)
            for storage in storages:
                file.write(struct.pack("<q", storage.values.size) + storage.values.tobytes())
        return path
    members = {"archive/data.pkl": _pickled(tree)}
    members.update({f"archive/data/{storage.key}": storage.values.tobytes() for storage in storages})
    return _state_dict_zip(path, members)


def _sample(torch):
    floats = _StorageId(torch.FloatStorage, "0", np.arange(12, dtype=np.float32))
    longs = _StorageId(torch.LongStorage, "1", np.array([7], dtype=np.int64))
    tree = collections.OrderedDict([
        ("conv.weight", _Tensor(floats, 0, (2, 3), (3, 1))),
        ("conv.weight_t", _Tensor(floats, 0, (3, 2), (1, 3))),  # a transposed view of the same storage
        ("bias", _Tensor(floats, 6, (6,), (1,))),  # an offset into it
        ("bn.num_batches_tracked", _Tensor(longs, 0, (), ())),
        ("empty", _Tensor(floats, 0, (0, 4), (4, 1))),
    ])
    return tree, [floats, longs]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_state_dict_reads_back_with_views_offsets_and_dtypes(tmp_path, torch_names, legacy):
    tree, storages = _sample(torch_names)
    state = load_state_dict(_write(tmp_path / "weights.pth", tree, storages, legacy))
    values = np.arange(12, dtype=np.float32)
    assert list(state) == list(tree)
    assert np.array_equal(state["conv.weight"], values[:6].reshape(2, 3))
    assert np.array_equal(state["conv.weight_t"], values[:6].reshape(2, 3).T)
    assert np.array_equal(state["bias"], values[6:]) and state["bias"].dtype == np.float32
    assert state["bn.num_batches_tracked"].dtype == np.int64 and int(state["bn.num_batches_tracked"]) == 7
    assert state["empty"].shape == (0, 4)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_tensor_past_its_storage_or_no_state_dict_is_refused(tmp_path, torch_names, legacy):
    tree, storages = _sample(torch_names)
    tree["bias"] = _Tensor(storages[0], 7, (6,), (1,))  # one value past the end
    with pytest.raises(ModelFileError, match="tensor 'bias' reaches past its storage"):
        load_state_dict(_write(tmp_path / "past.pth", tree, storages, legacy))
    with pytest.raises(ModelFileError, match="does not hold a state dict"):
        load_state_dict(_write(tmp_path / "list.pth", [1, 2], [], legacy))


def test_a_pickle_naming_any_other_global_is_refused_unrun(tmp_path, torch_names):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = _state_dict_zip(tmp_path / "evil.pth", {"archive/data.pkl": _pickled({"x": Payload()})})
    with pytest.raises(ModelFileError, match=r"asks for (posix|os)\.system; refusing to load it"):
        load_state_dict(path)


def test_legacy_headers_that_are_not_pytorch_s_are_refused(tmp_path, torch_names):
    tree, storages = _sample(torch_names)
    path = _write(tmp_path / "weights.pth", tree, storages, legacy=True)
    data = path.read_bytes()
    wrong_magic = tmp_path / "magic.pth"
    wrong_magic.write_bytes(pickle.dumps(12345, protocol=2) + data[len(pickle.dumps(LEGACY_MAGIC, protocol=2)):])
    with pytest.raises(ModelFileError, match="bad magic number"):
        load_state_dict(wrong_magic)
    big = tmp_path / "big.pth"
    with open(big, "wb") as file:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": False}):
            pickle.dump(header, file, protocol=2)
    with pytest.raises(ModelFileError, match="big-endian files are not supported"):
        load_state_dict(big)
    unused = tmp_path / "unused.pth"
    unused.write_bytes(data.replace(pickle.dumps(["0", "1"], protocol=2), pickle.dumps(["0", "9"], protocol=2)))
    with pytest.raises(ModelFileError, match="storage '9' is not used by any tensor"):
        load_state_dict(unused)


def test_a_persistent_id_unlike_a_storage_is_refused(tmp_path, torch_names):
    class OddIds(_TorchPickler):
        def persistent_id(self, obj):
            return ("module", obj.key) if isinstance(obj, _StorageId) else None

    tree, storages = _sample(torch_names)
    path = _state_dict_zip(tmp_path / "odd.pth", {"archive/data.pkl": _pickled(tree, OddIds)})
    with pytest.raises(ModelFileError, match="unexpected persistent id"):
        load_state_dict(path)


def test_the_shipped_imagenet_weights_read(tmp_path):
    from cifar_core.models.transfer import _torch_source_path

    state = load_state_dict(_torch_source_path("lite0"))
    assert len(state) > 100
    assert all(np.isfinite(array).all() for array in state.values() if array.dtype.kind == "f")
    assert any(array.ndim == 4 and array.shape[0] == 32 for array in state.values())  # the stem conv
