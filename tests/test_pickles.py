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
