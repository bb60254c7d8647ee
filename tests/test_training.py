"""The run-folder contract, resume without gaps, and failures recorded in status."""
import csv
import json

import keras
import numpy as np
import pytest
from helpers import stop_after_epoch

from cifar_core import runs
from cifar_core.config import TrainConfig, recipe_config
from cifar_core.errors import ConfigError, RunFolderError
from cifar_core.training import resume, train

SMALL = dict(n_epochs=3, batch_size=32, val_fraction=0.25, early_stopping_patience=None)


def test_run_folder_contract(tiny_dataset, tmp_path):
    config = recipe_config("demo", **SMALL, limit=None)
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    for name in (runs.CONFIG_FILE, runs.DATA_FILE, runs.STATUS_FILE, runs.HISTORY_FILE, runs.METRICS_FILE,
                 runs.PREDICTIONS_FILE, runs.MODEL_FILE):
        assert (run_dir / name).is_file(), name
    assert TrainConfig.from_json((run_dir / "config.json").read_text()) == config
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(runs.HISTORY_COLUMNS) <= set(rows[0])
    assert all(float(r["seconds"]) > 0 and float(r["learning_rate"]) >= 0 and r["val_accuracy"] for r in rows)
    assert float(rows[0]["learning_rate"]) > float(rows[-1]["learning_rate"])  # one-cycle decays
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["progress"] == 1.0 and "heartbeat" in status

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("model", "data", "test_accuracy", "test_loss", "train_seconds", "per_class", "confusion_matrix",
                "test_accuracy_tta", "machine", "n_params"):
        assert key in metrics, key
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(tiny_dataset.y_test)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["test_accuracy"])
    assert set(metrics["per_class"]) == set(tiny_dataset.class_names)
    predictions = runs.read_predictions(run_dir)
    assert predictions["probs"].shape == (40, 10)
    np.testing.assert_array_equal(predictions["y_true"], tiny_dataset.y_test)
    assert (run_dir / "tb").is_dir() and any((run_dir / "tb").rglob("*tfevents*"))

    # Live points: at least one per epoch end, training seconds and epochs never going back.
    live = runs.read_live(run_dir)
    assert [p["epoch"] for p in live if p["epoch"] == int(p["epoch"])][-3:] == [1.0, 2.0, 3.0]
    assert all(a["train_seconds"] <= b["train_seconds"] and a["epoch"] <= b["epoch"]
               for a, b in zip(live, live[1:], strict=False))
    assert live[-1]["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), rel=1e-3)
    # Validation predictions after each epoch: the last epoch's agree with the final validation accuracy.
    saved = runs.read_epoch_predictions(run_dir)
    assert list(saved["epochs"]) == [1, 2, 3] and saved["predicted"].shape == (3, len(saved["y_true"]))
    assert np.mean(saved["predicted"][-1] == saved["y_true"]) == pytest.approx(float(rows[-1]["val_accuracy"]),
                                                                               abs=1e-6)


def test_interrupted_run_resumes_without_gaps_or_duplicates(tiny_dataset, tmp_path):
    config = recipe_config("demo", **SMALL, limit=None)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, tiny_dataset, verbose=0, callbacks=[stop_after_epoch(2)])
    status = runs.read_status(run_dir)
    assert status["state"] == "interrupted" and "resume" in status["message"]
    assert not (run_dir / runs.MODEL_FILE).exists()
    # A history row written after the last checkpoint (killed in between) must not survive.
    rows = runs.read_history(run_dir)
    runs.write_history(run_dir, rows + [dict(rows[-1], epoch=99)])

    resume(run_dir, tiny_dataset, verbose=0)
    assert [row["epoch"] for row in runs.read_history(run_dir)] == [1, 2, 3]
    assert list(runs.read_epoch_predictions(run_dir)["epochs"]) == [1, 2, 3]  # the killed run's epochs kept
    assert runs.read_status(run_dir)["state"] == "completed"
    with pytest.raises(RunFolderError, match="already completed"):
        resume(run_dir, tiny_dataset, verbose=0)


def test_resumed_schedule_continues_where_it_stopped(tiny_dataset, tmp_path):
    config = recipe_config("demo", **SMALL, limit=None).replace(schedule="onecycle")
    straight = train(config, tmp_path / "straight", tiny_dataset, verbose=0)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(config, broken, tiny_dataset, verbose=0, callbacks=[stop_after_epoch(1)])
    resume(broken, tiny_dataset, verbose=0)
    rates = [[row["learning_rate"] for row in runs.read_history(d)] for d in (straight, broken)]
    np.testing.assert_allclose(rates[0], rates[1], rtol=1e-5)


def test_existing_run_folder_is_not_overwritten(tiny_dataset, tmp_path):
    config = recipe_config("demo", **SMALL, limit=None).replace(n_epochs=1)
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(config, run_dir, tiny_dataset, verbose=0)


def test_failure_is_recorded_in_status(tiny_dataset, tmp_path):
    class Explode(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise OSError(28, "No space left on device")

    config = recipe_config("demo", **SMALL, limit=None)
    from cifar_core.errors import CifarError

    with pytest.raises(CifarError, match="No space left"):
        train(config, tmp_path / "run", tiny_dataset, verbose=0, callbacks=[Explode()])
    status = runs.read_status(tmp_path / "run")
    assert status["state"] == "failed" and "No space left on device" in status["message"]
    assert TrainConfig.from_json((tmp_path / "run" / "config.json").read_text()) == config


def test_limit_and_class_weights(tiny_dataset, tmp_path):
    config = recipe_config("demo", **SMALL, limit=40).replace(n_epochs=1, class_weights=True)
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    assert runs.read_json(run_dir / "metrics.json")["n_train"] == 30  # 40 minus 25% validation


def test_a_learnable_problem_is_learned(tiny_dataset, tmp_path):
    """Mean colour encodes the class; a few epochs must beat chance clearly."""
    config = recipe_config("demo", n_epochs=6, batch_size=16, val_fraction=0.0, limit=None,
                           learning_rate=1e-2, augmentations=())
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    assert runs.read_json(run_dir / "metrics.json")["test_accuracy"] >= 0.5


def test_long_predictions_keep_the_heartbeat_fresh(tmp_path, monkeypatch):
    from cifar_core.evaluation import predict_proba
    from cifar_core.models import build_model
    from cifar_core.training import callbacks

    monkeypatch.setattr(callbacks, "HEARTBEAT_SECONDS", 0.0)
    runs.write_status(tmp_path, "running", epoch=3, n_epochs=3)
    before = runs.read_status(tmp_path)["heartbeat"]
    images = np.zeros((8, 32, 32, 3), np.uint8)
    predict_proba(build_model("demo"), images, batch_size=2,
                  callbacks=[callbacks.PredictHeartbeat(tmp_path, "evaluate")])
    status = runs.read_status(tmp_path)
    assert status["stage"] == "evaluate" and status["epoch"] == 3 and status["heartbeat"] > before


@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", schedule="onecycle", ema_momentum=0.9, label_smoothing=0.2),
    dict(optimizer="adamw", schedule="plateau", early_stopping_patience=1, class_weights=True),
    dict(optimizer="adam", schedule="cosine", augmentations=("crop", "rotate", "zoom", "contrast")),
    dict(optimizer="muon", augmentations=("altflip", "crop")),
])
def test_every_optimizer_schedule_and_augmentation_trains(tiny_dataset, tmp_path, settings):
    config = recipe_config("demo", **SMALL, limit=None).replace(n_epochs=2, **settings)
    run_dir = train(config, tmp_path / "run", tiny_dataset, verbose=0)
    history = runs.read_history(run_dir)
    assert 1 <= len(history) <= 2 and all(np.isfinite(row["loss"]) for row in history)
    assert runs.read_status(run_dir)["state"] == "completed"


@pytest.mark.parametrize("repeated", [False, True], ids=["iterator per epoch", "one iterator (training's)"])
def test_fit_mirrors_the_image_in_alternate_epochs(repeated):
    """Keras opens each epoch's iterator early (or, as training runs it, keeps one iterator over
    the repeated data); the pipeline's own pass count still flips the right epochs. One
    left-bright image, a fixed model that calls it class 0 only when it is not mirrored."""
    from cifar_core.data.pipeline import AlternatingFlip, make_dataset

    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[:, :, 0] = 255
    flips = AlternatingFlip(1, random_state=0)
    flips.first_flips[:] = False
    dataset = make_dataset(image, np.zeros(1), 2, batch_size=1, alternating_flip=flips)
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    left_minus_right = np.tile([[1.0, -1.0]] * 3 + [[-1.0, 1.0]] * 3, (2, 1)) / 255  # per (row, col, channel)
    model.layers[-1].set_weights([left_minus_right, np.zeros(2)])
    model.compile(keras.optimizers.SGD(0.0), "categorical_crossentropy", metrics=["accuracy"])
    history = (model.fit(dataset.repeat(), steps_per_epoch=1, epochs=4, verbose=0) if repeated
               else model.fit(dataset, epochs=4, verbose=0))
    assert history.history["accuracy"] == [1.0, 0.0, 1.0, 0.0]


def test_mixed_bfloat16_run_trains_resumes_and_loads_back(tiny_dataset, tmp_path):
    """bf16 compute with float32 outputs: the run resumes, its model file passes the
    safe loader, predictions are float32 probabilities, and Grad-CAM still works."""
    from cifar_core.evaluation import predict_proba
    from cifar_core.explain import grad_cam
    from cifar_core.inference import load_run_model

    config = recipe_config("fastnet", **SMALL, precision="mixed_bfloat16", limit=None)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", tiny_dataset, verbose=0, callbacks=[stop_after_epoch(1)])
    assert keras.config.dtype_policy().name == "float32"  # the process-wide policy is put back
    run_dir = resume(tmp_path / "run", tiny_dataset, verbose=0)
    predictions = runs.read_predictions(run_dir)
    recomputed = float(np.mean(predictions["probs"].astype(np.float32).argmax(1) == predictions["y_true"]))
    assert runs.read_metrics(run_dir)["test_accuracy"] == pytest.approx(recomputed)
    assert [int(r["epoch"]) for r in csv.DictReader(open(run_dir / "history.csv"))] == [1, 2, 3]

    run = load_run_model(run_dir)
    assert run.model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert run.model.get_layer("predictions").compute_dtype == "float32"
    probs = predict_proba(run.model, tiny_dataset.x_test[:8], input_size=32)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    heatmap = grad_cam(run.model, tiny_dataset.x_test[:1].astype("float32"), "block3_act2")
    assert heatmap.dtype == np.float32 and 0.0 <= heatmap.min() and heatmap.max() <= 1.0


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        recipe_config("demo", precision="float16")


def test_the_records_finish_merges_never_overwrite_what_it_measured(tiny_dataset, tmp_path):
    """head.json and teacher.json add their own figures to metrics.json and nothing else: a record
    planted with a test accuracy (or a foreign field) does not change the measured one."""
    from cifar_core.models import build_model
    from cifar_core.training import distill
    from cifar_core.training.finish import finish_run

    run_dir = tmp_path / "run"
    runs.checkpoint_file(run_dir, "x").parent.mkdir(parents=True)
    forged = {"test_accuracy": 1.0, "n_params": 1, "epochs_run": 99, "forged": True}
    runs.atomic_write_json(runs.checkpoint_file(run_dir, runs.HEAD_STATS_FILE),
                           {"test_accuracy_head": 0.25, "stage_seconds": {"head": 3.0}, **forged})
    runs.atomic_write_json(runs.checkpoint_file(run_dir, distill.TEACHER_FILE),
                           {"teacher_run": "t", "teacher_model_sha256": "0" * 64, "teacher_seconds": 4.5, **forged})
    config = recipe_config("demo", **SMALL, limit=None)
    history = [{"epoch": 1, "stage": "train", "seconds": 2.0}]
    returned = finish_run(build_model("demo", 32, 10), config, run_dir, tiny_dataset, history, n_train=120)
    metrics = runs.read_metrics(run_dir)
    assert metrics == returned
    assert metrics["test_accuracy_head"] == 0.25 and metrics["teacher_seconds"] == 4.5
    assert metrics["epochs_run"] == 1 and metrics["n_params"] > 1000 and "forged" not in metrics
    # what the saved model scores on the test split, not the record's 1.0
    assert metrics["test_accuracy"] == pytest.approx(
        float(np.mean(runs.read_predictions(run_dir)["probs"].argmax(axis=1) == tiny_dataset.y_test)))
