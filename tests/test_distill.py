"""Distillation: a finished run's probabilities become part of a new run's training targets."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from cifar_core import runs
from cifar_core.config import TrainConfig, recipe_config
from cifar_core.errors import ConfigError, RunFolderError
from cifar_core.training import distill, train
from cifar_core.training.loop import make_split

SMALL = dict(n_epochs=1, batch_size=32, val_fraction=0.25, early_stopping_patience=None, limit=None)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished demo run on the tiny synthetic data (the module's teacher)."""
    from conftest import synthetic_images

    from cifar_core.data import Dataset

    x_train, y_train = synthetic_images(120, 10, seed=1)
    x_test, y_test = synthetic_images(40, 10, seed=2)
    dataset = Dataset(x_train, y_train, x_test, y_test, tuple(f"class{i}" for i in range(10)), "synthetic",
                      "synthetic (tests)")
    return train(recipe_config("demo", **SMALL), tmp_path_factory.mktemp("teacher") / "teacher", dataset,
                 verbose=0)


def test_a_distilled_run_records_its_teacher_and_counts_its_minutes(tiny_dataset, tmp_path, teacher):
    from cifar_core.evaluation import predict_proba
    from cifar_core.inference import load_run_model

    config = recipe_config("demo", **SMALL).replace(n_epochs=2, teacher=str(teacher), teacher_weight=0.5)
    run_dir = train(config, tmp_path / "student", tiny_dataset, verbose=0)

    split = make_split(tiny_dataset, config)
    expected = predict_proba(load_run_model(teacher).model, split.x_train, tta=True, input_size=32)
    stored = np.load(runs.checkpoint_file(run_dir, distill.TEACHER_PROBABILITIES_FILE))
    assert stored.shape == (len(split.y_train), 10) and np.allclose(stored, expected, atol=1e-5)
    metrics = runs.read_metrics(run_dir)
    model_hash = hashlib.sha256((teacher / runs.MODEL_FILE).read_bytes()).hexdigest()
    assert metrics["teacher_run"] == teacher.name and metrics["teacher_model_sha256"] == model_hash
    teacher_metrics = runs.read_metrics(teacher)
    assert metrics["teacher_test_accuracy"] == teacher_metrics["test_accuracy"]
    assert metrics["teacher_test_accuracy_tta"] == teacher_metrics["test_accuracy_tta"]
    history = runs.read_history(run_dir)
    assert history[0]["seconds"] >= metrics["teacher_seconds"] > 0  # the labelling counts as training
    assert metrics["train_seconds"] == pytest.approx(sum(row["seconds"] for row in history), abs=0.02)
    assert runs.read_config(run_dir) == config


def test_the_teachers_minutes_count_in_the_first_epoch_only(tiny_dataset, tmp_path, teacher, monkeypatch):
    monkeypatch.setattr(distill, "lead_seconds", lambda run_dir: 1000.0)
    config = recipe_config("demo", **SMALL).replace(n_epochs=2, teacher=str(teacher))
    history = runs.read_history(train(config, tmp_path / "student", tiny_dataset, verbose=0))
    assert history[0]["seconds"] >= 1000.0 > history[1]["seconds"]
    live = runs.read_live(tmp_path / "student")
    assert live[-1]["train_seconds"] >= 1000.0


def test_the_student_learns_what_the_teacher_says(tiny_dataset, tmp_path, monkeypatch):
    """A teacher that names the next class for every image, at full weight: the student learns
    the teacher's mapping, not the labels (the targets reach the training pipeline)."""
    def shifted(*args):
        return np.eye(10, dtype=np.float32)[(labels + 1) % 10]

    config = recipe_config("demo", n_epochs=6, batch_size=16, val_fraction=0.0, limit=None, learning_rate=1e-2,
                           augmentations=(), label_smoothing=0.0, teacher="anything", teacher_weight=1.0)
    labels = make_split(tiny_dataset, config).y_train
    monkeypatch.setattr(distill, "_label_with_teacher", shifted)
    monkeypatch.setattr(distill, "check_config", lambda config, transfer: None)
    run_dir = train(config, tmp_path / "student", tiny_dataset, verbose=0)
    predicted = np.load(run_dir / runs.PREDICTIONS_FILE)["probs"].argmax(axis=1)
    assert np.mean(predicted == (tiny_dataset.y_test + 1) % 10) >= 0.5
    assert np.mean(predicted == tiny_dataset.y_test) < 0.2


def _stored(run_dir, probabilities, stats=None):
    path = runs.checkpoint_file(run_dir, distill.TEACHER_PROBABILITIES_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, probabilities)
    runs.atomic_write_json(runs.checkpoint_file(run_dir, distill.TEACHER_FILE), stats or {
        "teacher_run": "t", "teacher_model_sha256": "0" * 64, "teacher_seconds": 12.5})


def _probabilities(n=6, k=3, seed=0):
    raw = np.random.default_rng(seed).random((n, k)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


def test_targets_mix_the_label_and_the_teacher_by_the_weight_and_reuse_a_sound_cache(tmp_path, monkeypatch):
    assert distill.lead_seconds(tmp_path) == 0.0  # no teacher, nothing before the first epoch
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = _probabilities()
    probabilities[0] = [1.0, 0.0, 0.0]  # a certain teacher is a sound one
    probabilities[1] *= 1.0005  # and a bf16 softmax's rounding is within tolerance
    _stored(tmp_path, probabilities)
    monkeypatch.setattr(distill, "_label_with_teacher", lambda *args: pytest.fail("the cache was not reused"))
    config = TrainConfig(model="demo", teacher="t", teacher_weight=0.25)
    targets = distill.training_targets(config, tmp_path, labels, np.zeros((6, 32, 32, 3), np.uint8),
                                       ("a", "b", "c"), 32)
    assert targets.dtype == np.float32
    assert np.allclose(targets, 0.75 * np.eye(3)[labels] + 0.25 * probabilities)
    assert distill.lead_seconds(tmp_path) == 12.5
    assert distill.training_targets(config.replace(teacher=None), tmp_path, labels, None, ("a", "b", "c"), 32) is None


def _nan(p):
    p[2, 1] = np.nan
    return p


def _negative(p):
    p[0] = [1.5, -0.5, 0.0]
    return p


DAMAGED_CACHES = {
    "wrong number of images": lambda p: p[:-1],
    "wrong number of classes": lambda p: p[:, :2],
    "not a probability row": lambda p: p * 2,
    "negative": _negative,
    "not finite": _nan,
    "float64": lambda p: p.astype(np.float64),
    "object array": lambda p: p.astype(object),
}


@pytest.mark.parametrize("damage", DAMAGED_CACHES.values(), ids=DAMAGED_CACHES.keys())
def test_a_damaged_cache_is_labelled_afresh(tmp_path, monkeypatch, damage):
    fresh = _probabilities(seed=1)
    if damage is DAMAGED_CACHES["object array"]:
        path = runs.checkpoint_file(tmp_path, distill.TEACHER_PROBABILITIES_FILE)
        path.parent.mkdir(parents=True)
        np.save(path, damage(_probabilities()), allow_pickle=True)
        runs.atomic_write_json(runs.checkpoint_file(tmp_path, distill.TEACHER_FILE), {
            "teacher_run": "t", "teacher_model_sha256": "0" * 64, "teacher_seconds": 1.0})
    else:
        _stored(tmp_path, damage(_probabilities()))
    monkeypatch.setattr(distill, "_label_with_teacher", lambda *args: fresh)
    config = TrainConfig(model="demo", teacher="t", teacher_weight=1.0)
    targets = distill.training_targets(config, tmp_path, np.zeros(6, int), None, ("a", "b", "c"), 32)
    assert np.allclose(targets, fresh)


def test_a_cache_without_a_sound_record_or_behind_a_link_is_labelled_afresh(tmp_path, monkeypatch):
    fresh = _probabilities(seed=1)
    monkeypatch.setattr(distill, "_label_with_teacher", lambda *args: fresh)
    config = TrainConfig(model="demo", teacher="t", teacher_weight=1.0)
    _stored(tmp_path, _probabilities())
    runs.checkpoint_file(tmp_path, distill.TEACHER_FILE).unlink()
    assert np.allclose(distill.training_targets(config, tmp_path, np.zeros(6, int), None, "abc", 32), fresh)

    _stored(tmp_path, _probabilities(), {"teacher_run": "t", "teacher_model_sha256": "x", "teacher_seconds": "soon"})
    assert np.allclose(distill.training_targets(config, tmp_path, np.zeros(6, int), None, "abc", 32), fresh)

    _stored(tmp_path, _probabilities())
    path = runs.checkpoint_file(tmp_path, distill.TEACHER_PROBABILITIES_FILE)
    elsewhere = tmp_path / "elsewhere.npy"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    assert np.allclose(distill.training_targets(config, tmp_path, np.zeros(6, int), None, "abc", 32), fresh)


def test_a_damaged_teacher_record_is_refused_with_its_reason(tmp_path):
    _stored(tmp_path, _probabilities(), {"teacher_run": "t", "teacher_model_sha256": "x", "teacher_seconds": "soon"})
    with pytest.raises(RunFolderError, match="teacher_seconds"):
        distill.lead_seconds(tmp_path)


def test_teacher_settings_are_refused_before_a_run_folder_exists(tiny_dataset, tmp_path, teacher):
    cases = {
        "a transfer model": (recipe_config("lite0", teacher=str(teacher)), "homebrew models"),
        "not a finished run": (recipe_config("demo", **SMALL, teacher=str(tmp_path / "nothing")), "not a finished run"),
        "distributed": (recipe_config("demo", **SMALL, teacher=str(teacher), distribute="mirrored",
                                      schedule="onecycle", augmentations=("flip",)),
                        r"^teacher cannot be combined with --distribute \(each worker would label its own share\)$"),
    }
    for name, (config, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            train(config, tmp_path / name, tiny_dataset, verbose=0)
        assert not (tmp_path / name).exists(), name
    for weight in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="teacher_weight"):
            TrainConfig(model="demo", teacher="t", teacher_weight=weight)
    with pytest.raises(ConfigError, match="teacher"):
        TrainConfig(model="demo", teacher="")


def test_a_teacher_is_named_by_its_run_or_by_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "studio-runs"))
    assert distill.teacher_dir("lite0-224-prog-cifar10") == tmp_path / "studio-runs" / "lite0-224-prog-cifar10"
    assert distill.teacher_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert distill.teacher_dir("./x") == Path("x") and distill.teacher_dir("..") == Path("..")


@pytest.mark.parametrize("mismatch", ["classes", "image size"])
def test_a_teacher_for_other_data_fails_the_run_with_its_reason(tiny_dataset, tmp_path, teacher, mismatch):
    from cifar_core.data import Dataset

    if mismatch == "classes":
        data = Dataset(tiny_dataset.x_train, tiny_dataset.y_train, tiny_dataset.x_test, tiny_dataset.y_test,
                       tuple(f"other{i}" for i in range(10)), "synthetic", "synthetic (tests)")
        message = "knows the classes"
    else:
        def bigger(x):
            return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)

        data = Dataset(bigger(tiny_dataset.x_train), tiny_dataset.y_train, bigger(tiny_dataset.x_test),
                       tiny_dataset.y_test, tiny_dataset.class_names, "synthetic", "synthetic (tests)")
        message = "32 px images"
    config = recipe_config("demo", **SMALL, teacher=str(teacher))
    with pytest.raises(RunFolderError, match=message):
        train(config, tmp_path / "student", data, verbose=0)
    assert runs.read_status(tmp_path / "student")["state"] == "failed"


@pytest.mark.parametrize("altflip", [False, True], ids=["shuffled", "alternating flip"])
def test_the_pipeline_passes_targets_through_as_they_are(altflip):
    from cifar_core.data.pipeline import AlternatingFlip, make_dataset

    images = np.zeros((5, 8, 8, 3), np.uint8)
    targets = _probabilities(5, 4)
    flips = AlternatingFlip(5, 0) if altflip else None
    dataset = make_dataset(images, targets, 4, 5, shuffle=False, alternating_flip=flips)
    _, batch_targets = next(iter(dataset))
    assert batch_targets.dtype.name == "float32" and np.allclose(np.asarray(batch_targets), targets)
    _, labels = next(iter(make_dataset(images, np.array([0, 1, 2, 3, 0]), 4, 5)))
    assert np.array_equal(np.asarray(labels), np.eye(4)[[0, 1, 2, 3, 0]])


def test_the_teachers_probabilities_are_stored_as_distributions(tmp_path, teacher, monkeypatch):
    """Whatever the teacher's output sums to (a bf16 softmax is off by ~1e-3), each stored row is a
    distribution over the classes, in float32."""
    from cifar_core import evaluation

    monkeypatch.setattr(evaluation, "predict_proba", lambda model, images, **kwargs: np.full((len(images), 10), 0.2))
    run_dir = tmp_path / "student"
    runs.write_status(run_dir, "running")
    stored = distill._label_with_teacher(str(teacher), run_dir, np.zeros((3, 32, 32, 3), np.uint8),
                                         tuple(f"class{i}" for i in range(10)), 32)
    assert stored.dtype == np.float32 and np.allclose(stored, 0.1)
    assert np.allclose(np.load(runs.checkpoint_file(run_dir, distill.TEACHER_PROBABILITIES_FILE)), 0.1)


def test_the_teacher_labels_at_its_own_input_size_with_a_heartbeat_and_a_timed_record(tmp_path, teacher,
                                                                                       monkeypatch):
    from cifar_core import evaluation
    from cifar_core.inference import load_run_model
    from cifar_core.training.callbacks import PredictHeartbeat

    asked = {}

    def predict_proba(model, images, **kwargs):
        asked.update(kwargs)
        return np.full((len(images), 10), 0.1)

    clock = iter([100.0, 103.4567])
    monkeypatch.setattr(evaluation, "predict_proba", predict_proba)
    monkeypatch.setattr(distill.time, "perf_counter", lambda: next(clock))
    run_dir = tmp_path / "student"
    distill._label_with_teacher(str(teacher), run_dir, np.zeros((3, 32, 32, 3), np.uint8),
                                tuple(f"class{i}" for i in range(10)), 32)
    assert asked["tta"] is True and asked["input_size"] == load_run_model(teacher).input_size
    [heartbeat] = asked["callbacks"]
    assert isinstance(heartbeat, PredictHeartbeat) and heartbeat.stage == "teacher" and heartbeat.run_dir == run_dir
    assert distill.read_stats(run_dir)["teacher_seconds"] == 3.46


def test_a_teacher_record_s_damage_names_the_run(tmp_path):
    _stored(tmp_path, _probabilities(), {"teacher_run": "t", "teacher_model_sha256": "x", "teacher_seconds": "soon"})
    with pytest.raises(RunFolderError, match=f"^{distill.TEACHER_FILE} in {tmp_path.name}: teacher_seconds "):
        distill.read_stats(tmp_path)


def test_a_teacher_record_brings_only_the_teacher_s_fields(tmp_path):
    stats = {"teacher_run": "t", "teacher_model_sha256": "0" * 64, "teacher_seconds": 12.5}
    _stored(tmp_path, _probabilities(), {**stats, "test_accuracy": 1.0, "n_train": 1})
    assert distill.read_stats(tmp_path) == stats
