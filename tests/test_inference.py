"""Using a finished run (cifar_core/inference.py): loading its model, classifying photos, re-measuring
it, and the dashboard's one shared copy of each model. A tiny model saved by hand, no training."""
import shutil
import threading

import numpy as np
import pytest
from helpers import png_bytes

from cifar_core import inference, runs
from cifar_core.config import TrainConfig
from cifar_core.data.sources import Dataset
from cifar_core.errors import ConfigError, ImageDecodeError, ModelFileError, RunFolderError

CLASSES = ("cat", "dog", "ship")
CONFIG = TrainConfig(model="demo", data="the-run-s-own-data", tta=True)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A demo network for three classes, saved as the studio saves one."""
    from cifar_core.models import build_model
    from cifar_core.models.layers import to_stock_layers

    path = tmp_path_factory.mktemp("model") / runs.MODEL_FILE
    to_stock_layers(build_model("demo", num_classes=len(CLASSES))).save(path)
    return path


@pytest.fixture
def run_dir(saved_model, tmp_path):
    """A finished run folder: its model, config, data record and figures."""
    folder = tmp_path / "finished-run"
    folder.mkdir()
    shutil.copy(saved_model, folder / runs.MODEL_FILE)
    runs.atomic_write_text(folder / runs.CONFIG_FILE, CONFIG.to_json())
    runs.atomic_write_json(folder / runs.DATA_FILE, {"class_names": list(CLASSES), "image_size": 24})
    runs.atomic_write_json(folder / runs.METRICS_FILE, {"test_accuracy": 0.01, "train_seconds": 12.5})
    return folder


def _test_split(n: int = 6, size: int = 24, classes=CLASSES) -> Dataset:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % len(classes)
    return Dataset(images, labels, images, labels, tuple(classes), "source", "six test images")


@pytest.fixture
def loaded_data(monkeypatch):
    """load_dataset answering with a small split, and what it was asked for."""
    from cifar_core import data

    asked = []
    split = _test_split()
    monkeypatch.setattr(data, "load_dataset", lambda source, image_size: asked.append((source, image_size)) or split)
    return split, asked


# --- loading ------------------------------------------------------------------------------------

def test_a_run_loads_with_its_classes_config_resolution_and_model_version(run_dir):
    run = inference.load_run_model(run_dir)
    assert (run.run_dir, run.input_size, run.data_image_size) == (run_dir, 32, 24)
    assert run.class_names == CLASSES and run.config == CONFIG
    assert run.model_stamp == (run_dir / runs.MODEL_FILE).stat().st_mtime_ns == inference.model_stamp(run_dir)
    assert run.model.output_shape == (None, 3)


def test_a_run_without_a_stored_resolution_is_taken_at_its_model_s(run_dir):
    runs.atomic_write_json(run_dir / runs.DATA_FILE, {"class_names": list(CLASSES)})
    assert inference.load_run_model(run_dir).data_image_size == 32


def test_a_run_missing_its_model_or_its_classes_says_which(run_dir):
    (run_dir / runs.DATA_FILE).unlink()
    with pytest.raises(RunFolderError, match=r"^finished-run: no data\.json \(class names\) in this run folder$"):
        inference.load_run_model(run_dir)
    (run_dir / runs.MODEL_FILE).unlink()
    with pytest.raises(RunFolderError, match=r"^finished-run: no trained model \(model\.keras\) in this run folder$"):
        inference.load_run_model(run_dir)
    assert inference.model_stamp(run_dir) == -1


def test_a_model_for_other_classes_than_its_run_s_is_refused(run_dir):
    runs.atomic_write_json(run_dir / runs.DATA_FILE, {"class_names": ["cat", "dog"]})
    with pytest.raises(ModelFileError, match="expected 2 class outputs"):
        inference.load_run_model(run_dir)


# --- classifying --------------------------------------------------------------------------------

def test_a_photo_is_classified_at_the_run_s_resolution_most_likely_first(run_dir):
    run = inference.load_run_model(run_dir)
    photo = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert inference.model_view(run, photo).shape == (24, 24, 3)
    mirrored_view = inference.model_view(run, photo)[:, ::-1]  # at the run's resolution already: as it is
    probabilities = inference.classify_arrays(run, [photo, mirrored_view])
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    batch = inference.model_view(run, photo)[None].astype(np.float32)
    from cifar_core.data.pipeline import resize_for_model

    expected = np.asarray(run.model(resize_for_model(batch, 32), training=False))[0]
    np.testing.assert_allclose(probabilities[0], expected, rtol=1e-4, atol=1e-6)
    flipped = inference.classify_arrays(run, [photo], tta=True)[0]
    np.testing.assert_allclose(flipped, probabilities.mean(axis=0), rtol=1e-4, atol=1e-6)
    top = inference.classify_bytes(run, png_bytes(photo))
    order = np.argsort(-expected)
    assert [name for name, _ in top] == [CLASSES[i] for i in order]  # three classes: all of them, best first
    assert [p for _, p in top] == pytest.approx([float(expected[i]) for i in order], rel=1e-4)
    assert len(inference.classify_bytes(run, png_bytes(photo), k=2)) == 2


def test_a_photo_s_answer_is_its_top_three_classes(run_dir, monkeypatch):
    from cifar_core import evaluation

    asked = []
    monkeypatch.setattr(evaluation, "top_k", lambda probs, names, k: asked.append(k) or [[("cat", 1.0)]])
    inference.classify_bytes(inference.load_run_model(run_dir), png_bytes(np.zeros((8, 8, 3), np.uint8)))
    assert asked == [3]


def test_a_photo_that_is_not_one_is_refused_by_its_name(run_dir):
    run = inference.load_run_model(run_dir)
    with pytest.raises(ImageDecodeError, match="^image: not an image"):
        inference.classify_bytes(run, b"not a photo")
    with pytest.raises(ImageDecodeError, match="^holiday.png: not an image"):
        inference.classify_bytes(run, b"not a photo", name="holiday.png")


# --- re-measuring -------------------------------------------------------------------------------

def test_evaluate_rewrites_the_figures_from_the_run_s_own_data_and_keeps_the_rest(run_dir, loaded_data):
    split, asked = loaded_data
    metrics = inference.evaluate_run(run_dir)
    assert asked == [("the-run-s-own-data", 24)]  # the run's data, at the resolution it was trained from
    run = inference.load_run_model(run_dir)
    probabilities = inference.classify_arrays(run, list(split.x_test))
    with_flips = inference.classify_arrays(run, list(split.x_test), tta=True)
    saved = runs.read_predictions(run_dir)
    np.testing.assert_array_equal(saved["y_true"], split.y_test)
    np.testing.assert_allclose(saved["probs"], probabilities, atol=1e-3)  # saved as float16
    np.testing.assert_allclose(saved["probs_tta"], with_flips, atol=1e-3)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == split.y_test))
    assert metrics["test_accuracy_tta"] == pytest.approx(np.mean(with_flips.argmax(1) == split.y_test))
    assert metrics["class_names"] == list(CLASSES) and metrics["data"] == "six test images"
    assert metrics["train_seconds"] == 12.5  # what it did not measure is kept
    assert runs.read_metrics(run_dir) == metrics
    inference.evaluate_run(run_dir, "another-source")
    assert asked[-1] == ("another-source", 24)


def test_evaluate_without_flip_tta_saves_no_flipped_probabilities(run_dir, loaded_data):
    runs.atomic_write_text(run_dir / runs.CONFIG_FILE, TrainConfig(model="demo", data="d", tta=False).to_json())
    runs.atomic_write_json(run_dir / runs.METRICS_FILE, {"test_accuracy": 0.5})
    metrics = inference.evaluate_run(run_dir)
    assert "probs_tta" not in runs.read_predictions(run_dir) and metrics.get("test_accuracy_tta") is None


def test_evaluate_on_data_of_other_classes_is_refused_before_measuring(run_dir, monkeypatch):
    from cifar_core import data

    monkeypatch.setattr(data, "load_dataset", lambda source, image_size: _test_split(classes=("a", "b", "c")))
    before = (run_dir / runs.METRICS_FILE).read_bytes()
    with pytest.raises(RunFolderError, match=r"^the data's classes \['a', 'b', 'c'\] differ from the model's "
                                             r"\['cat', 'dog', 'ship'\]$"):
        inference.evaluate_run(run_dir)
    assert (run_dir / runs.METRICS_FILE).read_bytes() == before and not (run_dir / runs.PREDICTIONS_FILE).exists()


def test_another_input_size_is_for_transfer_models_within_the_configurable_range(run_dir, loaded_data):
    from cifar_core.config import RANGES

    _, asked = loaded_data
    with pytest.raises(ConfigError, match="^finished-run: a demo model takes 32 px images only; another input size "
                                          "is for transfer models$"):
        inference.evaluate_run(run_dir, input_size=64)
    assert asked == []  # refused before the data is loaded
    run = inference.load_run_model(run_dir)
    transfer = inference.LoadedRun(run_dir, None, 128, 32, CLASSES, TrainConfig(model="lite0"))
    low, high, _ = RANGES["input_size"]
    for size in (low, high):
        inference.check_other_input_size(transfer, size)
    for size in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=f"^input size {size} px is outside {low}-{high}$"):
            inference.check_other_input_size(transfer, size)
    assert run.input_size == 32


def test_a_measure_at_another_input_size_reports_both_sizes_and_writes_nothing(run_dir, loaded_data, monkeypatch):
    from cifar_core import evaluation
    from cifar_core.models import transfer

    split, asked = loaded_data
    runs.atomic_write_text(run_dir / runs.CONFIG_FILE, TrainConfig(model="lite0", data="d", tta=True).to_json())
    widened, measured = [], []
    monkeypatch.setattr(transfer, "accept_any_size", widened.append)
    monkeypatch.setattr(evaluation, "measure_on_test", lambda *args: measured.append(args) or ({"test_accuracy": 0.5},
                                                                                             None, None))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    result = inference.evaluate_run(run_dir, "another-source", input_size=160)
    assert result == {"test_accuracy": 0.5, "data": "six test images", "input_size": 160, "trained_input_size": 32}
    assert asked == [("another-source", 24)]  # the data at the resolution it was trained from
    [(model, images, labels, names, size, tta)] = measured
    assert widened == [model] and images is split.x_test and labels is split.y_test
    assert (names, size, tta) == (split.class_names, 160, True)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # and no writer lock taken


# --- the shared copies --------------------------------------------------------------------------

def test_loads_of_different_runs_go_on_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "_shared", type(inference._shared)())
    a_loading, b_loaded = threading.Event(), threading.Event()
    waited = []

    def load(run_dir):
        if run_dir.endswith("run-a"):
            a_loading.set()
            waited.append(b_loaded.wait(timeout=5))  # run-a's load is slow, and still going when run-b asks
        else:
            b_loaded.set()
        return inference.LoadedRun(run_dir, None, 32, 32, CLASSES, CONFIG, inference.model_stamp(run_dir))

    monkeypatch.setattr(inference, "load_run_model", load)
    slow = threading.Thread(target=inference.shared_run, args=(tmp_path / "run-a",))
    slow.start()
    assert a_loading.wait(timeout=10)
    inference.shared_run(tmp_path / "run-b")
    slow.join(timeout=10)
    assert waited == [True]  # run-b did not wait for run-a
