"""CIFAR pickle batches: crafted pickles never run code; bad contents are refused."""
import os
import pickle

import numpy as np
import pytest
from helpers import write_official_batches

from cifar_core.data import load_dataset
from cifar_core.data.pickles import parse_batch, restricted_loads
from cifar_core.errors import DataSourceError, UnsafePickleError


class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_pickle_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _RunsCode(sentinel), b"labels": []}, protocol=2)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        restricted_loads(payload)
    assert not sentinel.exists()
    # The control: an ordinary unpickler would have created the sentinel.
    pickle.loads(payload)
    assert sentinel.exists()


def test_hostile_batch_inside_a_dataset_folder_is_refused(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    sentinel = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _RunsCode(sentinel)}, protocol=2))
    with pytest.raises(UnsafePickleError):
        load_dataset(folder)
    assert not sentinel.exists()


@pytest.mark.parametrize("batch,message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"\[0, 9\]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "one label per image"),
    ({b"labels": [0]}, "no 'data'"),
    ([1, 2, 3], "expected a dict"),
])
def test_wrong_shapes_types_and_labels_are_refused(batch, message):
    with pytest.raises(UnsafePickleError, match=message):
        parse_batch(pickle.dumps(batch, protocol=2))


def test_garbage_is_a_clear_error():
    with pytest.raises(DataSourceError, match="not a readable CIFAR batch"):
        parse_batch(b"\x80\x02garbage")


# --- every refusal, with its message ------------------------------------------------------

class _Array:
    """Pickles as numpy pickles an ndarray, with any state (shape, dtype, order, raw bytes)."""

    def __init__(self, *state, reconstruct=(np.ndarray, (0,), b"b")):
        self.state, self.reconstruct = state, reconstruct

    def __reduce__(self):
        if self.state:
            return np._core.multiarray._reconstruct, self.reconstruct, self.state
        return np._core.multiarray._reconstruct, self.reconstruct


class _Py2Dtype:
    """A dtype as Python 2 (the official CIFAR files) pickles it: bytes for its name and byte order."""

    def __init__(self, name=b"u1", state=(3, b"|", None, None, None, -1, -1, 0)):
        self.name, self.state = name, state

    def __reduce__(self):
        return np.dtype, (self.name, False, True), self.state


IMAGES = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)


def _batch(data=IMAGES, labels=(1, 2), **extra):
    return pickle.dumps({b"data": data, b"labels": list(labels) if isinstance(labels, tuple) else labels,
                         **extra}, protocol=2)


@pytest.mark.parametrize("data,labels,message", [
    ([1, 2], [1, 2], "batch: data must be a uint8 array of shape (N, 3072); found list"),
    (_Array(), [1, 2], "batch: an array without its shape and data"),
    (_Array(1, [2, 3072], np.dtype("u1"), False, b"x"), [1, 2], "batch: an array declares the shape [2, 3072]"),
    (_Array(1, (2, -3072), np.dtype("u1"), False, b"x"), [1, 2], "declares the shape (2, -3072)"),
    (_Array(1, (2, 3072, 1), np.dtype("u1"), False, b"x"), [1, 2], "declares the shape (2, 3072, 1)"),
    (_Array(1, (2, 3072.0), np.dtype("u1"), False, b"x"), [1, 2], "declares the shape (2, 3072.0)"),
    (_Array(1, (2, 3072), None, False, b"x"), [1, 2], "batch: an array without a dtype"),
    (_Array(1, (2, 3072), np.dtype("f4"), False, b"x"), [1, 2],
     "batch: arrays must hold integers (uint8 images, integer labels); found dtype 'f4'"),
    (_Array(1, (2, 3072), np.dtype("u1"), False, [0] * 6144), [1, 2],
     "batch: array data must be raw bytes; found list"),
    (_Array(1, (60_001, 3072), np.dtype("u1"), False, b"x"), [1, 2],
     "batch: an array declares 184323072 values; a CIFAR batch has at most 184320000"),
    (_Array(1, (2, 3072), np.dtype("u1"), False, b"x" * 6143), [1, 2],
     "batch: an array declares (2, 3072) uint8 (6144 bytes) but holds 6143 bytes"),
    (IMAGES.astype(np.int64), [1, 2], "batch: data must be uint8 of shape (N, 3072); found (2, 3072) int64"),
    (IMAGES[:, :100], [1, 2], "found (2, 100) uint8"),
    (IMAGES.reshape(-1), [1, 2], "found (6144,) uint8"),
    (IMAGES, [1], "batch: need one label per image (2 images, 1 labels)"),
    (IMAGES, [1, [2]], "batch: labels must be a flat list of integers"),
    (IMAGES, [True, False], "batch: labels must be a flat list of integers"),
    (IMAGES, [1, 10], "batch: labels must be integers in [0, 9]"),
    (IMAGES, [-1, 0], "batch: labels must be integers in [0, 9]"),
    (IMAGES, [2**70, 0], "batch: labels must be integers in [0, 9]"),
    (IMAGES, {0: 1}, "batch: labels must be a list of integers; found dict"),
    (IMAGES, np.array([[1, 2]]), "batch: need one label per image (2 images, labels of shape (1, 2))"),
    (IMAGES, np.array([1, 2, 3]), "labels of shape (3,)"),
    (IMAGES, np.array([1, 12]), "batch: labels must be integers in [0, 9]"),
])
def test_each_refusal_names_the_batch_and_the_problem(data, labels, message):
    with pytest.raises(UnsafePickleError) as caught:
        parse_batch(_batch(data, labels))
    assert str(caught.value).startswith(message) or message in str(caught.value), str(caught.value)


def test_the_name_and_class_count_come_from_the_caller():
    with pytest.raises(UnsafePickleError, match=r"^data_batch_2: labels must be integers in \[0, 2\]"):
        parse_batch(_batch(labels=(1, 3)), "data_batch_2", num_classes=3)
    x, y = parse_batch(_batch(labels=(1, 2)), "data_batch_2", num_classes=3)
    assert y.tolist() == [1, 2]


def test_python2_pickles_with_bytes_dtypes_and_byte_orders_are_read():
    images = _Array(1, (2, 3072), _Py2Dtype(), False, IMAGES.tobytes())
    labels = _Array(1, (2,), _Py2Dtype(b"i8", (3, b">", None, None, None, -1, -1, 0)), False,
                    np.array([7, 3], ">i8").tobytes())
    x, y = parse_batch(pickle.dumps({b"data": images, b"labels": labels}, protocol=2))
    np.testing.assert_array_equal(x, IMAGES.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert y.tolist() == [7, 3] and y.dtype == np.int64
    # A dtype whose state says nothing about byte order keeps the neutral one.
    short_state = _Array(1, (2, 3072), _Py2Dtype(state=(3,)), False, IMAGES.tobytes())
    assert parse_batch(pickle.dumps({b"data": short_state, b"labels": [0, 1]}, protocol=2))[1].tolist() == [0, 1]
    odd_order = _Array(1, (2, 3072), _Py2Dtype(state=(3, b"?")), False, IMAGES.tobytes())
    with pytest.raises(UnsafePickleError, match="must hold integers"):
        parse_batch(pickle.dumps({b"data": odd_order, b"labels": [0, 1]}, protocol=2))


def test_fortran_ordered_arrays_keep_their_layout():
    x, _ = parse_batch(_batch(data=np.asfortranarray(IMAGES)))
    np.testing.assert_array_equal(x, IMAGES.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))


def test_the_rebuilder_and_codec_refusals_are_named():
    with pytest.raises(UnsafePickleError, match="^pickle rebuilds an array in a way numpy never writes$"):
        parse_batch(_batch(data=_Array(reconstruct=(np.ndarray, (5,), b"b"))))
    with pytest.raises(UnsafePickleError, match="never writes"):  # an allowed global in the wrong place
        parse_batch(_batch(data=_Array(reconstruct=(np.dtype("u1"), (0,), b"b"))))
    import _codecs

    class Encoded:
        def __init__(self, *args):
            self.args = args

        def __reduce__(self):
            return _codecs.encode, self.args

    assert restricted_loads(pickle.dumps(Encoded("é", "latin-1"), protocol=2)) == "é".encode("latin1")
    assert restricted_loads(pickle.dumps(Encoded("é", "latin1"), protocol=2)) == b"\xe9"
    with pytest.raises(UnsafePickleError, match="^pickle asks for _codecs.encode with 'utf-16'; only latin1"):
        restricted_loads(pickle.dumps(Encoded("x", "utf-16"), protocol=2))
    with pytest.raises(UnsafePickleError, match="only latin1"):
        restricted_loads(pickle.dumps(Encoded(b"x", "latin1"), protocol=2))


def test_restricted_loads_names_its_input_and_reads_python2_strings_as_bytes(monkeypatch):
    assert restricted_loads(b"\x80\x02U\x05hello.") == b"hello"  # a Python 2 str: bytes, not text
    with pytest.raises(UnsafePickleError, match=r"^pickle: not a readable CIFAR batch \(UnpicklingError: "):
        restricted_loads(b"\x80\x02garbage")
    with pytest.raises(UnsafePickleError, match=r"^meta: not a readable CIFAR batch \(EOFError"):
        restricted_loads(b"\x80\x02", "meta")
    from cifar_core.data import pickles

    monkeypatch.setattr(pickles, "MAX_PICKLE_BYTES", len(pickle.dumps([1, 2], protocol=2)))
    assert restricted_loads(pickle.dumps([1, 2], protocol=2)) == [1, 2]  # exactly at the cap
    with pytest.raises(UnsafePickleError, match="^big: 14 bytes is larger than any CIFAR batch"):
        restricted_loads(pickle.dumps([1, 2, 3], protocol=2), "big")


@pytest.mark.parametrize("meta,message", [
    ([b"cat"], "batches.meta: expected a dict"),
    ({b"label_names": "cat,dog"}, "batches.meta: label_names must be a list of strings"),
    ({b"label_names": [b"cat", 3]}, "batches.meta: label_names must be a list of strings"),
    ({b"names": [b"cat"]}, "CIFAR batch has no 'label_names' entry"),
])
def test_label_names_are_refused_with_their_reason(meta, message):
    from cifar_core.data.pickles import parse_label_names

    with pytest.raises(UnsafePickleError) as caught:
        parse_label_names(pickle.dumps(meta, protocol=2))
    assert str(caught.value) == message


def test_label_names_decode_bytes_and_keep_text():
    from cifar_core.data.pickles import parse_label_names

    names = parse_label_names(pickle.dumps({b"label_names": [b"cat", "dog", b"bad\xff"]}, protocol=2))
    assert names == ["cat", "dog", "bad\ufffd"]
    assert parse_label_names(pickle.dumps({"label_names": ["a"]}, protocol=2)) == ["a"]  # str keys too


def test_names_reach_every_message():
    with pytest.raises(UnsafePickleError) as caught:
        parse_batch(b"\x80\x02", "data_batch_3")
    assert str(caught.value) == "data_batch_3: not a readable CIFAR batch (EOFError: Ran out of input)"
    with pytest.raises(UnsafePickleError) as caught:
        parse_batch(pickle.dumps([1], protocol=2), "data_batch_4")
    assert str(caught.value) == "data_batch_4: expected a dict, found list"
    with pytest.raises(UnsafePickleError, match="^test_batch: arrays must hold integers"):
        parse_batch(_batch(labels=np.array([0.0, 1.0])), "test_batch")
    from cifar_core.data.pickles import parse_label_names

    with pytest.raises(UnsafePickleError, match=r"^batches.meta: not a readable CIFAR batch \(EOFError"):
        parse_label_names(b"\x80\x02")


def test_the_image_cap_is_exact_and_an_empty_batch_is_empty(monkeypatch):
    from cifar_core.data import pickles

    empty = pickle.dumps({b"data": IMAGES[:0], b"labels": []}, protocol=4)  # protocol 2 writes b"" as a call
    x, y = parse_batch(empty)
    assert x.shape == (0, 32, 32, 3) and y.shape == (0,)
    monkeypatch.setattr(pickles, "MAX_BATCH_IMAGES", 2)
    assert parse_batch(_batch())[0].shape == (2, 32, 32, 3)  # exactly at the cap
    with pytest.raises(UnsafePickleError, match="declares 9216 values; a CIFAR batch has at most 6144"):
        parse_batch(_batch(data=np.concatenate([IMAGES, IMAGES[:1]]), labels=(1, 2, 3)))
