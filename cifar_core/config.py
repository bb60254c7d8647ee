"""Training configuration: a frozen dataclass with a JSON round trip.

Recipes are small hyperparameter tables per model (airbench style); a
TrainConfig is a recipe plus the user's overrides, saved with every run.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .safeio import parse_json

OPTIMIZERS = ("adamw", "adam", "sgd", "muon")
SCHEDULES = ("constant", "plateau", "onecycle", "cosine")
# "altflip": each image mirrored in every other epoch, from a seeded first-epoch coin
# (airbench's alternating flip): every image is seen both ways within two epochs,
# where random flips show half of them one way only.
AUGMENTATIONS = ("flip", "altflip", "translate", "crop", "rotate", "zoom", "contrast", "cutout")
# mixed_bfloat16: bf16 compute, float32 weights. Pays off where the CPU has
# bf16 instructions (AVX512_BF16/AMX) and the net is dense convolutions;
# depthwise-heavy nets (Lite0) measured slower, see BENCHMARKS.md.
# auto: whichever of the two trains faster here, by a short probe (training/precision.py);
# a run's saved config holds the precision chosen, never "auto".
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
# tf.distribute for homebrew models (training/distributed.py): batch_size is the global batch.
DISTRIBUTES = ("none", "mirrored", "multi-worker")
# The largest image side the studio handles anywhere: a model's input, a stored dataset,
# a resize declared in a model file (every model here is at most 224 px).
MAX_INPUT_SIZE = 512


@dataclass(frozen=True)
class TrainConfig:
    model: str = "g3"
    data: str | None = None
    input_size: int | None = None  # the model's input side in pixels; made the model's default when None
    n_epochs: int = 30
    batch_size: int = 128
    limit: int | None = None  # train on a seeded subset of this many images
    val_fraction: float = 0.1
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    # muon: conv kernels step by learning_rate * muon_scale of their norm (training/optimizers.py)
    muon_scale: float = 0.2
    schedule: str = "plateau"
    warmup_fraction: float = 0.2  # onecycle: share of steps spent rising
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    early_stopping_patience: int | None = 8
    label_smoothing: float = 0.0
    class_weights: bool = False
    ema_momentum: float | None = None
    augmentations: tuple[str, ...] = ("flip", "translate")
    translate_fraction: float = 0.125
    rotate_fraction: float = 0.05
    zoom_fraction: float = 0.1
    cutout_size: int = 12  # side of the erased square, in pixels of the training input
    tta: bool = True
    random_state: int = 0
    precision: str = "float32"
    distribute: str = "none"
    model_options: dict[str, Any] = field(default_factory=dict)
    # Transfer models only: a second stage that unfreezes the top of the backbone.
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-4
    fine_tune_layers: int = 0
    # Transfer models only, progressive resizing: the head's features and the first low_res_epochs
    # fine-tune epochs at low_res_size px (a step costs about the square of the side), the rest of
    # fine-tuning at input_size, the size the model is tested and served at (BENCHMARKS.md).
    low_res_size: int | None = None
    low_res_epochs: int = 0
    # Distillation, homebrew models only: a finished run (its folder's name among the studio's runs,
    # or a path) whose flip-TTA probabilities on the training images make up teacher_weight of
    # each training target, the one-hot label the rest (training/distill.py).
    teacher: str | None = None
    teacher_weight: float = 0.5

    def __post_init__(self):
        if self.input_size is None and isinstance(self.model, str):
            object.__setattr__(self, "input_size", _default_input_size(self.model))
        if isinstance(self.augmentations, (list, tuple)):
            object.__setattr__(self, "augmentations", tuple(self.augmentations))
        for name, kind in FIELD_KINDS.items():
            _check_kind(name, getattr(self, name), kind)
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(self.distribute in DISTRIBUTES, "distribute", self.distribute, f"one of {DISTRIBUTES}")
        unknown = sorted(set(self.augmentations) - set(AUGMENTATIONS))
        _check(not unknown, "augmentations", unknown, f"a subset of {AUGMENTATIONS}")
        _check(not {"flip", "altflip"} <= set(self.augmentations), "augmentations", list(self.augmentations),
               "at most one of flip and altflip")
        for name in RANGES:
            _check_range(name, getattr(self, name))
        _check(bool(self.model) and len(self.model) <= 64, "model", self.model, "a registry name")
        _check_low_res(self)
        _check(self.data is None or 0 < len(self.data) <= 4096, "data", self.data, "a source or path")
        _check(self.teacher is None or 0 < len(self.teacher) <= 4096, "teacher", self.teacher,
               "a run's folder name or path")
        _check(_plain_json(self.model_options), "model_options", self.model_options,
               "an object of names to numbers, strings, booleans or short lists of them")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augmentations"] = list(self.augmentations)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        if "image_size" in data and "input_size" not in data:  # configs saved before the rename
            data = {("input_size" if key == "image_size" else key): value for key, value in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(repr(key) for key in set(data) - known)  # repr: a non-string key sorts too
        if unknown:
            raise ConfigError(f"unknown config keys: [{', '.join(unknown)}]")
        return cls(**data)  # every key a field's name; __post_init__ checks each value's type first

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(parse_json(text, "config", ConfigError))


def _default_input_size(model: str) -> int | None:
    """The registry's input size for a known model; None for a name the registry lacks
    (training refuses it with the list of models)."""
    from .models.registry import REGISTRY

    spec = REGISTRY.get(model)
    return spec.input_size if spec else None


def _check(ok: bool, name: str, received: Any, expected: str) -> None:
    if not ok:
        text = repr(received)
        raise ConfigError(f"{name} must be {expected}; received {text if len(text) <= 80 else text[:77] + '...'}")


# The JSON type of every field, read from its annotation; "?" marks one that may be null. A
# float field takes an int (JSON writes 1.0 as 1) but never a bool, a string or a non-finite number.
_ANNOTATION_KINDS = {"str": "str", "str | None": "str?", "int": "int", "int | None": "int?", "float": "float",
                     "float | None": "float?", "bool": "bool", "tuple[str, ...]": "tuple", "dict[str, Any]": "dict"}
FIELD_KINDS = {f.name: _ANNOTATION_KINDS[f.type] for f in fields(TrainConfig)}
_KIND_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float) and math.isfinite(v),
    "bool": lambda v: type(v) is bool,
    "tuple": lambda v: isinstance(v, tuple) and all(isinstance(item, str) for item in v),
    "dict": lambda v: isinstance(v, dict),
}
_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a finite number", "bool": "true or false",
               "tuple": "a list of names", "dict": "an object"}


def _check_kind(name: str, value: Any, kind: str) -> None:
    optional = kind.endswith("?")
    kind = kind.removesuffix("?")
    if value is None and optional:
        return
    _check(_KIND_CHECKS[kind](value), name, value, _KIND_NAMES[kind] + (" or null" if optional else ""))


# Ranges after the types, as data: (low, high, ends), where ends says whether each end
# is included ("[]", "[)", "(]", "()"). The message shows the interval itself.
RANGES = {
    "n_epochs": (1, 10_000, "[]"), "batch_size": (1, 8192, "[]"), "limit": (2, 10_000_000, "[]"),
    "input_size": (16, MAX_INPUT_SIZE, "[]"), "val_fraction": (0.0, 0.9, "[)"), "learning_rate": (0.0, 10.0, "(]"),
    "fine_tune_learning_rate": (0.0, 10.0, "(]"), "weight_decay": (0.0, 1.0, "[]"), "momentum": (0.0, 1.0, "[)"),
    "muon_scale": (0.0, 10.0, "(]"), "warmup_fraction": (0.0, 1.0, "[]"), "plateau_patience": (1, 1000, "[]"),
    "plateau_factor": (0.0, 1.0, "()"), "early_stopping_patience": (1, 1000, "[]"),
    "label_smoothing": (0.0, 1.0, "[)"), "ema_momentum": (0.0, 1.0, "()"), "translate_fraction": (0.0, 0.5, "[]"),
    "rotate_fraction": (0.0, 0.5, "[]"), "zoom_fraction": (0.0, 1.0, "[)"), "cutout_size": (1, MAX_INPUT_SIZE, "[]"),
    "random_state": (0, 2**32, "[)"), "fine_tune_epochs": (0, 10_000, "[]"), "fine_tune_layers": (0, 100_000, "[]"),
    "low_res_size": (16, MAX_INPUT_SIZE, "[]"), "low_res_epochs": (0, 10_000, "[]"),
    "teacher_weight": (0.0, 1.0, "(]"),
}


def fine_tune_plan(config: TrainConfig) -> list[tuple[int, int]]:
    """(input size, fine-tune epochs done at its end) of each stretch of fine-tuning, in order:
    the low-resolution epochs first where the config has them (progressive resizing)."""
    low_res = [(config.low_res_size, config.low_res_epochs)] if config.low_res_epochs else []
    return low_res + [(config.input_size, config.fine_tune_epochs)]


def fine_tune_stretches(config: TrainConfig) -> list[tuple[int, int]]:
    """(input size, number of fine-tune epochs) of each stretch of fine_tune_plan that has any."""
    stretches, start = [], 0
    for size, end in fine_tune_plan(config):
        if end > start:
            stretches.append((size, end - start))
        start = end
    return stretches


def _check_low_res(config: TrainConfig) -> None:
    _check((config.low_res_size is None) == (config.low_res_epochs == 0), "low_res_size and low_res_epochs",
           [config.low_res_size, config.low_res_epochs], "both set or neither")
    _check(config.low_res_epochs <= config.fine_tune_epochs, "low_res_epochs", config.low_res_epochs,
           f"at most fine_tune_epochs ({config.fine_tune_epochs})")
    _check(config.low_res_size is None or config.input_size is None or config.low_res_size < config.input_size,
           "low_res_size", config.low_res_size, f"below input_size ({config.input_size})")


def _in_range(value, low, high, ends: str) -> bool:
    above = value >= low if ends[0] == "[" else value > low
    below = value <= high if ends[1] == "]" else value < high
    return above and below


def _check_range(name: str, value) -> None:
    low, high, ends = RANGES[name]
    interval = f"{ends[0]}{_number_text(low)}, {_number_text(high)}{ends[1]}"
    _check(value is None or _in_range(value, low, high, ends), name, value, f"in {interval}")


def _number_text(number) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _scalar(value) -> bool:
    return value is None or type(value) in (int, str, bool) or (type(value) is float and math.isfinite(value))


def _plain_json(options: dict) -> bool:
    """Builder options: names to scalars or short flat lists of scalars (e.g. widths)."""
    return len(options) <= 32 and all(
        isinstance(key, str) and (_scalar(value) or isinstance(value, list) and len(value) <= 64
                                  and all(_scalar(item) for item in value))
        for key, value in options.items())


# One hyperparameter table per recipe (airbench style): what each setting means and its
# unit; why each value was chosen, and what else was tried, is in docs/experiments.md.
# A model without an entry trains with the TrainConfig defaults.
#   optimizer, learning_rate   the update rule and its peak step (per batch, before the schedule)
#   weight_decay               decoupled decay per step, as a fraction of the weight times the rate
#   momentum, nesterov         SGD/Muon momentum (fraction of the last step kept), Nesterov look-ahead
#   schedule, warmup_fraction  the rate's shape over all steps; onecycle rises for this share of them
#   n_epochs                   passes over the training split (an upper bound with early stopping)
#   batch_size                 images per step
#   early_stopping_patience    epochs without a better validation loss before stopping (None: never)
#   val_fraction               share of the training images held out for validation (0: none)
#   label_smoothing            probability mass spread over the other classes in the targets
#   augmentations              per-image changes while training (flip, altflip, crop: 2 px shifts, ...)
#   limit                      train on a seeded subset of this many images
#   precision                  mixed_bfloat16: bf16 compute, float32 weights and outputs; auto: probe
#   model_options              the builder's options (fastnet's activation, see BENCHMARKS.md)
RECIPES: dict[str, dict[str, Any]] = {
    # The original study's optimizer set-up (AdamW at 1e-3, decay 1e-4, batch 128) on a fixed
    # 30-epoch one-cycle schedule: its plateau halving with early stopping needed 45 epochs
    # for the same accuracy (docs/experiments.md).
    "g3": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4, schedule="onecycle",
               n_epochs=30, batch_size=128, early_stopping_patience=None, val_fraction=0.05,
               augmentations=("flip", "crop"), precision="auto"),
    # airbench-style: a fixed one-cycle schedule over all 50,000 images (no validation split),
    # Muon for the conv kernels with SGD for BatchNorm and the head. Keras applies weight decay
    # decoupled (w -= lr * wd * w), so 5e-3 here is the usual coupled 5e-4 at momentum 0.9.
    "fastnet": dict(optimizer="muon", learning_rate=0.2, momentum=0.9, nesterov=True,
                    weight_decay=5e-3, schedule="onecycle", warmup_fraction=0.2,
                    n_epochs=21, batch_size=256, early_stopping_patience=None,
                    label_smoothing=0.1, ema_momentum=None, val_fraction=0.0,
                    augmentations=("altflip", "crop"), precision="auto",
                    model_options={"activation": "gelu_tanh"}),
    # Live demo: something meaningful in about a minute, on an 8,000-image subset.
    "demo": dict(optimizer="adam", learning_rate=3e-3, weight_decay=0.0, schedule="onecycle",
                 n_epochs=8, batch_size=128, limit=8000, early_stopping_patience=None,
                 label_smoothing=0.1, augmentations=("flip",)),
}
# The recipes as their previously shipped runs trained them (exact GELU, and Keras' own batch
# norm, which bench applies): `bench --compare` times them beside today's on one machine. Keyed by
# preset name (the fastnet and g3 presets are their models' recipes, unchanged).
PREVIOUS_RECIPES: dict[str, dict[str, Any]] = {
    "fastnet": dict(precision="mixed_bfloat16", model_options={}, n_epochs=22),
    "g3": dict(precision="mixed_bfloat16"),
    # A transfer preset's previous settings, on top of the preset as it is now.
    "lite0-224": dict(fine_tune_layers=1000, fine_tune_learning_rate=1e-4, low_res_size=None, low_res_epochs=0),
    # Lite2's 6-epoch record (93.60%): today's two more epochs buy accuracy, not speed.
    "lite2-224": dict(fine_tune_epochs=6),
    # A homebrew preset's previous settings, on top of the preset as it is now: fastnet's full widths.
    "stage": dict(model_options={"activation": "silu"}),
}
# Transfer: n_epochs trains the head on frozen features (seconds per epoch, so many); then
# fine_tune_epochs train the top fine_tune_layers weighted backbone layers (1000: all but
# BatchNorm) through the image pipeline at fine_tune_learning_rate.
TRANSFER_RECIPE: dict[str, Any] = dict(
    optimizer="adam", learning_rate=1e-3, weight_decay=0.0, schedule="cosine", n_epochs=10,
    batch_size=64, early_stopping_patience=None, label_smoothing=0.1, val_fraction=0.05,
    augmentations=("flip", "crop"), fine_tune_epochs=3, fine_tune_learning_rate=1e-4,
    fine_tune_layers=1000)


LARGE_INPUT = 160


@dataclass(frozen=True)
class Preset:
    """A named recipe: a model's recipe plus fixed settings, and the one shipped run it made."""
    model: str
    settings: dict[str, Any]
    shipped_run: str  # artifacts/runs/<shipped_run>: trained by exactly this preset
    summary: str


# What a user can train by name (`train --preset NAME`, the Train page). Each ships one run;
# a preset a newer one supersedes leaves with its run (its record stays in docs/experiments/).
PRESETS: dict[str, Preset] = {
    "demo": Preset("demo", {}, "demo-cifar10", "small CNN on an 8,000-image subset, for live demos"),
    "g3": Preset("g3", {}, "g3-onecycle-cifar10",
                 "the original study's 416k-parameter CNN and AdamW, 30 one-cycle epochs"),
    # Narrower middle blocks (128 wide, not 256): 1.53x the full SiLU net's training speed side by side
    # (`bench --compare stage`) for about a point of accuracy, so 85% fits in 5 minutes on a Zen 4 too,
    # not only on a Zen 5 (docs/experiments.md).
    "stage": Preset("fastnet", {"n_epochs": 3, "model_options": {"activation": "gelu_tanh", "widths": [64, 128, 256]}},
                    "stage-narrow-cifar10",
                    "fastnet at 64-128-256 channels, 3 epochs: 85%+ in under 5 minutes, for training on stage"),
    "fastnet": Preset("fastnet", {}, "fastnet-tanhgelu-cifar10",
                      "airbench-style net, Muon + alternating flip, 21 epochs"),
    # Distillation: the lite0-224 run's flip-TTA probabilities make 70% of each target; its labelling
    # (about 9 minutes here) counts in the training time. 32 epochs fill what is left of an hour.
    "fastnet-distilled": Preset("fastnet", {"n_epochs": 32, "teacher": "lite0-224-prog-cifar10",
                                            "teacher_weight": 0.7}, "fastnet-distilled-cifar10",
                                "fastnet taught by the lite0-224 run (70% of each target), 32 epochs"),
    "lite0-128": Preset("lite0", {}, "lite0-128-cifar10", "EfficientNet-Lite0 transfer at 128 px"),
    # Progressive resizing and the top 40 layers: fine-tuning 1.52x faster than every layer at 224 px
    # side by side (bench), for a little more accuracy; the higher learning rate suits the shorter
    # schedule (docs/experiments.md).
    "lite0-224": Preset("lite0", {"input_size": 224, "fine_tune_epochs": 4, "low_res_size": 128, "low_res_epochs": 1,
                                  "fine_tune_layers": 40, "fine_tune_learning_rate": 2e-4},
                        "lite0-224-prog-cifar10",
                        "EfficientNet-Lite0 transfer at 224 px: 1 fine-tune epoch at 128 px, 3 at 224"),
    # The most accurate recipe, not a fast one: lite0-224's schedule on the strongest offline backbone, with
    # twice the fine-tune epochs (its validation accuracy still rose 0.5 points an epoch at six; docs/experiments.md).
    "lite2-224": Preset("lite2", {"input_size": 224, "fine_tune_epochs": 8, "low_res_size": 128, "low_res_epochs": 1,
                                  "fine_tune_layers": 40, "fine_tune_learning_rate": 2e-4},
                        "lite2-224-cifar10",
                        "EfficientNet-Lite2 transfer at 224 px, 1 fine-tune epoch at 128 px, 7 at 224: "
                        "the most accurate, hours on a CPU"),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The preset's config, with `overrides` (None values are ignored) on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return recipe_config(preset.model, **{**preset.settings, **{k: v for k, v in overrides.items() if v is not None}})


def named_recipe(name: str, **overrides) -> TrainConfig:
    """What `bench` times under `name`: the preset of that name, else that model's recipe."""
    return preset_config(name, **overrides) if name in PRESETS else recipe_config(name, **overrides)


def builds_network_of(model: str | None, model_options: dict | None, config: TrainConfig) -> bool:
    """Whether a run of `model` built with `model_options` has the network `config` builds (its weights and
    arithmetic: what bench's speeds and inference timings depend on)."""
    return model == config.model and (model_options or {}) == config.model_options


def made_by_preset(config: TrainConfig, name: str) -> bool:
    """Whether a run's saved config is exactly the preset's, where its data lived aside; a preset's
    "auto" precision matches whichever precision the probe chose on the run's machine."""
    preset = preset_config(name)
    if preset.precision == "auto":
        preset = preset.replace(precision=config.precision)
    return config.replace(data=None) == preset


def recipe_config(model: str, **overrides) -> TrainConfig:
    """The recipe for `model`, with `overrides` (None values are ignored)."""
    from .models.registry import is_transfer_model  # late: keeps config light

    base = RECIPES.get(model)
    if base is None and is_transfer_model(model):
        base = dict(TRANSFER_RECIPE)
        # Fine-tuning activations grow with the square of the input size: halve
        # the batch above 160 px to keep a 224 px run under 4 GB (BENCHMARKS.md).
        if (overrides.get("input_size") or 0) > LARGE_INPUT:
            base["batch_size"] = TRANSFER_RECIPE["batch_size"] // 2
    settings = {"model": model, **(base or {})}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(settings)
