import numpy as np
import pytest

from cifar_core.errors import ConfigError
from cifar_core.models import build_model, get_spec, model_names


@pytest.mark.parametrize("size", [32, 64])
def test_g3_matches_the_study_exactly(size):
    from cifar_core.models.layers import FusedBatchNormalization, to_stock_layers

    trained = build_model("g3", size)
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in trained.layers) == 4
    model = to_stock_layers(trained)  # the network as saved: Keras' own layers only
    assert model.count_params() == trained.count_params() == 416_490
    layer_types = [type(layer).__name__ for layer in model.layers]
    assert layer_types == [
        "InputLayer", "Rescaling",
        "Conv2D", "BatchNormalization", "Dropout",
        "Conv2D", "BatchNormalization", "MaxPooling2D",
        "Conv2D", "BatchNormalization", "Dropout",
        "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout",
        "Conv2D",
        "Conv2D", "Dropout",
        "GlobalAveragePooling2D", "Dense", "Dropout", "Dense"]
    assert model.input_shape == (None, size, size, 3)
    assert model.get_layer("head_dropout").rate == 0.5


@pytest.mark.parametrize("name", ["g3", "fastnet", "demo"])
def test_homebrew_models_output_probabilities_and_name_their_gradcam_layer(name):
    model = build_model(name, num_classes=7)
    probs = np.asarray(model(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Grad-CAM needs a spatial feature map at that name: (batch, height, width, channels).
    assert len(model.get_layer(get_spec(name).last_conv_layer).output.shape) == 4


def test_whitening_layer_is_frozen_and_decorrelates_patches():
    from cifar_core.models.homebrew import init_whitening

    model = build_model("fastnet")
    images = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3)).astype(np.uint8)
    init_whitening(model, images)
    layer = model.get_layer("whiten")
    assert not layer.trainable
    kernel = layer.get_weights()[0]
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., :12], -kernel[..., 12:])


def test_fastnet_with_open_spatial_size_takes_several_resolutions():
    """The GPU sweep's progressive-resolution variants train one model at 24 and 32 px."""
    from cifar_core.models.homebrew import build_fastnet

    model = build_fastnet(input_shape=(None, None, 3))
    for size in (24, 32):
        probs = np.asarray(model(np.zeros((2, size, size, 3), "float32")))
        assert probs.shape == (2, 10)
    with pytest.raises(ConfigError, match="input_shape"):
        build_fastnet(input_shape=(None, 8, 3))


def test_unknown_model_and_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")
    with pytest.raises(ConfigError, match=r"input_shape.*\(8, 8, 3\)"):
        build_model("g3", 8)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("demo", num_classes=1)
    assert {"g3", "fastnet", "demo"} <= set(model_names())


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_build_and_train_on_other_keras_backends(backend):
    """Model code is Keras-only: it must run where that backend is installed."""
    import os
    import subprocess
    import sys

    pytest.importorskip(backend)
    from helpers import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "tests" / "backend_smoke.py")], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"{backend} ") == 4
