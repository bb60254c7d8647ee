"""Loading a saved .keras model that may not be ours, safely.

Before Keras sees the file we check the zip: only the members Keras writes,
stored or deflated and unencrypted, bounded sizes, and a config whose every
object is a known built-in Keras class (no Lambda, no custom or registered
objects) with bounded sizes: every width, kernel, input and resize is capped,
and the weights the config declares are counted before Keras allocates them.
Then Keras loads it with safe_mode=True and we check the input/output shapes
and the size of every activation before the model sees an image.

A training checkpoint (a run's checkpoint/epoch-*.keras, loaded to resume) gets
the same bounds, with the training objects a checkpoint holds also allowed:
Keras' optimizers, losses and metrics, and the classes this package registers
(its fused BatchNorm, schedules and optimizer), a registered layer counted as
the built-in layer it extends.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

from ..config import MAX_INPUT_SIZE
from ..errors import CifarError, ModelFileError, one_line
from ..safeio import ZIP_READ_ERRORS, parse_json

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
# Sizes a layer config may declare. Every model here is far inside them
# (the widest layer has 1280 channels, the biggest input 224 px).
LAYER_INT_LIMITS = {
    "units": 8192, "filters": 8192, "kernel_size": 64, "pool_size": 64, "strides": 64, "dilation_rate": 64,
    "depth_multiplier": 64, "height": MAX_INPUT_SIZE, "width": MAX_INPUT_SIZE, "padding": 64,
    "batch_shape": MAX_INPUT_SIZE, "target_shape": 1 << 16, "cropping": 64,
}
MAX_PARAMS = 64_000_000  # about 256 MB of float32 weights
MAX_ACTIVATION_VALUES = 16_000_000  # one layer's output for one image: 64 MB of float32
WEIGHTED_LAYERS = frozenset({"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization",
                             "LayerNormalization", "Normalization"})
ALLOWED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
ALLOWED_OTHER = {
    "keras": frozenset({"DTypePolicy", "FloatDTypePolicy", "Functional", "Sequential", "Model"}),
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.models": frozenset({"Functional", "Sequential"}),
    "keras.initializers": None,  # any built-in initializer
    "keras.regularizers": None,
    "keras.constraints": None,
}


# A checkpoint's objects beyond a model file's: built-in Keras classes (registered or custom ones are refused).
CHECKPOINT_OTHER = {**ALLOWED_OTHER, "keras.optimizers": None, "keras.optimizers.schedules": None,
                    "keras.losses": None, "keras.metrics": None}
REGISTERED_PACKAGE = "cifar_core"


def check_model_file(path: Path | str) -> dict:
    """Validate a .keras archive without executing anything; returns its config."""
    return _check_archive(Path(path), _check_class)


def check_checkpoint_file(path: Path | str) -> dict:
    """check_model_file for a training checkpoint: its optimizer, loss, metrics and this package's
    registered classes are allowed too, and bounded like every other layer."""
    return _check_archive(Path(path), _check_checkpoint_class)


def _check_archive(path: Path, check_class) -> dict:
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            _check_members(infos, path.name)
            # zipfile stops at the declared size (capped above) and checks the CRC.
            text = archive.read(infos["config.json"])
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{path.name}: not a readable .keras file ({one_line(exc)})") from None
    except (*ZIP_READ_ERRORS, RuntimeError) as exc:
        raise ModelFileError(f"{path.name}: unreadable model file ({type(exc).__name__}: {one_line(exc)})") from None
    config = parse_json(text, f"{path.name}: config.json", ModelFileError)
    _check_objects(config, path.name, check_class)
    return config


def _check_members(infos: dict[str, zipfile.ZipInfo], name: str) -> None:
    unexpected = sorted(set(infos) - ALLOWED_MEMBERS)
    if unexpected or "config.json" not in infos:
        raise ModelFileError(f"{name}: unexpected contents {unexpected or '(no config.json)'}")
    for info in infos.values():
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{name}: {info.filename} is encrypted")
        if info.compress_type not in ALLOWED_COMPRESSION:
            raise ModelFileError(f"{name}: {info.filename} uses compression method {info.compress_type}; "
                                 "Keras writes stored or deflated members")
    weights = infos.get("model.weights.h5")
    if infos["config.json"].file_size > MAX_CONFIG_BYTES or (weights and weights.file_size > MAX_WEIGHTS_BYTES):
        raise ModelFileError(f"{name}: model file members are implausibly large")


def _check_objects(config, name: str, check_class) -> None:
    """Every object is allowed and every layer's sizes are bounded; walked without recursion."""
    stack, params = [config], 0
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node and node.get("class_name") != "__keras_tensor__":
                layer_class = check_class(node, name)
                if layer_class:
                    params += _layer_params(node, name, layer_class)
                    if params > MAX_PARAMS:
                        raise ModelFileError(f"{name}: the layers declare more than {MAX_PARAMS:,} weights")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _ints(value) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _ints(item)]
    return []


def _shapes(input_shape) -> list[list]:
    """One shape, or the shapes of a layer with several inputs (Add, Concatenate)."""
    if isinstance(input_shape, list) and input_shape and all(isinstance(s, list) for s in input_shape):
        return input_shape
    return [input_shape] if isinstance(input_shape, list) else []


def _layer_params(node: dict, name: str, bound_as: str | None = None) -> int:
    """Check a layer's declared sizes; return the weights it will allocate, counted as the built-in
    layer `bound_as` (the layer's own class unless named) counts them."""
    class_name, config = node.get("class_name"), node.get("config")
    bound_as = bound_as or class_name
    if not isinstance(config, dict):
        raise ModelFileError(f"{name}: layer {class_name} has no config")
    for key, limit in LAYER_INT_LIMITS.items():
        for value in _ints(config.get(key)):
            if not 0 <= value <= limit:
                raise ModelFileError(f"{name}: layer {class_name} declares {key} {value}; the limit is {limit}")
    build = node.get("build_config")
    input_shape = build.get("input_shape") if isinstance(build, dict) else None
    for shape in _shapes(input_shape):
        dims = _ints(shape[1:])  # per image: the batch dimension is not part of it
        if any(not 0 <= d <= 1 << 16 for d in dims) or math.prod(dims) > MAX_ACTIVATION_VALUES:
            raise ModelFileError(f"{name}: layer {class_name} declares the input shape {input_shape}")
    if bound_as not in WEIGHTED_LAYERS:
        return 0
    if input_shape is None or not isinstance(input_shape, list) or not input_shape:
        raise ModelFileError(f"{name}: weighted layer {class_name} declares no input shape")
    channels = input_shape[-1] if type(input_shape[-1]) is int else 0
    return _declared_weights(bound_as, config, channels)


def _field(config: dict, key: str, default: int) -> int:
    """An int field of a layer config; a tuple field (kernel_size) gives its product."""
    values = _ints(config.get(key))
    return math.prod(values) if values else default


def _flag(config: dict, key: str) -> int:
    return int(bool(config.get(key, True)))


def _declared_weights(class_name: str, config: dict, channels: int) -> int:
    """The weights Keras will create for the layer, counted as Keras' count_params counts them."""
    bias = _flag(config, "use_bias")
    kernel = _field(config, "kernel_size", 1)
    multiplier = _field(config, "depth_multiplier", 1)
    units = _field(config, "filters", 0) or _field(config, "units", 0)
    if class_name == "Dense":
        return channels * units + bias * units
    if class_name == "Conv2D":
        return kernel * (channels // max(_field(config, "groups", 1), 1)) * units + bias * units
    if class_name == "DepthwiseConv2D":
        return (kernel + bias) * channels * multiplier
    if class_name == "SeparableConv2D":
        return kernel * channels * multiplier + channels * multiplier * units + bias * units
    if class_name == "Normalization":
        return 2 * channels + 1  # mean, variance and the count of adapted samples
    if class_name == "LayerNormalization":
        return channels * (_flag(config, "center") + _flag(config, "scale"))
    return channels * (2 + _flag(config, "center") + _flag(config, "scale"))  # BatchNorm: + moving mean, var


def _check_class(node: dict, name: str, others: dict = ALLOWED_OTHER) -> str | None:
    """Refuse an object not allowed; the built-in layer class to bound it as, None if no layer."""
    module, class_name = node.get("module"), node.get("class_name")
    registered = node.get("registered_name")
    if module == "keras.layers":
        allowed = class_name in ALLOWED_LAYERS
    elif module in others:
        names = others[module]
        allowed = names is None or class_name in names
    else:
        allowed = False
    if registered not in (None, class_name):
        allowed = False
    if not allowed:
        raise ModelFileError(f"{name}: refusing layer or object {module}.{class_name} "
                             "(only built-in Keras layers are loaded from files)")
    return class_name if module == "keras.layers" else None


def _check_checkpoint_class(node: dict, name: str) -> str | None:
    registered = _registered_class(node, name)
    if registered is None:
        return _check_class(node, name, CHECKPOINT_OTHER)
    import keras

    if not issubclass(registered, keras.layers.Layer):
        return None
    # A registered layer is bounded as the built-in layer it extends (fused BatchNorm as BatchNormalization);
    # one that extends none (TanhGelu) gets the size limits, and no weights are counted for it.
    return next((base.__name__ for base in registered.__mro__
                 if base.__name__ in ALLOWED_LAYERS and base.__module__.startswith("keras.")), registered.__name__)


def _registered_class(node: dict, name: str) -> type | None:
    """This package's class that the node names by its registered name, module and class agreeing."""
    registered = node.get("registered_name")
    if not isinstance(registered, str) or not registered.startswith(f"{REGISTERED_PACKAGE}>"):
        return None
    import keras

    # Registered by importing their modules, which the caller that loads a checkpoint has done.
    found = keras.saving.get_custom_objects().get(registered)
    if found is None or found.__name__ != node.get("class_name") or found.__module__ != node.get("module"):
        raise ModelFileError(f"{name}: refusing {node.get('module')}.{node.get('class_name')} registered "
                             f"as {registered!r} (not a class this version registers)")
    return found


def load_model_file(path: Path | str, expected_classes: int | None = None):
    """A checked, safe_mode load of an inference model: (model, input_size)."""
    check_model_file(path)
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except CifarError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelFileError(f"{Path(path).name}: Keras could not load it ({type(exc).__name__}: {one_line(exc)})") \
            from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[3] != 3 or input_shape[1] != input_shape[2] or input_shape[1] is None:
        raise ModelFileError(f"{Path(path).name}: expected a square RGB image input; found {input_shape}")
    if len(output_shape) != 2 or (expected_classes and output_shape[1] != expected_classes):
        raise ModelFileError(
            f"{Path(path).name}: expected {expected_classes or 'N'} class outputs; found {output_shape}")
    _check_activations(model, Path(path).name)
    return model, int(input_shape[1])


def _check_activations(model, name: str) -> None:
    """Each layer's output for one image, from the symbolic shapes: nothing is run."""
    import keras

    for layer in model.layers:
        for output in keras.tree.flatten(layer.output):
            dims = [d for d in tuple(output.shape)[1:]]
            if any(d is None for d in dims) or math.prod(dims) > MAX_ACTIVATION_VALUES:
                raise ModelFileError(f"{name}: layer {layer.name} outputs {tuple(output.shape)} per image; "
                                     f"the limit is {MAX_ACTIVATION_VALUES:,} values")

