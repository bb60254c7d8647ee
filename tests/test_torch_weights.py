"""The PyTorch state-dict reader: a damaged or foreign zip is one ModelFileError, never a crash."""
import pickle
import zipfile

import pytest
from helpers import damage_deflate

from cifar_core.errors import ModelFileError
from cifar_core.models.torch_weights import load_state_dict


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
