"""A run's training checkpoint may come from someone else's run folder: before Keras loads it to
resume, it gets the bounds every model file gets, with a checkpoint's training objects allowed."""
import shutil

import keras
import pytest
from helpers import rewrite_keras_config, stop_after_epoch

from cifar_core.config import recipe_config
from cifar_core.errors import ModelFileError, RunFolderError
from cifar_core.models import loading
from cifar_core.models.loading import check_checkpoint_file, check_model_file
from cifar_core.training import checkpoint, resume, train

SMALL = dict(n_epochs=2, batch_size=32, val_fraction=0.25, early_stopping_patience=None)


@pytest.fixture(scope="module")
def interrupted_fastnet(tmp_path_factory):
    """fastnet stopped after epoch 1: its checkpoint holds this package's fused BatchNorm, TanhGelu,
    FilterMuon and OneCycle, and Keras' loss and metric."""
    from conftest import synthetic_images

    from cifar_core.data import Dataset

    x_train, y_train = synthetic_images(96, 10, seed=1)
    x_test, y_test = synthetic_images(20, 10, seed=2)
    dataset = Dataset(x_train, y_train, x_test, y_test, tuple(f"class{i}" for i in range(10)), "synthetic",
                      "synthetic (tests)")
    run_dir = tmp_path_factory.mktemp("checkpoints") / "fastnet"
    with pytest.raises(KeyboardInterrupt):
        train(recipe_config("fastnet", **SMALL), run_dir, dataset, verbose=0, callbacks=[stop_after_epoch(1)])
    state = checkpoint.load_state(run_dir)
    return run_dir, checkpoint.checkpoint_dir(run_dir) / state["model_file"], dataset


def _layers(config: dict, class_name: str) -> list[dict]:
    return [layer for layer in config["config"]["layers"] if layer["class_name"] == class_name]


def test_a_real_checkpoint_passes_and_the_inference_check_still_refuses_it(interrupted_fastnet):
    _, path, _ = interrupted_fastnet
    config = check_checkpoint_file(path)
    registered = {node["registered_name"] for node in [config["compile_config"]["optimizer"],
                                                       *_layers(config, "FusedBatchNormalization"),
                                                       *_layers(config, "TanhGelu")]}
    assert registered == {"cifar_core>FilterMuon", "cifar_core>FusedBatchNormalization", "cifar_core>TanhGelu"}
    with pytest.raises(ModelFileError, match="refusing layer or object"):
        check_model_file(path)  # a model file for inference stays built-in layers only


def test_the_weights_of_registered_layers_are_counted_as_keras_counts_them(interrupted_fastnet, monkeypatch):
    """The fused BatchNorm is bounded as the BatchNormalization it extends: its declared count is exact."""
    run_dir, path, _ = interrupted_fastnet
    model = checkpoint.load_model(run_dir, checkpoint.load_state(run_dir))
    fused = _layers(check_checkpoint_file(path), "FusedBatchNormalization")
    declared = [loading._layer_params(node, path.name, loading._check_checkpoint_class(node, path.name))
                for node in fused]
    assert declared == [model.get_layer(node["config"]["name"]).count_params() for node in fused]
    assert min(declared) > 0
    monkeypatch.setattr(loading, "MAX_PARAMS", model.count_params() - 1)
    with pytest.raises(ModelFileError, match=f"^{path.name}: the layers declare more than "):
        check_checkpoint_file(path)


def test_a_registered_layer_gets_the_size_limits_of_its_keras_class(interrupted_fastnet, tmp_path):
    _, path, _ = interrupted_fastnet

    def huge_batchnorm(config):
        _layers(config, "FusedBatchNormalization")[0]["build_config"]["input_shape"] = [None, 4096, 4096, 64]
        return config

    bad = rewrite_keras_config(path, tmp_path / path.name, huge_batchnorm)
    with pytest.raises(ModelFileError, match="^epoch-0001.keras: layer FusedBatchNormalization declares the input "
                                             "shape"):
        check_checkpoint_file(bad)

    def wide_gelu(config):
        _layers(config, "TanhGelu")[0]["config"]["units"] = 9000
        return config

    with pytest.raises(ModelFileError, match="^epoch-0001.keras: layer TanhGelu declares units 9000; the limit "):
        check_checkpoint_file(rewrite_keras_config(path, tmp_path / path.name, wide_gelu))


@pytest.mark.parametrize("module,class_name,registered,allowed", [
    ("cifar_core.models.layers", "FusedBatchNormalization", "cifar_core>FusedBatchNormalization", True),
    ("cifar_core.training.schedules", "OneCycle", "cifar_core>OneCycle", True),
    ("cifar_core.training.optimizers", "FilterMuon", "cifar_core>FilterMuon", True),
    ("keras.optimizers", "Adam", None, True), ("keras.losses", "CategoricalCrossentropy", None, True),
    ("keras.metrics", "CategoricalAccuracy", None, True), ("keras.optimizers.schedules", "CosineDecay", None, True),
    ("keras.optimizers", "Adam", "my>Adam", False), ("keras.layers", "Lambda", None, False),
    ("cifar_core.models.layers", "Unknown", "cifar_core>Unknown", False),
    ("os", "FusedBatchNormalization", "cifar_core>FusedBatchNormalization", False),
    ("cifar_core.models.layers", "TanhGelu", "cifar_core>FusedBatchNormalization", False),
    ("evil", "Payload", "evil>Payload", False), ("cifar_core.models.layers", "FusedBatchNormalization", None, False),
])
def test_the_checkpoint_allow_list(module, class_name, registered, allowed):
    node = {"module": module, "class_name": class_name, "registered_name": registered}
    if allowed:
        loading._check_checkpoint_class(node, "epoch.keras")
    else:
        with pytest.raises(ModelFileError, match=rf"^epoch.keras: refusing (layer or object )?{module}\.{class_name}"):
            loading._check_checkpoint_class(node, "epoch.keras")


def test_resuming_an_oversized_checkpoint_is_refused_before_keras_allocates(interrupted_fastnet, tmp_path,
                                                                           monkeypatch):
    run_dir, path, dataset = interrupted_fastnet
    shared = tmp_path / "shared-run"
    shutil.copytree(run_dir, shared)

    def wide_head(config):
        _layers(config, "Dense")[-1]["config"]["units"] = 9000
        return config

    rewrite_keras_config(path, shared / "checkpoint" / path.name, wide_head)
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: pytest.fail("Keras saw the file"))
    with pytest.raises(RunFolderError, match=rf"^shared-run's checkpoint cannot be resumed: {path.name}: layer "
                                             "Dense declares units 9000; the limit is 8192$"):
        resume(shared, dataset, verbose=0)


def test_resuming_a_checkpoint_with_a_foreign_class_is_refused(interrupted_fastnet, tmp_path):
    run_dir, path, dataset = interrupted_fastnet
    shared = tmp_path / "shared-run"
    shutil.copytree(run_dir, shared)

    def foreign_optimizer(config):
        config["compile_config"]["optimizer"].update(module="evil", registered_name="evil>FilterMuon")
        return config

    rewrite_keras_config(path, shared / "checkpoint" / path.name, foreign_optimizer)
    with pytest.raises(RunFolderError, match="^shared-run's checkpoint cannot be resumed: .*refusing .*evil"):
        resume(shared, dataset, verbose=0)
    control = tmp_path / "control-run"
    shutil.copytree(run_dir, control)
    resume(control, dataset, verbose=0)  # the control: the run as written resumes and completes
