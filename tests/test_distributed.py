"""--distribute (#18): tf.distribute in a custom step; two real worker processes on localhost."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, free_port, png_bytes

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.errors import ConfigError
from cifar_core.training import distributed


def _tf_config(kind="worker", index=0, workers=2, chief=False):
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_tf_config_is_read_and_checked():
    assert distributed.cluster_task(_tf_config(index=1))[:2] == ("worker", 1)
    for environ in ({}, {"TF_CONFIG": "{not json"}, {"TF_CONFIG": '{"cluster": {}}'},
                    _tf_config(index=2), _tf_config(kind="ps"), {"TF_CONFIG": "x" * 70_000},
                    {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker",
                                                                                       "index": "0"}})}):
        with pytest.raises(ConfigError, match="TF_CONFIG"):
            distributed.cluster_task(environ)


def test_the_chief_is_the_chief_task_or_worker_zero():
    assert distributed.is_chief("multi-worker", _tf_config(index=0))
    assert not distributed.is_chief("multi-worker", _tf_config(index=1))
    assert not distributed.is_chief("multi-worker", _tf_config(index=0, chief=True))
    assert distributed.is_chief("multi-worker", _tf_config(kind="chief", chief=True))
    assert distributed.is_chief("none", {}) and distributed.is_chief("mirrored", {})


@pytest.mark.parametrize("settings, problem", [
    (dict(model="lite0"), "transfer"), (dict(schedule="plateau"), "plateau"),
    (dict(early_stopping_patience=3), "early stopping"), (dict(augmentations=("altflip",)), "altflip"),
    (dict(class_weights=True), "class weights")])
def test_what_the_custom_step_cannot_do_is_refused_up_front(settings, problem):
    model = settings.pop("model", "demo")
    config = recipe_config(model, distribute="mirrored", **settings)
    with pytest.raises(ConfigError, match=problem):
        distributed.check_config(config, transfer=model == "lite0")
    distributed.check_config(recipe_config("demo", distribute="mirrored"), transfer=False)
    with pytest.raises(ConfigError, match="distribute must be one of"):
        recipe_config("demo", distribute="horovod")


def test_mirrored_trains_in_the_custom_step_and_resumes(tiny_dataset, tmp_path, monkeypatch):
    from cifar_core.training import checkpoint, resume, train

    config = recipe_config("demo", n_epochs=3, batch_size=32, limit=None, val_fraction=0.0, distribute="mirrored")
    stop_after_two = []

    def interrupt(run_dir, model, history, training_done=False):
        saved(run_dir, model, history, training_done)
        if len(history) == 2 and not stop_after_two:
            stop_after_two.append(1)
            raise KeyboardInterrupt

    saved = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", dataset=tiny_dataset, verbose=0)
    assert runs.read_status(tmp_path / "run")["state"] == "interrupted"
    assert checkpoint.load_state(tmp_path / "run")["epochs_completed"] == 2
    run_dir = resume(tmp_path / "run", dataset=tiny_dataset, verbose=0)
    history = runs.read_history(run_dir)
    assert [row["epoch"] for row in history] == [1, 2, 3] and runs.read_status(run_dir)["state"] == "completed"
    assert history[2]["loss"] < history[0]["loss"]  # it learns, across the resume
    assert runs.read_config(run_dir).distribute == "mirrored"


@pytest.fixture
def photo_folder(tmp_path):
    """An image folder both workers read: 3 classes told apart by colour."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("test", 24)):
        for c, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (32, 32, 3))
                pixels[..., c] += 120
                (root / split / name / f"{i}.png").write_bytes(png_bytes(pixels.astype(np.uint8)))
    return root


def _train_command(folder, run_dir, distribute):
    return [sys.executable, "-m", "cifar_core", "train", "--model", "demo", "--data", str(folder),
            "--run-dir", str(run_dir), "--limit", "288", "--epochs", "2", "--batch-size", "48",
            "--val-fraction", "0", "--distribute", distribute]


@pytest.mark.integration
def test_two_workers_on_localhost_train_like_one_process(photo_folder, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run_dir = tmp_path / "two-workers"
    env = {**os.environ, "CIFAR_CORE_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    workers = [subprocess.Popen(_train_command(photo_folder, run_dir, "multi-worker"), cwd=ROOT,
                                env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                     "task": {"type": "worker", "index": i}})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    single = subprocess.run(_train_command(photo_folder, tmp_path / "one", "none"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    # The chief's run folder is complete and reads back; the other worker left nothing in it.
    assert runs.read_status(run_dir)["state"] == "completed"
    assert runs.read_config(run_dir).distribute == "multi-worker"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    from cifar_core.inference import load_run_model

    load_run_model(run_dir)
    # Same global batch, same data, same seed: the same learning, within what per-worker batch
    # statistics and augmentation draws change.
    two, one = runs.read_history(run_dir), runs.read_history(tmp_path / "one")
    assert len(two) == len(one) == 2
    for a, b in zip(two, one, strict=True):
        assert abs(a["loss"] - b["loss"]) < 0.15 * b["loss"], (two, one)
    accuracy = [runs.read_metrics(r)["test_accuracy"] for r in (run_dir, tmp_path / "one")]
    assert abs(accuracy[0] - accuracy[1]) <= 0.15, accuracy
