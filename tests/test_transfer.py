"""Transfer learning: converted Lite0 weights are right; every backbone builds; two stages run."""
import numpy as np
import pytest

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.errors import ConfigError, ModelFileError
from cifar_core.imaging import resize_image
from cifar_core.models import build_model, get_spec
from cifar_core.models.loading import check_model_file, load_model_file
from cifar_core.training import train

# ImageNet class indices (of the 1000) that name the object in each photo.
CAT_CLASSES = {281, 282, 283, 285, 287}  # tabby, tiger cat, Persian, Egyptian cat, lynx
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module", params=["lite0", "lite1", "lite2"])
def lite_imagenet(request, tmp_path_factory):
    """Each Lite variant with its converted ImageNet head, at the resolution it was trained at."""
    import os

    os.environ["CIFAR_CORE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from cifar_core.models.transfer import LITE_SHAPES, build_lite

    size = LITE_SHAPES[request.param].pretrained_size
    return build_lite(request.param, (size, size, 3), include_imagenet_top=True), size


@pytest.mark.parametrize("photo,expected", [("chelsea", CAT_CLASSES), ("coffee", CUP_CLASSES)])
def test_converted_lite_models_recognise_real_photos(lite_imagenet, photo, expected):
    from skimage import data

    model, size = lite_imagenet
    image = resize_image(getattr(data, photo)(), size)[None].astype("float32")
    probs = np.asarray(model(image))[0]
    top5 = set(np.argsort(-probs)[:5].tolist())
    assert np.argmax(probs) in expected
    assert len(top5 & expected) >= 2
    assert probs[list(expected)].sum() > 0.5


@pytest.mark.parametrize("name", ["efficientnetb1", "resnet101v2", "densenet121", "mobilenetv2", "lite0", "lite1",
                                  "lite2"])
def test_every_backbone_builds_frozen_with_a_new_head(name):
    model = build_model(name, 32, num_classes=10, weights=None)
    probs = np.asarray(model(np.zeros((1, 32, 32, 3), "float32")))
    assert probs.shape == (1, 10)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {"predictions"}
    assert len(model.get_layer(get_spec(name).last_conv_layer).output.shape) == 4  # a spatial map for Grad-CAM


def test_unfreeze_top_keeps_batchnorm_frozen():
    import keras

    from cifar_core.models.transfer import unfreeze_top

    model = build_model("lite0", 32, weights=None)
    unfreeze_top(model, 5)
    trainable = [layer for layer in model.layers if layer.trainable and layer.weights
                 and layer.name != "predictions"]
    assert len(trainable) == 5
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in model.layers)


def test_missing_imagenet_weights_offline_is_a_clear_error(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(ModelFileError, match="not in the Keras cache"):
        build_model("mobilenetv2", 32)


def test_two_stage_transfer_run(tiny_dataset, tmp_path):
    config = recipe_config("lite0", n_epochs=2, fine_tune_epochs=1, fine_tune_layers=3, input_size=48,
                           batch_size=32, model_options={"weights": None})
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    stages = [row["stage"] for row in runs.read_history(run_dir)]
    assert stages == ["head", "head", "fine_tune"]
    metrics = runs.read_json(run_dir / "metrics.json")
    assert {"test_accuracy_head", "stage_seconds", "test_accuracy"} <= set(metrics)
    assert metrics["transfer"] is True and metrics["input_size"] == 48
    check_model_file(run_dir / "model.keras")  # only built-in layers: loads with safe_mode

    # Measured at another input size (the FixRes question), with the run's files left as they are.
    from cifar_core.evaluation import predict_proba
    from cifar_core.inference import load_run_model, measure_at_input_size

    files = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    run = load_run_model(run_dir)
    at_own_size = measure_at_input_size(run, tiny_dataset, 48)
    assert at_own_size["test_accuracy"] == metrics["test_accuracy"]
    assert at_own_size["test_accuracy_tta"] == metrics["test_accuracy_tta"]
    larger = measure_at_input_size(run, tiny_dataset, 64)
    fresh = load_run_model(run_dir).model
    from cifar_core.models.transfer import accept_any_size

    accept_any_size(fresh)
    expected = predict_proba(fresh, tiny_dataset.x_test, input_size=64).argmax(axis=1)
    assert larger["test_accuracy"] == pytest.approx(float(np.mean(expected == tiny_dataset.y_test)))
    assert larger["input_size"] == 64 and larger["trained_input_size"] == 48
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == files
    for size in (15, 513):
        with pytest.raises(ConfigError, match=f"^input size {size} px is outside 16-512$"):
            measure_at_input_size(run, tiny_dataset, size)


def test_progressive_resizing_fine_tunes_small_first_then_at_the_input_size_and_resumes_between(
        tiny_dataset, tmp_path, monkeypatch):
    from helpers import stop_after_epoch

    from cifar_core.training import features, resume, stages

    fits, feature_sizes = [], []
    real_fit, real_features = stages.fit_stage, features.cached_features

    def recording_fit(model, config, context, stage, offset, n_epochs, completed):
        sizes = (context.train_data.element_spec[0].shape[1], context.val_data.element_spec[0].shape[1])
        fits.append((*sizes, completed, n_epochs))
        return real_fit(model, config, context, stage, offset, n_epochs, completed)

    def recording_features(model, run_dir, name, images, input_size, flip=False):
        feature_sizes.append(input_size)
        return real_features(model, run_dir, name, images, input_size, flip)

    monkeypatch.setattr(stages, "fit_stage", recording_fit)
    monkeypatch.setattr(features, "cached_features", recording_features)
    config = recipe_config("lite0", n_epochs=1, fine_tune_epochs=3, low_res_epochs=2, low_res_size=32,
                           fine_tune_layers=3, input_size=48, batch_size=32, model_options={"weights": None})
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, tiny_dataset, verbose=0, callbacks=[stop_after_epoch(1)])
    assert fits == [(32, 32, 0, 2)]  # killed after the first low-resolution epoch
    resume(run_dir, tiny_dataset, verbose=0)
    assert fits[1:] == [(32, 32, 1, 2), (48, 48, 2, 3)]
    assert set(feature_sizes) == {32}  # the head learns on the features of the first fine-tune epochs
    assert [row["stage"] for row in runs.read_history(run_dir)] == ["head", "fine_tune", "fine_tune", "fine_tune"]
    assert runs.read_json(run_dir / "metrics.json")["input_size"] == 48
    saved, size = load_model_file(run_dir / "model.keras")
    assert size == 48  # served at the size it was finished at, and nothing else
    with pytest.raises(ValueError, match="incompatible"):
        saved(np.zeros((1, 32, 32, 3), "float32"))


def test_progressive_resizing_is_refused_for_a_one_stage_model_and_with_alternating_flips(tiny_dataset, tmp_path):
    from cifar_core.errors import ConfigError

    config = recipe_config("demo", input_size=32, fine_tune_epochs=1, low_res_epochs=1, low_res_size=16)
    with pytest.raises(ConfigError, match="transfer models"):
        train(config, tmp_path / "run", tiny_dataset, verbose=0)
    alternating = recipe_config("lite0", input_size=48, fine_tune_epochs=1, low_res_epochs=1, low_res_size=32,
                                augmentations=("altflip",))
    with pytest.raises(ConfigError, match="altflip cannot be combined with low_res_epochs"):
        train(alternating, tmp_path / "run", tiny_dataset, verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_the_tunable_layer_count_is_what_fine_tuning_can_unfreeze(variant):
    from cifar_core.models.transfer import lite_tunable_layers, unfreeze_top

    model = build_model(variant, 32, weights=None)
    unfreeze_top(model, 100_000)
    backbone = [layer for layer in model.layers if layer.trainable and layer.weights and layer.name != "predictions"]
    assert len(backbone) == lite_tunable_layers(variant)
