import pytest

from cifar_core.config import RECIPES, TrainConfig, recipe_config
from cifar_core.errors import ConfigError


def test_json_round_trip_preserves_every_field():
    config = TrainConfig(model="fastnet", augmentations=("flip", "crop"), model_options={"widths": [8, 8, 8]},
                         limit=100, ema_momentum=0.99)
    assert TrainConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("field,value", [("optimizer", "rmsprop"), ("schedule", "exp"), ("n_epochs", 0),
                                         ("augmentations", ("flip", "mixup")), ("augmentations", ("flip", "altflip")),
                                         ("val_fraction", 0.95),
                                         ("image_size", 8), ("learning_rate", -1.0)])
def test_invalid_values_are_refused_with_what_was_received(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_unknown_keys_and_bad_json_are_config_errors():
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_dict({"model": "g3", "epochz": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json("{nope")


def test_recipe_applies_table_then_overrides():
    config = recipe_config("fastnet", n_epochs=3, learning_rate=None)
    assert config.n_epochs == 3
    assert config.optimizer == RECIPES["fastnet"]["optimizer"]
    assert config.learning_rate == RECIPES["fastnet"]["learning_rate"]


def test_config_is_frozen():
    with pytest.raises(Exception):
        TrainConfig().n_epochs = 5


def test_large_transfer_inputs_get_a_smaller_batch_unless_asked():
    from cifar_core.config import TRANSFER_RECIPE

    assert recipe_config("lite0").batch_size == TRANSFER_RECIPE["batch_size"]
    assert recipe_config("lite0", image_size=224).batch_size == TRANSFER_RECIPE["batch_size"] // 2
    assert recipe_config("lite0", image_size=224, batch_size=48).batch_size == 48


def test_inference_batches_shrink_with_the_input():
    from cifar_core.evaluation import inference_batch_size

    assert inference_batch_size(32) == 256
    assert inference_batch_size(128) == 64
    assert 8 <= inference_batch_size(224) < 32
