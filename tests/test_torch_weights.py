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


def _write(path, tree, storages: list[_StorageId], legacy: bool, info=None, counts=None):
    """A state dict file in either format; a legacy one with this system-info header and these
    declared storage sizes where given (a hostile file's)."""
    if legacy:
        info = {"little_endian": True, "protocol_version": 1001} if info is None else info
        with open(path, "wb") as file:
            for header in (LEGACY_MAGIC, 1001, info):
                pickle.dump(header, file, protocol=2)
            file.write(_pickled(tree))
            pickle.dump([storage.key for storage in storages], file, protocol=2)
            for position, storage in enumerate(storages):
                count = storage.values.size if counts is None else counts[position]
                file.write(struct.pack("<q", count) + storage.values.tobytes())
        return path
    members = {"archive/data.pkl": _pickled(tree)}
    members.update({f"archive/data/{storage.key}": storage.values.tobytes() for storage in storages})
    return _state_dict_zip(path, members)


def _sample(torch):
    floats = _StorageId(torch.FloatStorage, "0", np.arange(12, dtype=np.float32))
    longs = _StorageId(torch.LongStorage, "1", np.array([7], dtype=np.int64))
    no_values = _StorageId(torch.FloatStorage, "2", np.zeros(0, dtype=np.float32))
    tree = collections.OrderedDict([
        ("_version", 2),  # not a tensor: left out
        ("nothing", _Tensor(floats, 0, (4, 0), (1, 1))),
        ("conv.weight", _Tensor(floats, 0, (2, 3), (3, 1))),
        ("row", _Tensor(floats, 3, (1, 3), (3, 1))),
        ("conv.weight_t", _Tensor(floats, 0, (3, 2), (1, 3))),  # a transposed view of the same storage
        ("bias", _Tensor(floats, 6, (6,), (1,))),  # an offset into it
        ("bn.num_batches_tracked", _Tensor(longs, 0, (), ())),
        ("empty", _Tensor(floats, 0, (0, 4), (4, 1))),
        ("void", _Tensor(no_values, 0, (0,), (1,))),  # an empty storage of its own
    ])
    return tree, [floats, longs, no_values]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_state_dict_reads_back_with_views_offsets_and_dtypes(tmp_path, torch_names, legacy):
    tree, storages = _sample(torch_names)
    state = load_state_dict(_write(tmp_path / "weights.pth", tree, storages, legacy))
    values = np.arange(12, dtype=np.float32)
    assert list(state) == [name for name in tree if name != "_version"]
    assert np.array_equal(state["conv.weight"], values[:6].reshape(2, 3))
    assert np.array_equal(state["row"], values[3:6].reshape(1, 3))
    assert state["nothing"].shape == (4, 0) and state["nothing"].dtype == np.float32
    assert np.array_equal(state["conv.weight_t"], values[:6].reshape(2, 3).T)
    assert np.array_equal(state["bias"], values[6:]) and state["bias"].dtype == np.float32
    assert state["bn.num_batches_tracked"].dtype == np.int64 and int(state["bn.num_batches_tracked"]) == 7
    assert state["empty"].shape == (0, 4) and state["void"].shape == (0,)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_tensor_past_its_storage_or_no_state_dict_is_refused(tmp_path, torch_names, legacy):
    tree, storages = _sample(torch_names)
    tree["bias"] = _Tensor(storages[0], 7, (6,), (1,))  # one value past the end
    with pytest.raises(ModelFileError, match="tensor 'bias' reaches past its storage"):
        load_state_dict(_write(tmp_path / "past.pth", tree, storages, legacy))
    tree["bias"] = _Tensor(storages[0], 7, (2, 3), (3, 1))  # strided: 7 + 1 x 3 + 2 x 1 = index 12
    with pytest.raises(ModelFileError, match="tensor 'bias' reaches past its storage"):
        load_state_dict(_write(tmp_path / "strided.pth", tree, storages, legacy))
    with pytest.raises(ModelFileError, match="^file does not hold a state dict$"):
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
    global_in_header = tmp_path / "global.pth"  # a header pickle may name no global at all, not even a harmless one
    global_in_header.write_bytes(pickle.dumps(len, protocol=2) + data)
    with pytest.raises(ModelFileError, match=r"file header asks for (__builtin__|builtins)\.len; refusing to load it"):
        load_state_dict(global_in_header)
    big = tmp_path / "big.pth"
    with open(big, "wb") as file:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": False}):
            pickle.dump(header, file, protocol=2)
    with pytest.raises(ModelFileError, match="big-endian files are not supported"):
        load_state_dict(big)
    unused = tmp_path / "unused.pth"
    keys = [storage.key for storage in storages]
    unused.write_bytes(data.replace(pickle.dumps(keys, protocol=2), pickle.dumps([*keys[:-1], "9"], protocol=2)))
    with pytest.raises(ModelFileError, match="storage '9' is not used by any tensor"):
        load_state_dict(unused)


def test_the_first_format_s_tensor_name_and_an_archive_folder_of_any_name_read(tmp_path, torch_names):
    # torch.save names the zip's folder after the file; the first serialization named _rebuild_tensor.
    class FirstFormatTensor(_Tensor):
        def __reduce__(self):
            return sys.modules["torch._utils"]._rebuild_tensor, (self.storage, self.offset, self.size, self.stride)

    def _rebuild_tensor(*args):
        raise AssertionError("never called")

    _rebuild_tensor.__module__, _rebuild_tensor.__qualname__ = "torch._utils", "_rebuild_tensor"
    sys.modules["torch._utils"]._rebuild_tensor = _rebuild_tensor
    floats = _StorageId(torch_names.FloatStorage, "0", np.arange(4, dtype=np.float32))
    members = {"lite0_weights/data.pkl": _pickled({"w": FirstFormatTensor(floats, 1, (3,), (1,))}),
               "lite0_weights/data/0": floats.values.tobytes()}
    state = load_state_dict(_state_dict_zip(tmp_path / "lite0_weights.pth", members))
    assert np.array_equal(state["w"], [1.0, 2.0, 3.0])


def test_a_storage_of_another_size_than_its_pickle_says_is_refused(tmp_path, torch_names):
    floats = _StorageId(torch_names.FloatStorage, "0", np.arange(4, dtype=np.float32))
    members = {"archive/data.pkl": _pickled({"w": _Tensor(floats, 0, (2,), (1,))}),
               "archive/data/0": np.arange(3, dtype=np.float32).tobytes()}
    with pytest.raises(ModelFileError, match="storage '0' holds 3 values where its tensors say 4"):
        load_state_dict(_state_dict_zip(tmp_path / "short.pth", members))


@pytest.mark.parametrize("pid", [("storage", "FloatStorage", "0", "cpu", 4), ("storage", "STORAGE", "0"),
                                 ["storage", "STORAGE", "0", "cpu", 4], ("module", "STORAGE", "0", "cpu", 4)],
                         ids=["a string for the type", "too short", "a list", "not a storage"])
def test_a_persistent_id_unlike_a_storage_s_is_refused(tmp_path, torch_names, pid):
    class Ids(_TorchPickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageId):
                return type(pid)(obj.storage_type if part == "STORAGE" else part for part in pid)
            return None

    floats = _StorageId(torch_names.FloatStorage, "0", np.arange(4, dtype=np.float32))
    path = _state_dict_zip(tmp_path / "odd.pth", {"archive/data.pkl": _pickled({"w": _Tensor(floats, 0, (4,), (1,))},
                                                                               Ids)})
    with pytest.raises(ModelFileError, match="unexpected persistent id"):
        load_state_dict(path)


def test_a_storage_type_from_outside_torch_is_refused(tmp_path, torch_names, monkeypatch):
    lookalike = types.ModuleType("lookalike")
    lookalike.FloatStorage = type("FloatStorage", (), {"__module__": "lookalike"})
    monkeypatch.setitem(sys.modules, "lookalike", lookalike)
    floats = _StorageId(lookalike.FloatStorage, "0", np.arange(4, dtype=np.float32))
    path = _state_dict_zip(tmp_path / "odd.pth", {"archive/data.pkl": _pickled({"w": _Tensor(floats, 0, (4,), (1,))}),
                                                  "archive/data/0": floats.values.tobytes()})
    with pytest.raises(ModelFileError, match="asks for lookalike.FloatStorage; refusing to load it"):
        load_state_dict(path)


def test_a_legacy_header_that_does_not_say_its_byte_order_is_little_endian(tmp_path, torch_names):
    tree, storages = _sample(torch_names)
    state = load_state_dict(_write(tmp_path / "weights.pth", tree, storages, legacy=True, info={"type_sizes": {}}))
    assert np.array_equal(state["bias"], np.arange(6, 12, dtype=np.float32))


@pytest.mark.parametrize("counts, key", [([2 ** 40, 1, 0], "0"), ([-1, 1, 0], "0"), ([12, 1, 1], "2")],
                         ids=["4 TiB", "negative", "one value past the end"])
def test_a_storage_declaring_more_than_the_file_holds_is_refused_before_it_is_read(tmp_path, torch_names,
                                                                                   counts, key):
    # A read of a declared size allocates it first: 2**40 floats would be 4 TiB.
    import tracemalloc

    tree, storages = _sample(torch_names)
    path = _write(tmp_path / "weights.pth", tree, storages, legacy=True, counts=counts)
    declared = counts[int(key)]
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=f"storage '{key}' declares {declared} values, more than the file "
                                                 "holds"):
            load_state_dict(path)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_a_zip_unpacking_to_more_than_a_backbone_holds_is_refused_unread(tmp_path, torch_names, monkeypatch):
    from cifar_core.models import torch_weights

    tree, storages = _sample(torch_names)
    path = _write(tmp_path / "weights.pth", tree, storages, legacy=False)
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    monkeypatch.setattr(torch_weights, "MAX_STATE_DICT_BYTES", unpacked)
    load_state_dict(path)  # at the limit: read
    monkeypatch.setattr(torch_weights, "MAX_STATE_DICT_BYTES", 100)  # its members declare more than that
    monkeypatch.setattr(torch_weights.zipfile.ZipFile, "read", lambda *a: pytest.fail("a member was read"))
    with pytest.raises(ModelFileError, match="weights.pth: more than 100 bytes once unpacked"):
        load_state_dict(path)


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
