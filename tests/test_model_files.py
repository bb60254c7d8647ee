"""Model files the project did not write: checked before Keras sees them, loaded in safe mode."""
import json
import zipfile

import keras
import numpy as np
import pytest

from cifar_core.errors import ModelFileError
from cifar_core.models import build_model
from cifar_core.models.loading import check_model_file, load_model_file


def _lambda_model(sentinel):
    inputs = keras.Input((32, 32, 3))
    target = str(sentinel)
    # If this layer's code ever ran, the sentinel file would exist.
    x = keras.layers.Lambda(lambda t: (open(target, "w").close(), t)[1])(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_lambda_model_is_refused_and_its_code_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    model = _lambda_model(sentinel)
    path = tmp_path / "model.keras"
    model.save(path)
    sentinel.unlink(missing_ok=True)  # building the model ran the lambda once; start clean
    with pytest.raises(ModelFileError, match="Lambda"):
        load_model_file(path)
    assert not sentinel.exists()
    # The control: an unchecked, unsafe load really would run the payload.
    unsafe = keras.models.load_model(path, safe_mode=False)
    unsafe(np.zeros((1, 32, 32, 3), "float32"))
    assert sentinel.exists()


def _rewrite(source, target, mutate):
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for name in original.namelist():
            data = original.read(name)
            if name == "config.json":
                data = json.dumps(mutate(json.loads(data))).encode()
            copy.writestr(name, data)
        return copy


def test_custom_objects_extra_members_and_non_zip_are_refused(tmp_path):
    path = tmp_path / "ok.keras"
    build_model("demo").save(path)
    model, size = load_model_file(path, expected_classes=10)
    assert size == 32

    def register_custom(config):
        config["config"]["layers"][2]["registered_name"] = "evil>Thing"
        return config

    custom = tmp_path / "custom.keras"
    _rewrite(path, custom, register_custom)
    with pytest.raises(ModelFileError, match="refusing"):
        check_model_file(custom)

    extra = tmp_path / "extra.keras"
    _rewrite(path, extra, lambda c: c)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("assets/payload.py", "import os")
    with pytest.raises(ModelFileError, match="unexpected contents"):
        check_model_file(extra)

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a zip"):
        check_model_file(garbage)


def test_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "model.keras"
    build_model("demo", num_classes=7).save(path)
    with pytest.raises(ModelFileError, match="expected 10 class outputs"):
        load_model_file(path, expected_classes=10)
    inputs = keras.Input((16,))
    flat = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    flat.save(tmp_path / "flat.keras")
    with pytest.raises(ModelFileError, match="square RGB image input"):
        load_model_file(tmp_path / "flat.keras")
