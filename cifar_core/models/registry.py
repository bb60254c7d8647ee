"""Model registry: name -> builder, the one home of each model's input size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder_path: str  # "module:function", imported on first build (keeps listing fast)
    input_size: int
    description: str
    transfer: bool = False
    last_conv_layer: str | None = None  # for Grad-CAM

    def builder(self) -> Callable:
        import importlib

        module, function = self.builder_path.split(":")
        return getattr(importlib.import_module(module, __package__), function)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("g3", ".homebrew:build_g3", 32,
              "The original study's CNN (416,490 params), AdamW + plateau + early stopping",
              last_conv_layer="conv6"),
    ModelSpec("fastnet", ".homebrew:build_fastnet", 32,
              "airbench-style VGG net for 2 CPU cores: frozen whitening, one-cycle SGD, label smoothing",
              last_conv_layer="block3_act2"),
    ModelSpec("demo", ".homebrew:build_demo", 32,
              "Small CNN that learns something in about a minute, for live demos",
              last_conv_layer="relu3"),
)}


def register(spec: ModelSpec) -> None:
    REGISTRY[spec.name] = spec


def model_names() -> list[str]:
    _load_transfer_specs()
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_transfer_specs()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}") from None


def is_transfer_model(name: str) -> bool:
    _load_transfer_specs()
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


def _load_transfer_specs() -> None:
    # Transfer specs live with the transfer code; importing them is cheap
    # (no TensorFlow), and registering late avoids an import cycle.
    try:
        from . import transfer_specs  # noqa: F401
    except ImportError:
        pass
