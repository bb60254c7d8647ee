"""Model files the project did not write: checked before Keras sees them, loaded in safe mode."""
import json
import zipfile

import keras
import numpy as np
import pytest
from helpers import rewrite_keras_config

from cifar_core.errors import ModelFileError
from cifar_core.models import build_model as _build_for_training
from cifar_core.models.layers import to_stock_layers
from cifar_core.models.loading import check_model_file, load_model_file


def build_model(name, **options):
    """A model as the studio saves it (training-speed layers swapped for Keras' own)."""
    return to_stock_layers(_build_for_training(name, **options))


def _lambda_model(sentinel):
    inputs = keras.Input((32, 32, 3))
    target = str(sentinel)
    # If this layer's code ever ran, the sentinel file would exist.
    x = keras.layers.Lambda(lambda t: (open(target, "w").close(), t)[1])(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_lambda_model_is_refused_and_its_code_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    model = _lambda_model(sentinel)
    path = tmp_path / "model.keras"
    model.save(path)
    sentinel.unlink(missing_ok=True)  # building the model ran the lambda once; start clean
    with pytest.raises(ModelFileError, match="Lambda"):
        load_model_file(path)
    assert not sentinel.exists()
    # The control: an unchecked, unsafe load really would run the payload.
    unsafe = keras.models.load_model(path, safe_mode=False)
    unsafe(np.zeros((1, 32, 32, 3), "float32"))
    assert sentinel.exists()


def test_custom_objects_extra_members_and_non_zip_are_refused(tmp_path):
    path = tmp_path / "ok.keras"
    build_model("demo").save(path)
    model, size = load_model_file(path, expected_classes=10)
    assert size == 32

    def register_custom(config):
        config["config"]["layers"][2]["registered_name"] = "evil>Thing"
        return config

    custom = tmp_path / "custom.keras"
    rewrite_keras_config(path, custom, register_custom)
    with pytest.raises(ModelFileError, match="refusing"):
        check_model_file(custom)

    extra = tmp_path / "extra.keras"
    rewrite_keras_config(path, extra, lambda c: c)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("assets/payload.py", "import os")
    with pytest.raises(ModelFileError, match="unexpected contents"):
        check_model_file(extra)

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a zip"):
        check_model_file(garbage)


def test_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "model.keras"
    build_model("demo", num_classes=7).save(path)
    with pytest.raises(ModelFileError, match="expected 10 class outputs"):
        load_model_file(path, expected_classes=10)
    inputs = keras.Input((16,))
    flat = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    flat.save(tmp_path / "flat.keras")
    with pytest.raises(ModelFileError, match="square RGB image input"):
        load_model_file(tmp_path / "flat.keras")


# --- declared sizes, members, objects and shapes, each pinned ---------------------------------

from cifar_core.models import loading  # noqa: E402


def _every_weighted_layer():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Normalization(name="norm")(inputs)
    x = keras.layers.Conv2D(6, 3, groups=2, name="c1")(x)
    x = keras.layers.Conv2D(5, (1, 3), use_bias=False, name="c2")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, padding="same", name="dw2")(x)
    x = keras.layers.SeparableConv2D(7, 2, depth_multiplier=3, name="sep")(x)
    x = keras.layers.SeparableConv2D(4, 2, use_bias=False, name="sep2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.BatchNormalization(center=False, name="bn2")(x)
    x = keras.layers.BatchNormalization(scale=False, name="bn3")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.LayerNormalization(scale=False, name="ln2")(x)
    x = keras.layers.LayerNormalization(center=False, name="ln3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, name="d1")(x)
    return keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="d2")(x))


def test_declared_weights_are_counted_exactly_as_keras_counts_them(tmp_path):
    model = _every_weighted_layer()
    model.save(tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    for layer in config["config"]["layers"]:
        if layer["class_name"] != "InputLayer":
            assert loading._layer_params(layer, "m") == model.get_layer(layer["config"]["name"]).count_params(), \
                layer["config"]["name"]
    assert sum(loading._layer_params(layer, "m") for layer in config["config"]["layers"]) == model.count_params()


def test_the_weight_cap_is_exact(tmp_path, monkeypatch):
    model = _every_weighted_layer()
    model.save(tmp_path / "m.keras")
    monkeypatch.setattr(loading, "MAX_PARAMS", model.count_params())
    check_model_file(tmp_path / "m.keras")
    monkeypatch.setattr(loading, "MAX_PARAMS", model.count_params() - 1)
    with pytest.raises(ModelFileError, match=f"^m.keras: the layers declare more than {model.count_params() - 1:,} "
                                             "weights$"):
        check_model_file(tmp_path / "m.keras")


def _layer(class_name="Dense", input_shape=(None, 4), **config):
    node = {"module": "keras.layers", "class_name": class_name, "config": {"units": 2, **config},
            "registered_name": None}
    if input_shape is not None:
        node["build_config"] = {"input_shape": list(input_shape)}
    return node


@pytest.mark.parametrize("key,limit", sorted(loading.LAYER_INT_LIMITS.items()))
def test_each_declared_size_is_capped_at_its_limit(key, limit):
    loading._layer_params(_layer("Resizing", None, **{key: [limit, 1]}), "m")  # at the limit
    with pytest.raises(ModelFileError, match=f"^m: layer Resizing declares {key} {limit + 1}; the limit is {limit}$"):
        loading._layer_params(_layer("Resizing", None, **{key: [1, limit + 1]}), "m")
    with pytest.raises(ModelFileError, match=f"declares {key} -1"):
        loading._layer_params(_layer("Resizing", None, **{key: -1}), "m")


def test_declared_input_shapes_are_capped_per_image(monkeypatch):
    monkeypatch.setattr(loading, "MAX_ACTIVATION_VALUES", 12)
    assert loading._layer_params(_layer(input_shape=(10**9, 3, 4)), "m") == 4 * 2 + 2  # the batch is not counted
    with pytest.raises(ModelFileError, match=r"^m: layer Dense declares the input shape \[None, 13\]$"):
        loading._layer_params(_layer(input_shape=(None, 13)), "m")
    monkeypatch.setattr(loading, "MAX_ACTIVATION_VALUES", 10**12)
    assert loading._layer_params(_layer(input_shape=(None, 1 << 16)), "m") == (1 << 16) * 2 + 2
    for bad in ((None, (1 << 16) + 1), (None, -1)):
        with pytest.raises(ModelFileError, match="declares the input shape"):
            loading._layer_params(_layer(input_shape=bad), "m")
    # Several inputs (Add, Concatenate): each shape is checked.
    add = _layer("Add", None)
    add["build_config"] = {"input_shape": [[None, 4], [None, 10**9]]}
    with pytest.raises(ModelFileError, match="layer Add declares the input shape"):
        loading._layer_params(add, "m")
    add["build_config"] = {"input_shape": [[None, 4], [None, 4]]}
    assert loading._layer_params(add, "m") == 0


@pytest.mark.parametrize("node,message", [
    (_layer(input_shape=None), "m: weighted layer Dense declares no input shape"),
    ({**_layer(), "build_config": {"input_shape": []}}, "m: weighted layer Dense declares no input shape"),
    ({**_layer(), "build_config": {"input_shape": "(None, 4)"}}, "m: weighted layer Dense declares no input shape"),
    ({**_layer(), "build_config": ["input_shape"]}, "m: weighted layer Dense declares no input shape"),
    ({**_layer(), "config": None}, "m: layer Dense has no config"),
])
def test_a_weighted_layer_must_declare_what_it_builds(node, message):
    with pytest.raises(ModelFileError) as caught:
        loading._layer_params(node, "m")
    assert str(caught.value) == message


def test_layers_without_weights_or_with_unknown_channels_cost_nothing():
    assert loading._layer_params(_layer("ReLU", None), "m") == 0
    assert loading._layer_params(_layer(input_shape=(None, None)), "m") == 2  # unknown channels: the bias only
    assert loading._layer_params(_layer("Conv2D", (None, 4, 4, 4), filters=3, kernel_size=[1, 1], groups=0), "m") \
        == 4 * 3 + 3  # groups 0 counts as 1, never a division by zero


@pytest.mark.parametrize("module,class_name,registered,allowed", [
    ("keras.layers", "Dense", None, True), ("keras.layers", "Dense", "Dense", True),
    ("keras.layers", "Lambda", None, False), ("keras.layers", "Dense", "my>Dense", False),
    ("keras", "Functional", "Functional", True), ("keras", "Lambda", None, False),
    ("keras.initializers", "AnythingBuiltIn", None, True), ("keras.regularizers", "L2", None, True),
    ("keras.constraints", "MaxNorm", None, True), ("keras.models", "Sequential", None, True),
    ("keras.models", "Model", None, False), ("builtins", "eval", None, False), (None, "Dense", None, False),
])
def test_the_object_allow_list(module, class_name, registered, allowed):
    node = {"module": module, "class_name": class_name, "registered_name": registered}
    if allowed:
        loading._check_class(node, "m.keras")
    else:
        with pytest.raises(ModelFileError) as caught:
            loading._check_class(node, "m.keras")
        assert str(caught.value) == (f"m.keras: refusing layer or object {module}.{class_name} "
                                     "(only built-in Keras layers are loaded from files)")


def _keras_zip(path, members, compress_type=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compress_type)
    return path


def test_members_are_checked_with_their_reason(tmp_path, monkeypatch):
    config = json.dumps({"module": "keras", "class_name": "Functional", "config": {"layers": []}})
    cases = [({"config.json": config, "payload.py": "x"}, "m.keras: unexpected contents ['payload.py']"),
             ({"metadata.json": "{}"}, "m.keras: unexpected contents (no config.json)")]
    for members, message in cases:
        with pytest.raises(ModelFileError) as caught:
            check_model_file(_keras_zip(tmp_path / "m.keras", members))
        assert str(caught.value) == message
    assert check_model_file(_keras_zip(tmp_path / "ok.keras", {"config.json": config}, zipfile.ZIP_DEFLATED))
    with pytest.raises(ModelFileError, match="^m.keras: config.json uses compression method 14; Keras writes"):
        check_model_file(_keras_zip(tmp_path / "m.keras", {"config.json": config}, zipfile.ZIP_LZMA))
    monkeypatch.setattr(loading, "MAX_CONFIG_BYTES", len(config))
    check_model_file(_keras_zip(tmp_path / "at.keras", {"config.json": config}))
    monkeypatch.setattr(loading, "MAX_CONFIG_BYTES", len(config) - 1)
    with pytest.raises(ModelFileError, match="^at.keras: model file members are implausibly large$"):
        check_model_file(tmp_path / "at.keras")
    monkeypatch.setattr(loading, "MAX_CONFIG_BYTES", 10**6)
    monkeypatch.setattr(loading, "MAX_WEIGHTS_BYTES", 3)
    check_model_file(_keras_zip(tmp_path / "w.keras", {"config.json": config, "model.weights.h5": b"abc"}))
    with pytest.raises(ModelFileError, match="implausibly large"):
        check_model_file(_keras_zip(tmp_path / "w.keras", {"config.json": config, "model.weights.h5": b"abcd"}))
    with pytest.raises(ModelFileError, match="^model file not found: "):
        check_model_file(tmp_path / "missing.keras")
    with pytest.raises(ModelFileError, match="^m.keras: config.json is not valid JSON"):
        check_model_file(_keras_zip(tmp_path / "m.keras", {"config.json": "{half"}))


def test_loading_checks_the_image_input_and_the_classes(tmp_path):
    build_model("demo", num_classes=3).save(tmp_path / "compiled.keras")
    loaded, size = load_model_file(tmp_path / "compiled.keras", expected_classes=3)
    assert size == 32 and type(size) is int
    assert load_model_file(tmp_path / "compiled.keras")[1] == 32  # no expected class count: any
    trained = build_model("demo", num_classes=3)
    trained.compile(optimizer="sgd", loss="categorical_crossentropy")
    trained.save(tmp_path / "with-optimizer.keras")  # an optimizer is not a layer: refused like any object
    with pytest.raises(ModelFileError, match="refusing layer or object keras.optimizers.SGD"):
        load_model_file(tmp_path / "with-optimizer.keras")
    for shape, name in (((32, 16, 3), "wide"), ((32, 32, 1), "grey"), ((None, None, 3), "open"), ((32, 3), "flat3")):
        inputs = keras.Input(shape)
        pooled = keras.layers.GlobalAveragePooling2D()(inputs) if len(shape) == 3 else keras.layers.Flatten()(inputs)
        keras.Model(inputs, keras.layers.Dense(3)(pooled)).save(tmp_path / f"{name}.keras")
        with pytest.raises(ModelFileError, match=f"^{name}.keras: expected a square RGB image input; found"):
            load_model_file(tmp_path / f"{name}.keras")
    with pytest.raises(ModelFileError, match=r"^compiled.keras: expected 10 class outputs; found \(None, 3\)$"):
        load_model_file(tmp_path / "compiled.keras", expected_classes=10)


def test_the_activation_cap_is_exact(tmp_path, monkeypatch):
    model = build_model("demo", num_classes=3)
    model.save(tmp_path / "demo.keras")
    largest = max(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    loaded, _ = load_model_file(tmp_path / "demo.keras")
    monkeypatch.setattr(loading, "MAX_ACTIVATION_VALUES", largest)
    loading._check_activations(loaded, "demo.keras")  # the symbolic shapes, checked after the load
    monkeypatch.setattr(loading, "MAX_ACTIVATION_VALUES", largest - 1)
    with pytest.raises(ModelFileError, match=rf"^demo.keras: layer \w+ outputs \(None, \d+, \d+, \d+\) per image; "
                                             f"the limit is {largest - 1:,} values$"):
        loading._check_activations(loaded, "demo.keras")


def test_broken_archives_and_configs_keras_cannot_build_are_one_line(tmp_path):
    build_model("demo", num_classes=3).save(tmp_path / "demo.keras")
    config = zipfile.ZipFile(tmp_path / "demo.keras").read("config.json")
    from helpers import damage_deflate

    damage_deflate(_keras_zip(tmp_path / "broken.keras", {"config.json": config}, zipfile.ZIP_DEFLATED))
    with pytest.raises(ModelFileError, match=r"^broken.keras: (unreadable model file|not a readable .keras file) \("):
        check_model_file(tmp_path / "broken.keras")

    def drop_units(cfg):
        dense = [layer for layer in cfg["config"]["layers"] if layer["class_name"] == "Dense"][-1]
        dense["config"]["units"] = "ten"  # passes our size checks (not an int), fails in Keras
        return cfg

    rewrite_keras_config(tmp_path / "demo.keras", tmp_path / "odd.keras", drop_units)
    with pytest.raises(ModelFileError, match=r"^odd.keras: Keras could not load it \(\w+: "):
        load_model_file(tmp_path / "odd.keras")
    with pytest.raises(ModelFileError, match="^custom.keras: refusing layer or object keras.layers.Lambda "):
        check_model_file(_keras_zip(tmp_path / "custom.keras", {"config.json": json.dumps(
            {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
             "config": {"layers": [{"module": "keras.layers", "class_name": "Lambda", "config": {}}]}})}))
    with pytest.raises(ModelFileError, match=r"^big.keras: layer Dense declares units 9000; the limit is 8192$"):
        check_model_file(_keras_zip(tmp_path / "big.keras", {"config.json": json.dumps(
            {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
             "config": {"layers": [_layer(units=9000)]}})}))


def test_a_spatial_output_is_refused_even_without_a_class_count(tmp_path):
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)).save(tmp_path / "maps.keras")
    with pytest.raises(ModelFileError, match=r"^maps.keras: expected N class outputs; found \(None, 6, 6, 4\)$"):
        load_model_file(tmp_path / "maps.keras")


def test_zero_sizes_and_open_spatial_sides_are_counted_not_refused():
    assert loading._layer_params(_layer("ZeroPadding2D", None, padding=[[0, 0], [0, 1]]), "m") == 0
    assert loading._layer_params(_layer(input_shape=(None, 0, 4)), "m") == 4 * 2 + 2  # an empty side is no bomb
    # Spatial sides left open (a model taking any size): the channels still count every weight.
    assert loading._layer_params(_layer("Conv2D", (None, None, None, 4), filters=3, kernel_size=[1, 1]), "m") \
        == 4 * 3 + 3


def test_the_fields_of_objects_that_are_not_layers_are_not_read_as_layer_sizes():
    initializer = {"module": "keras.initializers", "class_name": "Constant", "config": {"units": 9000, "value": 1}}
    model = {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
             "config": {"layers": [_layer(kernel_initializer=initializer)]}}
    loading._check_objects(model, "m", loading._check_class)


def test_failures_reading_or_loading_a_model_file_name_their_cause(tmp_path, monkeypatch):
    build_model("demo", num_classes=3).save(tmp_path / "demo.keras")
    with monkeypatch.context() as patched:
        patched.setattr(zipfile.ZipFile, "read", lambda self, name: (_ for _ in ()).throw(OSError("disk gone")))
        with pytest.raises(ModelFileError, match=r"^demo.keras: unreadable model file \(OSError: disk gone\)$"):
            check_model_file(tmp_path / "demo.keras")
    with monkeypatch.context() as patched:
        patched.setattr(keras.models, "load_model", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad\nthing")))
        with pytest.raises(ModelFileError, match=r"^demo.keras: Keras could not load it \(ValueError: bad\)$"):
            load_model_file(tmp_path / "demo.keras")
    # The activation cap is checked on the loaded model too (the declared shapes aside), naming the file.
    monkeypatch.setattr(loading, "check_model_file", lambda path: {})
    monkeypatch.setattr(loading, "MAX_ACTIVATION_VALUES", 10)
    with pytest.raises(ModelFileError, match=r"^demo.keras: layer \w+ outputs \(None, "):
        load_model_file(tmp_path / "demo.keras")
