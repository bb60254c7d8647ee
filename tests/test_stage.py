"""The stage machinery: live points, per-epoch predictions, race and replay curves, the photo
reader and the model worker process."""
import io
import itertools
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cifar_core import race, runs
from cifar_core.errors import CifarError, RunFolderError

HISTORY = [{"epoch": 1, "seconds": 60.0, "accuracy": 0.5, "val_accuracy": None},
           {"epoch": 2, "seconds": 120.0, "accuracy": 0.7, "val_accuracy": 0.65},
           {"epoch": 3, "seconds": 60.0, "accuracy": 0.8, "val_accuracy": 0.75}]
NO_VALIDATION = [{**row, "val_accuracy": None} for row in HISTORY]


# --- race and replay ----------------------------------------------------------------------------

def test_a_curve_is_validation_where_measured_else_training():
    assert race.measured_curve(HISTORY) == "val_accuracy"
    assert race.measured_curve(NO_VALIDATION) == "accuracy"
    assert race.measured_curve([{"epoch": 1, "seconds": 1.0}]) is None
    points = race.epoch_points(HISTORY)
    assert [(p["minutes"], p["accuracy"], p["curve"]) for p in points] == [
        (3.0, 0.65, "validation accuracy"), (4.0, 0.75, "validation accuracy")]
    assert [p["accuracy"] for p in race.epoch_points(NO_VALIDATION)] == [0.5, 0.7, 0.8]
    assert {p["curve"] for p in race.epoch_points(NO_VALIDATION)} == {"training accuracy"}


def test_a_replay_shows_only_the_epochs_finished_by_its_clock():
    assert [p["epoch"] for p in race.epoch_points(NO_VALIDATION, until_seconds=179.0)] == [1]
    assert [p["epoch"] for p in race.epoch_points(NO_VALIDATION, until_seconds=180.0)] == [1, 2]
    # 10 s of wall clock at 12x is 120 s of training: epoch 1 done, epoch 2 not.
    assert race.replay_seconds(100.0, 110.0, 12, HISTORY) == 120.0
    assert race.replay_progress(100.0, 110.0, 12, HISTORY) == (0.5, 1)
    assert race.replay_seconds(100.0, 90.0, 12, HISTORY) == 0.0  # a clock before the start shows nothing
    assert race.replay_progress(100.0, 10_000.0, 600, HISTORY) == (1.0, 3)  # never past the end
    assert race.replay_progress(0.0, 5.0, 10, []) == (1.0, 0)


def test_live_points_continue_after_the_finished_epochs():
    live = [{"train_seconds": 30.0, "epoch": 0.5, "loss": 1.0, "accuracy": 0.4},
            {"train_seconds": 90.0, "epoch": 1.25, "loss": 0.9, "accuracy": 0.55},
            {"train_seconds": 95.0, "epoch": 1.3, "loss": 0.9, "accuracy": None}]
    points = race.live_points(live, after_seconds=60.0)
    assert points == [{"minutes": 1.5, "accuracy": 0.55, "epoch": 1.25, "curve": "training accuracy (running)"}]
    # A point at the last finished epoch's own second belongs to that epoch; with none finished, every
    # point counts, the first second's too.
    assert race.live_points(live, after_seconds=90.0) == []
    early = [{"train_seconds": 0.5, "epoch": 0.01, "loss": 2.3, "accuracy": 0.1}]
    assert [p["epoch"] for p in race.live_points(early)] == [0.01]


def test_an_epoch_without_its_seconds_takes_no_time_on_the_race_clock():
    # history.csv rows from an older writer, or a torn row, may lack the seconds.
    history = [{**HISTORY[0], "seconds": None}, *HISTORY[1:]]
    assert race.total_seconds(history) == 180.0
    assert [p["minutes"] for p in race.epoch_points(history)] == [2.0, 3.0]
    assert race.replay_progress(0.0, 1.0, 120, history) == (120.0 / 180.0, 2)


# --- live.csv -----------------------------------------------------------------------------------

def test_live_points_round_trip_and_a_torn_last_line_is_left_out(tmp_path):
    runs.append_live_point(tmp_path, 1.5, 0.25, 2.1, 0.2)
    runs.append_live_point(tmp_path, 3.0, 0.5, None, None)
    assert runs.read_live(tmp_path) == [
        {"train_seconds": 1.5, "epoch": 0.25, "loss": 2.1, "accuracy": 0.2},
        {"train_seconds": 3.0, "epoch": 0.5, "loss": None, "accuracy": None}]
    with open(tmp_path / runs.LIVE_FILE, "a") as handle:
        handle.write("4.5,0.7")  # the writer is mid-line
    assert len(runs.read_live(tmp_path)) == 2
    assert runs.read_live(tmp_path / "absent") == []


@pytest.mark.parametrize("text", ["nonsense\n1,2,3,4\n", "train_seconds,epoch,loss,accuracy\n1,2,3\n",
                                  "train_seconds,epoch,loss,accuracy\nnan,1,1,1\n",
                                  "train_seconds,epoch,loss,accuracy\n1,-1,1,1\n",
                                  "train_seconds,epoch,loss,accuracy\n,1,1,1\n",
                                  "train_seconds,epoch,loss,accuracy\n1,1,inf,1\n"])
def test_a_corrupt_live_file_is_one_clear_error(tmp_path, text):
    (tmp_path / runs.LIVE_FILE).write_text(text)
    with pytest.raises(RunFolderError, match=runs.LIVE_FILE):
        runs.read_live(tmp_path)


def test_an_oversized_live_file_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "MAX_LIVE_BYTES", 100)
    (tmp_path / runs.LIVE_FILE).write_text("train_seconds,epoch,loss,accuracy\n" + "1,1,1,1\n" * 20)
    with pytest.raises(RunFolderError):
        runs.read_live(tmp_path)


# --- epoch-predictions.npz ----------------------------------------------------------------------

def test_epoch_predictions_round_trip(tmp_path):
    runs.write_epoch_predictions(tmp_path, [0, 1, 2], [[0, 0, 0], [0, 1, 2]], [1, 2])
    saved = runs.read_epoch_predictions(tmp_path)
    assert saved["predicted"].tolist() == [[0, 0, 0], [0, 1, 2]] and saved["epochs"].tolist() == [1, 2]
    assert runs.read_epoch_predictions(tmp_path / "absent") is None


def _npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("arrays", [
    dict(y_true=np.zeros(3, np.int16), predicted=np.zeros((2, 4), np.int16), epochs=np.array([1, 2])),
    dict(y_true=np.zeros(3, np.int16), predicted=np.zeros((1, 3), np.float32), epochs=np.array([1])),
    dict(y_true=np.zeros(3, np.int16), predicted=np.full((1, 3), -1, np.int16), epochs=np.array([1])),
    dict(y_true=np.zeros(3, np.int16), predicted=np.zeros((1, 3), np.int16), epochs=np.array([0])),
    dict(y_true=np.zeros(3, np.int16), epochs=np.array([1])),
])
def test_inconsistent_epoch_predictions_are_refused(tmp_path, arrays):
    _npz(tmp_path / runs.EPOCH_PREDICTIONS_FILE, **arrays)
    with pytest.raises(RunFolderError, match=runs.EPOCH_PREDICTIONS_FILE):
        runs.read_epoch_predictions(tmp_path)


def _small_zip_that_unpacks_large(path, member: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, b"\0" * 50_000)  # compresses to ~100 bytes
    path.write_bytes(buffer.getvalue())


def test_epoch_predictions_that_would_unpack_too_large_are_refused_before_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "MAX_EPOCH_PREDICTIONS_BYTES", 10_000)
    _small_zip_that_unpacks_large(tmp_path / runs.EPOCH_PREDICTIONS_FILE, "predicted.npy")
    with pytest.raises(RunFolderError, match="unpacked"):
        runs.read_epoch_predictions(tmp_path)


# --- predictions.npz (the test split's probabilities) ----------------------------------------------

@pytest.mark.parametrize("arrays", [
    dict(y_true=np.zeros(3, np.int16), probs=np.zeros((4, 2), np.float16)),  # rows != labels
    dict(y_true=np.zeros(3, np.float32), probs=np.zeros((3, 2), np.float16)),  # labels not integers
    dict(y_true=np.array([0, 1, 2]), probs=np.zeros((3, 2), np.float16)),  # a label with no column
    dict(y_true=np.array([0, -1, 1]), probs=np.zeros((3, 2), np.float16)),
    dict(y_true=np.zeros(3, np.int16), probs=np.zeros(3, np.float16)),  # not a matrix
    dict(y_true=np.zeros(3, np.int16), probs=np.zeros((3, 2), np.int16)),
    dict(y_true=np.zeros(3, np.int16), probs=np.full((3, 2), np.nan, np.float16)),
    dict(y_true=np.zeros(3, np.int16), probs=np.zeros((3, 2), np.float16), probs_tta=np.zeros((3, 3), np.float16)),
    dict(y_true=np.zeros(3, np.int16)),
])
def test_inconsistent_predictions_are_one_clear_error(tmp_path, arrays):
    _npz(tmp_path / runs.PREDICTIONS_FILE, **arrays)
    with pytest.raises(RunFolderError, match=runs.PREDICTIONS_FILE):
        runs.read_predictions(tmp_path)


def test_predictions_are_bounded_before_numpy_reads_them(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setattr(runs, "MAX_PREDICTIONS_BYTES", 10_000)
    _small_zip_that_unpacks_large(tmp_path / runs.PREDICTIONS_FILE, "probs.npy")
    with pytest.raises(RunFolderError, match="unpacked"):
        runs.read_predictions(tmp_path)
    (tmp_path / runs.PREDICTIONS_FILE).unlink()
    os.mkfifo(tmp_path / runs.PREDICTIONS_FILE)  # no writer: an open() would wait for ever
    started = time.monotonic()
    with pytest.raises(RunFolderError):
        runs.read_predictions(tmp_path)
    assert time.monotonic() - started < 2


# --- reading photos -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(shipped_runs):
    from cifar_core.inference import load_run_model

    return load_run_model(shipped_runs["runs"] / "g3-tiny")


@pytest.mark.integration
def test_one_pass_gives_the_evaluation_probabilities_and_each_photo_its_own_grad_cam(tiny_run):
    from cifar_core.data.pipeline import make_inference_dataset
    from cifar_core.evaluation import predict_proba
    from cifar_core.explain import grad_cam, read_photos
    from cifar_core.models import REGISTRY

    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    reading = read_photos(tiny_run, photos)
    views = np.stack(reading.views)
    np.testing.assert_allclose(reading.probabilities, predict_proba(tiny_run.model, views), atol=1e-5)
    assert reading.class_names == tiny_run.class_names and len(reading.heatmaps) == 3
    layer = REGISTRY["g3"].last_conv_layer
    for view, heatmap in zip(views, reading.heatmaps, strict=True):
        batch = next(iter(make_inference_dataset(view[None], 1, tiny_run.input_size))).numpy()
        # Graph (3 photos) against eager (1): oneDNN picks other kernels per shape, and on an AMX Xeon
        # the normalised maps differed by up to 0.021 (1e-2 held on the Zens); another photo's map is
        # further away than that (asserted below), so a swap would still fail.
        np.testing.assert_allclose(heatmap, grad_cam(tiny_run.model, batch, layer), atol=3e-2)
        assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(reading.heatmaps, 2)) > 0.1


@pytest.mark.integration
def test_the_worker_process_answers_like_the_dashboard_would(shipped_runs, tiny_run):
    from cifar_core.explain import read_photos
    from cifar_core.photo_worker import PhotoWorker

    photo = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    worker = PhotoWorker()
    try:
        worker.warm([str(shipped_runs["runs"] / "g3-tiny")])
        reading = worker.read(str(shipped_runs["runs"] / "g3-tiny"), [photo])
        np.testing.assert_allclose(reading.probabilities, read_photos(tiny_run, [photo]).probabilities, atol=1e-5)
        with pytest.raises(RunFolderError, match="no trained model"):  # the error's kind survives the trip
            worker.read(str(shipped_runs["runs"] / "broken"), [photo])
        os.kill(worker._process.pid, signal.SIGKILL)  # a worker killed (out of memory) is replaced
        worker._process.wait()
        assert worker.read(str(shipped_runs["runs"] / "g3-tiny"), [photo]).probabilities.shape == (1, 3)
        views = worker.augment(photo[None], {"augmentations": ["flip"]}, [1, 2])
        assert len(views) == 2 and views[0].shape == (1, 32, 32, 3)
    finally:
        worker.close()


def test_the_worker_is_warm_only_after_its_inspection_and_inspects_a_photo_once(monkeypatch):
    # "Models ready" with the Inside page's inspection still running slowed every page opened next, and
    # the Inside page then computed the same inspection a second time beside the warm-up's.
    import threading
    import time

    from cifar_core import explain, inference, photo_worker

    calls = []

    def slow_inspection(run, image):
        calls.append(photo_worker._warmed.is_set())
        time.sleep(0.3)
        return f"inspection of {run.run_dir}"

    monkeypatch.setattr(explain, "inspect_photo", slow_inspection)
    monkeypatch.setattr(explain, "warm_up", lambda run: None)
    monkeypatch.setattr(inference, "shared_run", lambda run_dir: StubRun(run_dir))
    monkeypatch.setattr(photo_worker, "_import_tensorflow", lambda: None)
    monkeypatch.setattr(photo_worker, "_warmed", threading.Event())
    monkeypatch.setattr(photo_worker, "_inspections", type(photo_worker._inspections)())
    photo = np.zeros((32, 32, 3), np.uint8)
    warm = photo_worker.warm_up_runs(["run-a", "run-b"], ("run-a", photo))
    time.sleep(0.05)  # the warm-up is inspecting now; a page asks for the same photo meanwhile
    assert photo_worker.inspect_cached("run-a", photo) == "inspection of run-a"
    warm.join(timeout=30)
    assert photo_worker._warmed.is_set()
    assert calls == [False]  # inspected once, before the worker said it was warm
    photo_worker.inspect_cached("run-b", photo)  # another run's inspection is its own
    assert len(calls) == 2


class StubRun:
    """What the worker's caches need of a loaded run: its folder and its model's version."""
    def __init__(self, run_dir, model_stamp=1):
        self.run_dir, self.model_stamp = run_dir, model_stamp


def test_an_inspection_is_remembered_per_model_version_not_per_folder(monkeypatch):
    # A run folder whose model file was replaced (trained again under the same name) was answered with the
    # old model's inspection for as long as the worker lived.
    from cifar_core import explain, inference, photo_worker

    versions = {"run-a": 1}
    monkeypatch.setattr(inference, "shared_run", lambda run_dir: StubRun(run_dir, versions[run_dir]))
    monkeypatch.setattr(explain, "inspect_photo", lambda run, image: f"model v{run.model_stamp}")
    monkeypatch.setattr(photo_worker, "_inspections", type(photo_worker._inspections)())
    photo = np.zeros((32, 32, 3), np.uint8)
    assert photo_worker.inspect_cached("run-a", photo) == "model v1"
    versions["run-a"] = 2
    assert photo_worker.inspect_cached("run-a", photo) == "model v2"
    monkeypatch.setattr(explain, "inspect_photo", lambda run, image: pytest.fail("inspected again"))
    assert photo_worker.inspect_cached("run-a", photo) == "model v2"  # and remembered under its version
    assert photo_worker.inspect_cached("run-a", photo + 0) == "model v2"  # the same pixels are the same photo


def test_the_remembered_inspections_keep_the_most_recently_viewed(monkeypatch):
    from cifar_core import explain, inference, photo_worker

    inspected = []
    monkeypatch.setattr(inference, "shared_run", lambda run_dir: StubRun(run_dir))
    monkeypatch.setattr(explain, "inspect_photo", lambda run, image: inspected.append(int(image[0, 0, 0])))
    monkeypatch.setattr(photo_worker, "_inspections", type(photo_worker._inspections)())
    photos = [np.full((8, 8, 3), n, np.uint8) for n in range(photo_worker.MAX_INSPECTIONS + 1)]
    for photo in photos[:-1]:
        photo_worker.inspect_cached("run-a", photo)
    photo_worker.inspect_cached("run-a", photos[0])  # the Inside page's default, viewed again
    photo_worker.inspect_cached("run-a", photos[-1])  # one too many: the least recently viewed (1) goes
    del inspected[:]
    photo_worker.inspect_cached("run-a", photos[0])
    photo_worker.inspect_cached("run-a", photos[1])
    assert inspected == [1]


@pytest.fixture
def counted_loads(monkeypatch):
    """shared_run over an empty cache, with each model load recorded instead of done."""
    from cifar_core import inference

    loads = []

    def load(run_dir):
        loads.append(Path(run_dir).name)
        if not (Path(run_dir) / runs.MODEL_FILE).is_file():
            raise RunFolderError(f"{Path(run_dir).name}: no trained model")
        return StubRun(run_dir, inference.model_stamp(run_dir))

    monkeypatch.setattr(inference, "load_run_model", load)
    monkeypatch.setattr(inference, "_shared", type(inference._shared)())
    return loads


def model_folder(root: Path, name: str, version_ns: int = 10**18) -> Path:
    folder = root / name
    folder.mkdir(exist_ok=True)
    (folder / runs.MODEL_FILE).write_bytes(b"model")
    os.utime(folder / runs.MODEL_FILE, ns=(version_ns, version_ns))
    return folder


def test_a_run_s_model_is_loaded_once_and_again_only_when_its_file_changes(tmp_path, counted_loads, monkeypatch):
    from cifar_core import inference

    run = model_folder(tmp_path, "run-a")
    monkeypatch.chdir(tmp_path)
    first = inference.shared_run(run)
    assert inference.shared_run("run-a") is first  # another spelling of the same folder
    assert counted_loads == ["run-a"]
    model_folder(tmp_path, "run-a", version_ns=10**18 + 1)  # replaced, a nanosecond later
    assert inference.shared_run(run).model_stamp == 10**18 + 1
    assert counted_loads == ["run-a", "run-a"]
    (run / runs.MODEL_FILE).unlink()  # a deleted model is never answered from memory
    with pytest.raises(RunFolderError):
        inference.shared_run(run)


def test_the_shared_models_keep_the_most_recently_used(tmp_path, counted_loads):
    from cifar_core import inference

    folders = [model_folder(tmp_path, f"run-{n}") for n in range(inference.MAX_SHARED_RUNS + 1)]
    for folder in folders[:-1]:
        inference.shared_run(folder)
    inference.shared_run(folders[0])  # used again: now the most recent
    inference.shared_run(folders[-1])  # one too many: the least recently used (run-1) goes
    assert len(inference._shared) == inference.MAX_SHARED_RUNS
    del counted_loads[:]
    inference.shared_run(folders[0])
    inference.shared_run(folders[1])
    assert counted_loads == ["run-1"]


def test_callers_of_one_run_at_once_share_one_load(tmp_path, counted_loads, monkeypatch):
    import threading
    import time

    from cifar_core import inference

    run = model_folder(tmp_path, "run-a")
    load = inference.load_run_model
    monkeypatch.setattr(inference, "load_run_model", lambda run_dir: time.sleep(0.2) or load(run_dir))
    answers = []
    callers = [threading.Thread(target=lambda: answers.append(inference.shared_run(run))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)
    assert counted_loads == ["run-a"]
    assert len(answers) == 3 and all(answer is answers[0] for answer in answers)


def test_error_kinds_from_the_worker_map_to_the_package_classes_only():
    from cifar_core.photo_worker import _error_class

    assert _error_class("RunFolderError") is RunFolderError
    assert _error_class("one_line") is CifarError  # a function of the errors module, not a class
    assert _error_class("ValueError") is CifarError
