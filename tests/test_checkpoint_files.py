"""A run's training checkpoint may come from someone else's run folder: before Keras loads it to
resume, it gets the bounds every model file gets, with a checkpoint's training objects allowed."""
import json
import re
import shutil
import zipfile

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


# --- the checkpoint's state: held to the rules of the run files it feeds -------------------------------

def _row(epoch: int, **fields) -> dict:
    return {"epoch": epoch, "stage": "train", "loss": 1.5, "accuracy": 0.5, "val_loss": None,
            "val_accuracy": None, "learning_rate": 0.01, "seconds": 3.0, **fields}


def _write_state(run_dir, **fields) -> None:

    folder = checkpoint.checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    history = fields.get("history", [_row(1), _row(2)])
    state = {"epochs_completed": len(history) if isinstance(history, list) else 2,
             "model_file": "epoch-0002.keras", "history": history, "training_done": False, **fields}
    with zipfile.ZipFile(folder / "epoch-0002.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    (folder / checkpoint.STATE_NAME).write_text(json.dumps(state))


def test_a_sound_state_is_read_whole(tmp_path):
    history = [_row(1, stage="head"), _row(2, stage="fine_tune", loss=float("nan"), accuracy=None)]
    _write_state(tmp_path / "run", history=history, training_done=True)
    state = checkpoint.load_state(tmp_path / "run")
    assert state["training_done"] is True and state["model_file"] == "epoch-0002.keras"
    assert [row["stage"] for row in state["history"]] == ["head", "fine_tune"]
    _write_state(tmp_path / "older")
    path = checkpoint.checkpoint_dir(tmp_path / "older") / checkpoint.STATE_NAME
    older = json.loads(path.read_text())
    del older["training_done"]  # written before the field existed: absent means not done
    path.write_text(json.dumps(older))
    assert "training_done" not in checkpoint.load_state(tmp_path / "older")


def test_a_run_that_never_checkpointed_has_no_state(tmp_path):
    assert checkpoint.load_state(tmp_path / "run") is None


@pytest.mark.parametrize("fields,problem", [
    ({"model_file": "../model.keras"}, "model_file is '../model.keras'"),
    ({"model_file": "epoch-2.keras"}, "model_file is 'epoch-2.keras'"),
    ({"model_file": 2}, "model_file is 2"),
    ({"training_done": "no"}, "training_done is 'no'"),
    ({"training_done": 1}, "training_done is 1"),
    ({"history": {"1": _row(1)}}, "the history is dict, not a list"),
    ({"history": None}, "the history is NoneType, not a list"),
    ({"history": [_row(1), 2]}, "history row 2 is int, not an object"),
    ({"history": [_row(2), _row(1)]}, "history row 1 has epoch 2"),
    ({"history": [_row(1), _row(1)]}, "history row 2 has epoch 1"),
    ({"history": [_row(True)]}, "history row 1 has epoch True"),
    ({"history": [_row(1.0)]}, "history row 1 has epoch 1.0"),
    ({"history": [_row("1")]}, "history row 1 has epoch '1'"),
    ({"history": [{"stage": "train"}]}, "history row 1 has epoch None"),
    ({"history": [_row(1, stage="warmup")]}, "history row 1: stage is 'warmup'"),
    ({"history": [_row(1, stage=["train"])]}, "history row 1: stage is ['train']"),
    ({"history": [_row(1, loss="0.5")]}, "history row 1: loss is '0.5'"),
    ({"history": [_row(1), _row(2, seconds=[3])]}, "history row 2: seconds is [3]"),
    ({"history": [_row(1, val_accuracy=True)]}, "history row 1: val_accuracy is True"),
])
def test_a_state_that_breaks_a_rule_is_refused_naming_the_rule(tmp_path, fields, problem):
    _write_state(tmp_path / "run", **fields)
    with pytest.raises(RunFolderError) as caught:
        checkpoint.load_state(tmp_path / "run")
    assert str(caught.value) == f"run's checkpoint (state.json) is damaged: {problem}; start a new run"


@pytest.mark.parametrize("state", [[], "state", 3])
def test_a_state_that_is_not_an_object_is_refused(tmp_path, state):
    _write_state(tmp_path / "run")
    (checkpoint.checkpoint_dir(tmp_path / "run") / checkpoint.STATE_NAME).write_text(json.dumps(state))
    with pytest.raises(RunFolderError, match=rf"^run's checkpoint \(state.json\) is damaged: it holds "
                                             rf"{type(state).__name__}, not an object; start a new run$"):
        checkpoint.load_state(tmp_path / "run")


@pytest.mark.parametrize("completed", [3, 1, True, "2", None, 2.0])
def test_the_epoch_count_must_be_the_history_s_length(tmp_path, completed):
    history = [_row(1)] if completed is True else [_row(1), _row(2)]
    _write_state(tmp_path / "run", history=history, epochs_completed=completed)
    with pytest.raises(RunFolderError, match=rf"^run's checkpoint lists {len(history)} epochs but says "
                                             rf"{re.escape(repr(completed))} completed; start a new run$"):
        checkpoint.load_state(tmp_path / "run")


def test_the_model_file_a_state_names_must_be_there_and_a_zip(tmp_path):
    _write_state(tmp_path / "run")
    model = checkpoint.checkpoint_dir(tmp_path / "run") / "epoch-0002.keras"
    model.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunFolderError, match=r"^run's checkpoint model epoch-0002.keras is unreadable \(truncated\?\)"):
        checkpoint.load_state(tmp_path / "run")
    model.unlink()
    with pytest.raises(RunFolderError, match="^run's checkpoint names epoch-0002.keras, which is missing"):
        checkpoint.load_state(tmp_path / "run")


def test_saving_names_the_epoch_points_the_state_at_it_and_drops_the_older_file(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    run_dir = tmp_path / "run"
    checkpoint.save(run_dir, model, [_row(1)])
    checkpoint.save(run_dir, model, [_row(1), _row(2)])
    folder = checkpoint.checkpoint_dir(run_dir)
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0002.keras", "state.json"]
    assert checkpoint.load_state(run_dir) == {"epochs_completed": 2, "model_file": "epoch-0002.keras",
                                              "history": [_row(1), _row(2)], "training_done": False}
    checkpoint.save(run_dir, model, [_row(1), _row(2)], training_done=True)
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0002-final.keras", "state.json"]
    state = checkpoint.load_state(run_dir)
    assert state["training_done"] is True and state["model_file"] == "epoch-0002-final.keras"
    assert checkpoint.load_model(run_dir, state).get_weights()[0].tolist() == model.get_weights()[0].tolist()


def test_a_checkpoint_keras_cannot_load_is_one_refusal_naming_the_error(tmp_path, monkeypatch):
    """Past the bounding check, Keras may still fail in many ways (a zip without its weights): each
    is one RunFolderError that names the run, the file and the kind of failure."""
    _write_state(tmp_path / "run")
    monkeypatch.setattr(checkpoint, "check_checkpoint_file", lambda path: None)

    def fail(path, **kwargs):
        raise KeyError("model.weights.h5")

    monkeypatch.setattr(keras.models, "load_model", fail)
    with pytest.raises(RunFolderError) as caught:
        checkpoint.load_model(tmp_path / "run", checkpoint.load_state(tmp_path / "run"))
    assert str(caught.value) == "run's checkpoint model epoch-0002.keras is unreadable (KeyError); it cannot be resumed"


def test_an_older_checkpoint_gone_before_its_removal_is_no_error(tmp_path, monkeypatch):
    """Another process (a second resume, a clean-up) may remove an old epoch file between the listing
    and the removal: the save has already succeeded, so that is not a failure."""
    from pathlib import Path

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*real_glob(self, pattern), self / "epoch-0001.keras"])
    checkpoint.save(tmp_path / "run", model, [_row(1), _row(2)])
    assert checkpoint.load_state(tmp_path / "run")["model_file"] == "epoch-0002.keras"
