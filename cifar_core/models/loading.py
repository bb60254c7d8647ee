"""Loading a saved .keras model that may not be ours, safely.

Before Keras sees the file we check the zip: only the members Keras writes,
bounded sizes, and a config whose every object is a known built-in Keras
class (no Lambda, no custom or registered objects). Then Keras loads it with
safe_mode=True and we check the input/output shapes.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..errors import ModelFileError

ALLOWED_MEMBERS = {"config.json", "metadata.json", "model.weights.h5"}
MAX_CONFIG_BYTES = 20 * 1024 * 1024
MAX_WEIGHTS_BYTES = 1024 * 1024 * 1024
ALLOWED_LAYERS = frozenset({
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization",
    "LayerNormalization", "Dropout", "SpatialDropout2D", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Activation", "ReLU", "Softmax", "Rescaling",
    "Normalization", "Resizing", "Add", "Multiply", "Concatenate", "Reshape", "Flatten", "ZeroPadding2D",
    "Identity", "CenterCrop", "Subtract", "Average", "Maximum",
})
ALLOWED_OTHER = {
    "keras": frozenset({"DTypePolicy", "FloatDTypePolicy", "Functional", "Sequential", "Model"}),
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.models": frozenset({"Functional", "Sequential"}),
    "keras.initializers": None,  # any built-in initializer
    "keras.regularizers": None,
    "keras.constraints": None,
}


def check_model_file(path: Path | str) -> dict:
    """Validate a .keras archive without executing anything; returns its config."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            unexpected = sorted(set(infos) - ALLOWED_MEMBERS)
            if unexpected or "config.json" not in infos:
                raise ModelFileError(f"{path.name}: unexpected contents {unexpected or '(no config.json)'}")
            if infos["config.json"].file_size > MAX_CONFIG_BYTES or \
                    infos.get("model.weights.h5", infos["config.json"]).file_size > MAX_WEIGHTS_BYTES:
                raise ModelFileError(f"{path.name}: model file members are implausibly large")
            config = json.loads(archive.read("config.json"))
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path.name}: not a Keras .keras file (not a zip archive)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{path.name}: config.json is not valid JSON") from None
    _check_objects(config, path.name)
    return config


def _check_objects(node, name: str) -> None:
    if isinstance(node, dict):
        if "class_name" in node and node.get("class_name") != "__keras_tensor__":
            _check_class(node, name)
        for value in node.values():
            _check_objects(value, name)
    elif isinstance(node, list):
        for value in node:
            _check_objects(value, name)


def _check_class(node: dict, name: str) -> None:
    module, class_name = node.get("module"), node.get("class_name")
    registered = node.get("registered_name")
    if module == "keras.layers":
        allowed = class_name in ALLOWED_LAYERS
    elif module in ALLOWED_OTHER:
        names = ALLOWED_OTHER[module]
        allowed = names is None or class_name in names
    else:
        allowed = False
    if registered not in (None, class_name):
        allowed = False
    if not allowed:
        raise ModelFileError(f"{name}: refusing layer or object {module}.{class_name} "
                             "(only built-in Keras layers are loaded from files)")


def load_model_file(path: Path | str, expected_classes: int | None = None):
    """A checked, safe_mode load of an inference model: (model, input_size)."""
    check_model_file(path)
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelFileError(f"{Path(path).name}: Keras could not load it ({type(exc).__name__}: {exc})") from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[3] != 3 or input_shape[1] != input_shape[2] or input_shape[1] is None:
        raise ModelFileError(f"{Path(path).name}: expected a square RGB image input; found {input_shape}")
    if len(output_shape) != 2 or (expected_classes and output_shape[1] != expected_classes):
        raise ModelFileError(f"{Path(path).name}: expected {expected_classes or 'N'} class outputs; found {output_shape}")
    return model, int(input_shape[1])
