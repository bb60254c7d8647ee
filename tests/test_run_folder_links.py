"""What a run folder holds never redirects or blocks the studio's writes. A run folder can come
from someone else (a shared or downloaded run); a link in it where the studio writes (the writer
lock, live.csv, a job's log, the checkpoint/, analysis/ and export/ folders) would send that write
into any file or folder of the user's, and a FIFO would block the writer (or a page) for ever. Each
writer refuses both with one line and leaves the link's target as it was."""
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

from cifar_core import jobs, runs
from cifar_core.config import TrainConfig
from cifar_core.errors import CifarError, RunFolderError

VICTIM_TEXT = "the user's own file\n"


class StillBlocked(Exception):
    """Not an OSError (as TimeoutError is), so no `except OSError` in the code under test turns it
    into the refusal the test expects."""


@contextmanager
def within_seconds(seconds: float):
    """A blocked open (a FIFO with nobody at the other end) fails the test instead of hanging it."""
    def expire(*_):
        raise StillBlocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def victim(tmp_path):
    """A file and a folder of the user's, outside any run folder."""
    file = tmp_path / "home" / "notes.txt"
    folder = tmp_path / "home" / "photos"
    folder.mkdir(parents=True)
    file.write_text(VICTIM_TEXT)
    (folder / "epoch-0001.keras").write_text(VICTIM_TEXT)  # named as a checkpoint clean-up would delete
    return file, folder


def _plant(path, kind, victim):
    path.parent.mkdir(parents=True, exist_ok=True)
    file, folder = victim
    if kind == "link":
        path.symlink_to(folder if path.suffix == "" else file)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling link":
        path.symlink_to(path.parent / "nowhere" / "at-all")


def _untouched(victim):
    file, folder = victim
    assert file.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.keras"]
    assert (folder / "epoch-0001.keras").read_text() == VICTIM_TEXT


def _writer_lock(run_dir):
    with runs.RunWriter(run_dir):
        pass


def _live_point(run_dir):
    runs.append_live_point(run_dir, 1.0, 0.5, 2.0, 0.25)


def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _checkpoint(run_dir):
    from cifar_core.training import checkpoint

    checkpoint.save(run_dir, _tiny_model(), [{"epoch": 1, "stage": "train"}])


def _best_weights(run_dir):
    from cifar_core.training.callbacks import ResumableEarlyStopping

    callback = ResumableEarlyStopping(run_dir, [], monitor="val_loss", patience=5)
    callback.set_model(_tiny_model())
    callback.on_train_begin()
    callback.on_epoch_end(0, {"val_loss": 1.0})


def _analysis(run_dir):
    from cifar_core.analysis import files

    files.write_json(run_dir / "analysis" / "calibration.json", {"temperature": 1.0}, "0" * 64)


def _export(run_dir):
    from cifar_core.export import export_run

    (run_dir / runs.MODEL_FILE).write_bytes(b"stands in for a model; the refusal comes first")
    export_run(run_dir, "onnx")


# writer -> (the name in the run folder it writes through, how it is called, what its refusal of a link says)
FOLDER_REFUSAL = "the studio writes only into real folders"
WRITERS = {
    "writer lock": (runs.LOCK_FILE, _writer_lock, "the writer lock is written only as a real file"),
    "live progress": (runs.LIVE_FILE, _live_point, "the live progress file is written only as a real file"),
    "checkpoint folder": (runs.CHECKPOINT_DIR, _checkpoint, FOLDER_REFUSAL),
    "best weights' folder": (runs.CHECKPOINT_DIR, _best_weights, FOLDER_REFUSAL),
    "analysis folder": ("analysis", _analysis, FOLDER_REFUSAL),
    "export folder": ("export", _export, FOLDER_REFUSAL),
}


@pytest.mark.parametrize("kind", ["link", "fifo", "dangling link"])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_link_or_fifo_in_a_run_folder_is_refused_not_written_through(writer, kind, tmp_path, victim):
    name, write, refusal = WRITERS[writer]
    run_dir = tmp_path / "shared-run"
    _plant(run_dir / name, kind, victim)
    with within_seconds(10), pytest.raises(RunFolderError) as caught:
        write(run_dir)
    assert name in str(caught.value) and "\n" not in str(caught.value)
    if kind != "fifo":  # refused as what it is, before anything is opened through it
        assert str(caught.value).startswith(f"{name} in ") and f" is a link; {refusal}" in str(caught.value)
    _untouched(victim)


@pytest.mark.parametrize("writer", WRITERS)
def test_each_writer_writes_where_nothing_was_planted(writer, tmp_path):
    """The same calls succeed in a sound folder: the refusals above are about the planted thing."""
    name, write, _ = WRITERS[writer]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if writer == "export folder":  # a real export needs a trained model: only the folder is checked here
        from cifar_core.export import EXPORT_DIR

        assert runs.ensure_subfolder(run_dir / EXPORT_DIR).is_dir()
        return
    write(run_dir)
    assert (run_dir / name).exists() and not (run_dir / name).is_symlink()


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_job_whose_log_cannot_be_written_fails_with_that_line(kind, tmp_path, monkeypatch, victim):
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    job = jobs.create_job(TrainConfig(model="demo", n_epochs=1), tmp_path / "run")
    _plant(job.log_file, kind, victim)
    refusal = (rf"job {job.id} could not start: {runs.LOG_FILE} in .*"
               r"( is a link; the job log is written| cannot open the job log for writing)")
    with within_seconds(10), pytest.raises(CifarError, match=refusal):
        jobs._spawn(job, resume=False)
    assert not started  # no worker writing nowhere
    failed = jobs.get_job(job.id)
    assert failed.state == "failed" and runs.LOG_FILE in failed.message
    _untouched(victim)


def test_an_analysis_job_logs_into_the_analysis_folder_and_refuses_a_link_there(tmp_path, monkeypatch, victim):
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    real_popen = subprocess.Popen

    def worker(*args, **kwargs):
        os.write(kwargs["stdout"], b"ok\n")
        return real_popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(jobs.subprocess, "Popen", worker)
    sound, shared = tmp_path / "sound", tmp_path / "shared"
    for run_dir in (sound, shared):
        run_dir.mkdir()
        (run_dir / runs.MODEL_FILE).write_bytes(b"a model")
    job = jobs.launch_analysis(sound, ("calibration",))
    assert job.log_file == sound / "analysis" / "analyze.log" and job.log_file.read_bytes() == b"ok\n"
    _plant(shared / "analysis", "link", victim)
    with pytest.raises(CifarError, match=rf"could not start: analysis in shared is a link; {FOLDER_REFUSAL}"):
        jobs.launch_analysis(shared, ("calibration",))
    _untouched(victim)


def test_a_job_whose_worker_cannot_start_fails_instead_of_waiting_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))

    def no_interpreter(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(jobs.subprocess, "Popen", no_interpreter)
    job = jobs.create_job(TrainConfig(model="demo", n_epochs=1), tmp_path / "run")
    with pytest.raises(CifarError, match="could not start: .*No such file"):
        jobs._spawn(job, resume=False)
    assert jobs.get_job(job.id).state == "failed"


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_lock_that_no_writer_could_hold_is_no_writer(kind, tmp_path, victim):
    """Pages ask every listed run whether a writer holds it: a planted FIFO must not hang them."""
    run_dir = tmp_path / "shared-run"
    _plant(run_dir / runs.LOCK_FILE, kind, victim)
    with within_seconds(10):
        assert not runs.writer_alive(run_dir)
        assert runs.effective_state({"state": "running", "heartbeat": 0}, run_dir=run_dir) == "interrupted"


def test_a_lock_linked_to_a_running_writers_lock_is_no_writer(tmp_path, victim):
    """A shared folder cannot pass for one being written by linking its lock to a live run's."""
    live_run, shared = tmp_path / "live-run", tmp_path / "shared-run"
    shared.mkdir()
    with runs.RunWriter(live_run):
        (shared / runs.LOCK_FILE).symlink_to(live_run / runs.LOCK_FILE)
        assert runs.writer_alive(live_run) and not runs.writer_alive(shared)


def test_a_model_save_never_writes_through_a_name_placed_beforehand(tmp_path, victim):
    """The temporary file of a save is made in a fresh private folder, so a link planted at any
    name beside the target (the old scheme's '.<stem>.<pid>.tmp.keras') is never followed."""
    from cifar_core.training.checkpoint import save_model_atomically

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f".model.{os.getpid()}.tmp.keras").symlink_to(victim[0])
    save_model_atomically(_tiny_model(), run_dir / "model.keras")
    _untouched(victim)
    assert sorted(p.name for p in run_dir.iterdir()) == [f".model.{os.getpid()}.tmp.keras", "model.keras"]


def test_a_lock_holder_is_read_whatever_bytes_it_holds(tmp_path):
    (tmp_path / "lock").write_bytes(b"\xff12 \n")
    fd = os.open(tmp_path / "lock", os.O_RDONLY)
    try:
        assert runs._lock_holder(fd) == "\ufffd12"  # not ASCII: replaced, never a UnicodeDecodeError
    finally:
        os.close(fd)


def test_live_points_start_with_the_header_once(tmp_path):
    for step in range(3):
        runs.append_live_point(tmp_path, float(step), step / 10, 1.0, None)
    assert [row["train_seconds"] for row in runs.read_live(tmp_path)] == [0.0, 1.0, 2.0]
    assert (tmp_path / runs.LIVE_FILE).read_text().count("train_seconds") == 1


def test_a_writer_in_another_process_is_named_by_its_pid(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cifar_core import runs\n"
        f"with runs.RunWriter({str(run_dir)!r}):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runs.writer_alive(run_dir)
        with pytest.raises(RunFolderError, match=rf"\(pid {holder.pid}\)"):
            _writer_lock(run_dir)
    finally:
        holder.kill()
        holder.wait()
    assert not runs.writer_alive(run_dir)
    np.testing.assert_equal(runs.read_live(run_dir), [])
