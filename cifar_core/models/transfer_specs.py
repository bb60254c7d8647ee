"""Registry entries and preprocessing of the transfer-learning backbones.

Kept free of TensorFlow imports so listing models stays instant. Each
backbone's preprocessing lives here and only here: (scale, offset) applied to
0..255 pixels, then optional per-channel (mean, std) standardisation.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    scale: float
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


PREPROCESSING = {
    # The Lite models were trained on (x - 127) / 128 (TF EfficientNet-Lite
    # convention), checked on real photos in tests/test_transfer.py.
    "lite0": Preprocessing(scale=1 / 128, offset=-127 / 128),
    "lite1": Preprocessing(scale=1 / 128, offset=-127 / 128),
    "lite2": Preprocessing(scale=1 / 128, offset=-127 / 128),
    # keras.applications EfficientNets normalise inside the model: raw 0..255 in.
    "efficientnetb1": Preprocessing(scale=1.0),
    "resnet101v2": Preprocessing(scale=1 / 127.5, offset=-1.0),
    "mobilenetv2": Preprocessing(scale=1 / 127.5, offset=-1.0),
    "densenet121": Preprocessing(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}



@dataclass(frozen=True)
class Backbone:
    """One transfer backbone, as plain data the registry reads at import."""
    name: str
    description: str
    last_conv_layer: str  # for Grad-CAM
    keras_constructor: str | None = None  # a keras.applications class; None: built in transfer.py
    input_size: int = 128


BACKBONES = (
    Backbone("lite0", "EfficientNet-Lite0, ImageNet weights shipped offline (converted from PyTorch)", "top_relu"),
    Backbone("lite1", "EfficientNet-Lite1 (Lite0 1.1x deeper), ImageNet weights offline (converted from PyTorch)",
             "top_relu"),
    Backbone("lite2", "EfficientNet-Lite2 (1.1x wider, 1.2x deeper), ImageNet weights offline (converted from "
             "PyTorch)", "top_relu"),
    Backbone("efficientnetb1", "Keras EfficientNetB1 (ImageNet weights when downloadable or cached)",
             "top_activation", "EfficientNetB1"),
    Backbone("resnet101v2", "Keras ResNet101V2 (ImageNet weights when downloadable or cached)", "post_relu",
             "ResNet101V2"),
    Backbone("densenet121", "Keras DenseNet121 (ImageNet weights when downloadable or cached)", "relu",
             "DenseNet121"),
    Backbone("mobilenetv2", "Keras MobileNetV2 (ImageNet weights when downloadable or cached)", "out_relu",
             "MobileNetV2"),
)
BACKBONE_BY_NAME = {backbone.name: backbone for backbone in BACKBONES}
