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
                                         ("input_size", 8), ("learning_rate", -1.0)])
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
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().n_epochs = 5


# Every range, pinned just inside and just outside each end that exists.
BOUNDARIES = [
    ("n_epochs", [1, 10_000], [0, 10_001]), ("batch_size", [1, 8192], [0, 8193]),
    ("limit", [2, None], [1, 10_000_001]), ("input_size", [16, 512], [15, 513]),
    ("val_fraction", [0.0, 0.89], [-0.01, 0.9]), ("learning_rate", [1e-9, 10.0], [0.0, 10.01]),
    ("fine_tune_learning_rate", [1e-9, 10.0], [0.0, 10.5]), ("weight_decay", [0.0, 1.0], [-1, 1.01]),
    ("momentum", [0.0, 0.99], [-0.1, 1.0]), ("muon_scale", [0.01, 10], [0, 10.1]),
    ("warmup_fraction", [0.0, 1.0], [-0.1, 1.1]), ("plateau_patience", [1, 1000], [0, 1001]),
    ("plateau_factor", [0.01, 0.99], [0.0, 1.0, 2]), ("early_stopping_patience", [1, 1000, None], [0, 1001]),
    ("label_smoothing", [0.0, 0.99], [-0.01, 1.0]), ("ema_momentum", [0.01, 0.99, None], [0.0, 1.0]),
    ("translate_fraction", [0.0, 0.5], [-0.1, 0.51]), ("rotate_fraction", [0.0, 0.5], [-0.1, 0.6]),
    ("zoom_fraction", [0.0, 0.99], [-0.1, 1.0]), ("cutout_size", [1, 512], [0, 513]),
    ("random_state", [0, 2**32 - 1], [-1, 2**32]), ("fine_tune_epochs", [0, 10_000], [-1, 10_001]),
    ("fine_tune_layers", [0, 100_000], [-1, 100_001]),
]


@pytest.mark.parametrize("field,inside,outside", BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_every_range_is_enforced_at_both_ends(field, inside, outside):
    for value in inside:
        assert getattr(TrainConfig(**{field: value}), field) == value
    for value in outside:
        with pytest.raises(ConfigError, match=f"^{field} must be"):
            TrainConfig(**{field: value})


@pytest.mark.parametrize("text,message", [
    ('{"n_epochs": 1.5}', "n_epochs must be an integer; received 1.5"),
    ('{"n_epochs": true}', "n_epochs must be an integer; received True"),
    ('{"learning_rate": "0.1"}', "learning_rate must be a finite number; received '0.1'"),
    ('{"learning_rate": Infinity}', "learning_rate must be a finite number; received inf"),
    ('{"momentum": NaN}', "momentum must be a finite number"),
    ('{"plateau_factor": 2}', "plateau_factor must be in (0, 1); received 2"),
    ('{"weight_decay": -1}', "weight_decay must be in [0, 1]; received -1"),
    ('{"tta": "no"}', "tta must be true or false; received 'no'"),
    ('{"nesterov": 1}', "nesterov must be true or false"),
    ('{"augmentations": "flip"}', "augmentations must be a list of names"),
    ('{"augmentations": [1]}', "augmentations must be a list of names"),
    ('{"model": 3}', "model must be a string"),
    ('{"model": ""}', "model must be a registry name"),
    ('{"data": ""}', "data must be a source or path"),
    ('{"limit": "all"}', "limit must be an integer or null"),
    ('{"model_options": {"widths": [[8]]}}', "model_options must be"),
    ('{"model_options": []}', "model_options must be an object"),
    ('[]', "config must be a JSON object"),
    ('{"a": ' * 100 + '1' + '}' * 100, "nests deeper"),
])
def test_every_field_is_typed_when_the_config_is_made(text, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_json(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_ints_are_accepted_where_floats_belong_and_lists_become_tuples():
    config = TrainConfig.from_json('{"learning_rate": 1, "augmentations": ["flip", "crop"], '
                                   '"model_options": {"widths": [8, 16], "dropout": 0.5}}')
    assert config.learning_rate == 1 and config.augmentations == ("flip", "crop")
    assert config.model_options == {"widths": [8, 16], "dropout": 0.5}


def test_recipes_keep_their_schedules():
    # A recipe's epoch count is part of its published figure: a change must be deliberate.
    assert {name: recipe["n_epochs"] for name, recipe in RECIPES.items()} == {"g3": 30, "fastnet": 21, "demo": 8}
    assert RECIPES["g3"]["schedule"] == "onecycle" and RECIPES["fastnet"]["schedule"] == "onecycle"
    assert RECIPES["fastnet"]["optimizer"] == "muon" and RECIPES["g3"]["optimizer"] == "adamw"


def test_large_transfer_inputs_get_a_smaller_batch_unless_asked():
    from cifar_core.config import TRANSFER_RECIPE

    assert recipe_config("lite0").batch_size == TRANSFER_RECIPE["batch_size"]
    assert recipe_config("lite0", input_size=224).batch_size == TRANSFER_RECIPE["batch_size"] // 2
    assert recipe_config("lite0", input_size=224, batch_size=48).batch_size == 48


def test_inference_batches_shrink_with_the_input():
    from cifar_core.evaluation import inference_batch_size

    assert inference_batch_size(32) == 256
    assert inference_batch_size(128) == 64
    assert 8 <= inference_batch_size(224) < 32


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "rmsprop", "optimizer must be one of ('adamw', 'adam', 'sgd', 'muon'); received 'rmsprop'"),
    ("schedule", "exp", "schedule must be one of ('constant', 'plateau', 'onecycle', 'cosine'); received 'exp'"),
    ("precision", "float16", "precision must be one of ('float32', 'mixed_bfloat16', 'auto'); received 'float16'"),
    ("distribute", "horovod", "distribute must be one of ('none', 'mirrored', 'multi-worker'); received 'horovod'"),
    ("augmentations", ("flip", "mixup"), "augmentations must be a subset of ('flip', 'altflip', 'translate', "
     "'crop', 'rotate', 'zoom', 'contrast', 'cutout'); received ['mixup']"),
    ("augmentations", ("flip", "altflip"), "augmentations must be at most one of flip and altflip; "
     "received ['flip', 'altflip']"),
    ("model", "m" * 65, "model must be a registry name; received '" + "m" * 64),
    ("data", "d" * 4097, "data must be a source or path; received '" + "d" * 76 + "..."),
    ("model_options", {"a": [[1]]}, "model_options must be an object of names to numbers, strings, booleans or "
     "short lists of them; received {'a': [[1]]}"),
    ("val_fraction", 0.9, "val_fraction must be in [0, 0.9); received 0.9"),
    ("random_state", 2**32, "random_state must be in [0, 4294967296); received 4294967296"),
    ("ema_momentum", 1.0, "ema_momentum must be in (0, 1); received 1.0"),
    ("learning_rate", 0, "learning_rate must be in (0, 10]; received 0"),
])
def test_every_refusal_says_what_was_expected_and_received(field, value, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{field: value})
    assert str(caught.value).startswith(message), str(caught.value)


def test_long_received_values_are_shortened_to_80_characters():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(optimizer="x" * 200)
    received = str(caught.value).split("; received ")[1]
    assert received == "'" + "x" * 76 + "..." and len(received) == 80
    with pytest.raises(ConfigError) as caught:
        TrainConfig(optimizer="y" * 78)  # its repr is exactly 80 characters: kept whole
    assert str(caught.value).endswith("received '" + "y" * 78 + "'")
    with pytest.raises(ConfigError) as caught:
        TrainConfig(optimizer="z" * 79)  # 81 characters: shortened
    assert str(caught.value).endswith("received '" + "z" * 76 + "...")


def test_the_edges_of_names_paths_and_options():
    assert TrainConfig(model="m" * 64).model == "m" * 64
    assert TrainConfig(data="d" * 4096).data == "d" * 4096
    assert TrainConfig(data="d").data == "d"
    for bad in ({"model": ""}, {"data": ""}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    assert TrainConfig(model_options={f"k{i}": i for i in range(32)}).model_options["k31"] == 31
    with pytest.raises(ConfigError, match="model_options"):
        TrainConfig(model_options={f"k{i}": i for i in range(33)})
    assert TrainConfig(model_options={"widths": list(range(64))}).model_options["widths"][-1] == 63
    for bad in ({"widths": list(range(65))}, {1: 2}, {"x": float("nan")}, {"x": {"y": 1}}):
        with pytest.raises(ConfigError, match="model_options"):
            TrainConfig(model_options=bad)
    assert TrainConfig(model_options={"a": None, "b": "s", "c": True, "d": 1.5}).model_options["d"] == 1.5


def test_the_saved_json_is_sorted_and_indented():
    text = TrainConfig(model="demo").to_json()
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1] == '  "augmentations": [' and lines[2] == '    "flip",'
    keys = [line.split('"')[1] for line in lines if line.startswith('  "')]
    assert keys == sorted(keys)


def test_config_errors_name_the_config():
    with pytest.raises(ConfigError, match=r"^config is not valid JSON \("):
        TrainConfig.from_json("{nope")
    with pytest.raises(ConfigError, match="^config must be a JSON object, got list$"):
        TrainConfig.from_dict([])
    with pytest.raises(ConfigError, match=r"^unknown config keys: \['zz', 1\]$"):
        TrainConfig.from_dict({1: 2, "zz": 3, "model": "g3"})  # keys of any type, named in one message


def test_a_config_from_before_the_rename_reads_its_image_size_as_the_input_size():
    assert TrainConfig.from_dict({"model": "lite0", "image_size": 160}).input_size == 160
    # Both names at once is not an old config but a damaged one: neither silently wins.
    with pytest.raises(ConfigError, match=r"^unknown config keys: \['image_size'\]$"):
        TrainConfig.from_dict({"model": "lite0", "image_size": 160, "input_size": 224})


def test_recipes_apply_only_to_their_models():
    from cifar_core.config import TRANSFER_RECIPE

    plain = recipe_config("not-a-registered-model")
    assert plain.optimizer == TrainConfig().optimizer and plain.n_epochs == TrainConfig().n_epochs
    assert recipe_config("lite0").optimizer == TRANSFER_RECIPE["optimizer"]
    assert recipe_config("lite0", input_size=160).batch_size == TRANSFER_RECIPE["batch_size"]  # 160: not above
    assert recipe_config("lite0", input_size=161).batch_size == TRANSFER_RECIPE["batch_size"] // 2
    assert recipe_config("fastnet", input_size=224).batch_size == RECIPES["fastnet"]["batch_size"]


def test_presets_are_recipes_with_settings_on_top():
    from cifar_core.config import PRESETS, preset_config

    assert preset_config("lite0-224") == recipe_config("lite0", input_size=224, fine_tune_epochs=4, low_res_size=128,
                                                       low_res_epochs=1, fine_tune_layers=40,
                                                       fine_tune_learning_rate=2e-4)
    assert preset_config("lite0-224", fine_tune_epochs=None).fine_tune_epochs == 4  # None overrides nothing
    assert preset_config("demo", n_epochs=2) == recipe_config("demo", n_epochs=2)
    with pytest.raises(ConfigError, match="^unknown preset 'nope'; choose one of demo, g3, stage, fastnet, "
                                          "fastnet-distilled, lite0-128, lite0-224, lite2-224$"):
        preset_config("nope")
    assert set(PRESETS) == {"demo", "g3", "stage", "fastnet", "fastnet-distilled", "lite0-128", "lite0-224",
                            "lite2-224"}
    assert preset_config("lite2-224") == recipe_config("lite2", input_size=224, fine_tune_epochs=8, low_res_size=128,
                                                       low_res_epochs=1, fine_tune_layers=40,
                                                       fine_tune_learning_rate=2e-4)
    assert preset_config("fastnet-distilled") == recipe_config("fastnet", n_epochs=32, teacher="lite0-224-prog-cifar10",
                                                               teacher_weight=0.7)
    assert preset_config("stage") == recipe_config("fastnet", n_epochs=3, model_options={
        "activation": "gelu_tanh", "widths": [64, 128, 256]})


def test_the_input_size_is_resolved_when_the_config_is_made():
    assert TrainConfig(model="g3").input_size == 32 and TrainConfig(model="lite0").input_size == 128
    assert TrainConfig(model="lite0", input_size=224).input_size == 224
    assert TrainConfig(model="not-registered").input_size is None  # training refuses the model itself
    legacy = TrainConfig.from_dict({"model": "lite0", "image_size": 160})  # saved before the rename
    assert legacy.input_size == 160 and "image_size" not in legacy.to_dict()
    assert TrainConfig.from_dict({"model": "lite0", "image_size": None}).input_size == 128


def test_a_run_made_by_a_preset_is_recognised_whatever_precision_auto_chose():
    from cifar_core.config import made_by_preset, preset_config

    made = preset_config("fastnet", data="/somewhere/cifar.tar.gz")
    assert made.precision == "auto"
    for chosen in ("float32", "mixed_bfloat16"):
        assert made_by_preset(made.replace(precision=chosen), "fastnet")
    assert not made_by_preset(made.replace(precision="float32", n_epochs=5), "fastnet")
    stage_net = {"activation": "gelu_tanh", "widths": [64, 128, 256]}
    assert made_by_preset(made.replace(precision="float32", n_epochs=3, model_options=stage_net), "stage")
    assert not made_by_preset(made.replace(precision="float32", n_epochs=3), "stage")  # fastnet's full widths
    assert not made_by_preset(preset_config("demo").replace(precision="mixed_bfloat16"), "demo")  # demo: float32


def test_low_resolution_epochs_come_with_their_size_within_fine_tuning_and_below_the_input_size():
    fits = dict(model="lite0", input_size=224, fine_tune_epochs=4)
    assert TrainConfig(**fits, low_res_size=128, low_res_epochs=4).low_res_epochs == 4  # all of them: allowed
    assert TrainConfig(**fits, low_res_size=16, low_res_epochs=1).low_res_size == 16
    together = r"^low_res_size and low_res_epochs must be both set or neither; received \[128, 0\]$"
    refused = [(dict(low_res_size=128), together),
               (dict(low_res_epochs=2), together.replace("128, 0", "None, 2")),
               (dict(low_res_size=128, low_res_epochs=5),
                r"^low_res_epochs must be at most fine_tune_epochs \(4\); received 5$"),
               (dict(low_res_size=224, low_res_epochs=2),
                r"^low_res_size must be below input_size \(224\); received 224$"),
               (dict(low_res_size=15, low_res_epochs=2), r"^low_res_size must be in \[16, 512\]"),
               (dict(low_res_size=128, low_res_epochs=-1), r"^low_res_epochs must be in \[0, 10000\]")]
    for bad, message in refused:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**fits, **bad)


def test_fine_tuning_runs_in_stretches_small_first():
    from cifar_core.config import fine_tune_plan, fine_tune_stretches

    progressive = recipe_config("lite0", input_size=224, fine_tune_epochs=4, low_res_size=128, low_res_epochs=1)
    assert fine_tune_plan(progressive) == [(128, 1), (224, 4)]
    assert fine_tune_stretches(progressive) == [(128, 1), (224, 3)]
    assert fine_tune_stretches(progressive.replace(low_res_epochs=4)) == [(128, 4)]  # nothing left at 224
    plain = recipe_config("lite0", input_size=224, fine_tune_epochs=4)
    assert fine_tune_plan(plain) == [(224, 4)] and fine_tune_stretches(plain) == [(224, 4)]


def test_a_recipe_name_is_a_preset_first_else_a_models_own_recipe():
    from cifar_core.config import named_recipe, preset_config

    assert named_recipe("stage") == preset_config("stage") != recipe_config("fastnet", n_epochs=3)
    assert named_recipe("stage", batch_size=64) == preset_config("stage", batch_size=64)
    assert named_recipe("lite0") == recipe_config("lite0")  # a model no preset is named after
    assert named_recipe("lite0", input_size=224) == recipe_config("lite0", input_size=224)


def test_a_teacher_is_named_in_at_most_4096_characters():
    assert TrainConfig(model="fastnet", teacher="t" * 4096).teacher == "t" * 4096
    with pytest.raises(ConfigError, match="^teacher must be a run's folder name or path; received 't{76}\\.\\.\\.$"):
        TrainConfig(model="fastnet", teacher="t" * 4097)


def test_a_network_is_the_same_only_with_the_same_model_and_the_same_options():
    from cifar_core.config import builds_network_of, preset_config

    stage = preset_config("stage")  # fastnet with options
    assert builds_network_of("fastnet", stage.model_options, stage)
    assert not builds_network_of("fastnet", None, stage)  # fastnet at its own width is another network
    assert not builds_network_of("g3", stage.model_options, stage)
    plain = recipe_config("g3")  # no options: none given is the same network
    assert plain.model_options == {}
    assert builds_network_of("g3", None, plain) and builds_network_of("g3", {}, plain)
    assert not builds_network_of("g3", {"activation": "silu"}, plain)
    assert not builds_network_of("fastnet", None, plain)
