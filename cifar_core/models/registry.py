"""Model registry: name -> builder, the one home of each model's input size."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .transfer_specs import BACKBONES


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder_path: str  # "module:function", imported on first build (keeps listing fast)
    input_size: int
    description: str
    transfer: bool = False
    last_conv_layer: str | None = None  # for Grad-CAM
    builder_options: tuple[tuple[str, str], ...] = ()  # fixed keyword arguments of the builder

    def builder(self) -> Callable:
        import functools
        import importlib

        module, function = self.builder_path.split(":")
        build = getattr(importlib.import_module(module, __package__), function)
        return functools.partial(build, **dict(self.builder_options)) if self.builder_options else build


def _transfer_spec(backbone) -> ModelSpec:
    if backbone.keras_constructor is None:  # the EfficientNet-Lite family, built in transfer.py
        return ModelSpec(backbone.name, ".transfer:build_lite", backbone.input_size, backbone.description,
                         transfer=True, last_conv_layer=backbone.last_conv_layer,
                         builder_options=(("variant", backbone.name),))
    return ModelSpec(backbone.name, ".transfer:build_application", backbone.input_size, backbone.description,
                     transfer=True, last_conv_layer=backbone.last_conv_layer,
                     builder_options=(("backbone", backbone.name),))


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("g3", ".homebrew:build_g3", 32,
              "The original study's CNN (416,490 params), AdamW + plateau + early stopping",
              last_conv_layer="conv6"),
    ModelSpec("fastnet", ".homebrew:build_fastnet", 32,
              "airbench-style VGG net for 2 CPU cores: frozen whitening, one-cycle Muon for the conv filters, "
              "label smoothing, alternating flip", last_conv_layer="block3_act2"),
    ModelSpec("demo", ".homebrew:build_demo", 32,
              "Small CNN that learns something in about a minute, for live demos",
              last_conv_layer="relu3"),
    *(_transfer_spec(backbone) for backbone in BACKBONES),
)}


def model_names() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}") from None


def is_transfer_model(name: str) -> bool:
    spec = REGISTRY.get(name)
    return bool(spec and spec.transfer)


def build_model(name: str, input_size: int | None = None, num_classes: int = 10, precision: str = "float32",
                **options):
    """A fresh model; its layers compute in `precision` (saved with the model)."""
    from .. import backend

    spec = get_spec(name)
    size = input_size or spec.input_size
    try:
        with backend.dtype_policy(precision):
            return spec.builder()(input_shape=(size, size, 3), num_classes=num_classes, **options)
    except TypeError as exc:
        raise ConfigError(f"{name}: bad model option ({exc})") from None
