"""Registry entries and preprocessing of the transfer-learning backbones.

Kept free of TensorFlow imports so listing models stays instant. Each
backbone's preprocessing lives here and only here: (scale, offset) applied to
0..255 pixels, then optional per-channel (mean, std) standardisation.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import ModelSpec, register

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
    # keras.applications EfficientNets normalise inside the model: raw 0..255 in.
    "efficientnetb1": Preprocessing(scale=1.0),
    "resnet101v2": Preprocessing(scale=1 / 127.5, offset=-1.0),
    "mobilenetv2": Preprocessing(scale=1 / 127.5, offset=-1.0),
    "densenet121": Preprocessing(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}

# keras.applications backbones: (registry name, Keras constructor, last conv activation for Grad-CAM).
KERAS_BACKBONES = (
    ("efficientnetb1", "EfficientNetB1", "top_activation"),
    ("resnet101v2", "ResNet101V2", "post_relu"),
    ("densenet121", "DenseNet121", "relu"),
    ("mobilenetv2", "MobileNetV2", "out_relu"),
)

register(ModelSpec("lite0", ".transfer:build_lite0", 128,
                   "EfficientNet-Lite0, ImageNet weights shipped offline (converted from PyTorch)",
                   transfer=True, last_conv_layer="top_relu"))
for _name, _constructor, _last_conv in KERAS_BACKBONES:
    register(ModelSpec(_name, f".transfer:build_{_name}", 128,
                       f"Keras {_constructor} (ImageNet weights when downloadable or cached)",
                       transfer=True, last_conv_layer=_last_conv))
