"""One writer per run folder, and a resume that equals an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
from helpers import ROOT, stop_after_epoch

from cifar_core import runs
from cifar_core.__main__ import main
from cifar_core.config import recipe_config
from cifar_core.errors import RunFolderError
from cifar_core.training import checkpoint, loop, resume, stages, train
from cifar_core.training.callbacks import ResumableEarlyStopping

SMALL = dict(n_epochs=3, batch_size=32, val_fraction=0.25, early_stopping_patience=None, limit=None)
HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from cifar_core import runs
with runs.RunWriter({run_dir!r}):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def lock_holder(tmp_path):
    """A separate process holding a run folder's writer lock, like a live worker."""
    run_dir = tmp_path / "held"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=str(ROOT), run_dir=str(run_dir))],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield run_dir, process
    process.kill()
    process.wait()


def test_run_ids_made_in_the_same_second_differ(tmp_path):
    now = time.time()
    ids = {runs.new_run_id("demo", now=now) for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith(time.strftime("%Y%m%d-%H%M%S", time.localtime(now))) for i in ids)
    folders = {runs.create_run_dir("demo", tmp_path) for _ in range(50)}
    assert len(folders) == 50 and all(f.is_dir() and not any(f.iterdir()) for f in folders)


def test_a_second_writer_is_refused_while_the_first_lives(lock_holder):
    run_dir, process = lock_holder
    assert runs.writer_alive(run_dir)
    with pytest.raises(RunFolderError, match=f"another process \\(pid {process.pid}\\)"):
        with runs.RunWriter(run_dir):
            pass
    # A stopped writer (laptop lid closed, SIGSTOP) still holds its run.
    os.kill(process.pid, signal.SIGSTOP)
    try:
        assert runs.writer_alive(run_dir)
        status = runs.write_status(run_dir, "running")
        stale = status["heartbeat"] + 100 * runs.STALE_SECONDS
        assert runs.effective_state(status, now=stale, run_dir=run_dir) == "running"
    finally:
        os.kill(process.pid, signal.SIGCONT)
    process.kill()
    process.wait()
    # The OS released the lock with the process: the run is interrupted, and writable again.
    assert not runs.writer_alive(run_dir)
    assert runs.effective_state(status, run_dir=run_dir) == "interrupted"
    with runs.RunWriter(run_dir):
        assert runs.writer_alive(run_dir)
    assert not runs.writer_alive(run_dir)


def test_train_and_resume_refuse_a_folder_another_writer_holds(lock_holder, tiny_dataset):
    run_dir, _ = lock_holder
    config = recipe_config("demo", **SMALL)
    with pytest.raises(RunFolderError, match="another process"):
        train(config, run_dir, tiny_dataset, verbose=0)
    assert not (run_dir / runs.CONFIG_FILE).exists()
    runs.atomic_write_text(run_dir / runs.CONFIG_FILE, config.to_json())
    with pytest.raises(RunFolderError, match="another process"):
        resume(run_dir, tiny_dataset, verbose=0)


def test_a_folder_of_someone_elses_files_is_never_written(tiny_dataset, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "history.csv").write_text("my data\n")
    (mine / "notes.txt").write_text("keep me\n")
    with pytest.raises(RunFolderError, match="not empty and not a run folder"):
        train(recipe_config("demo", **SMALL), mine, tiny_dataset, verbose=0)
    assert sorted(p.name for p in mine.iterdir()) == ["history.csv", "notes.txt"]
    assert (mine / "history.csv").read_text() == "my data\n"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train(recipe_config("demo", **SMALL), tmp_path / "a-file", tiny_dataset, verbose=0)


def test_a_job_launchers_folder_and_an_empty_one_are_accepted(tiny_dataset, tmp_path):
    launched = tmp_path / "launched"
    launched.mkdir()
    (launched / runs.LOG_FILE).write_text("worker log\n")
    train(recipe_config("demo", **SMALL).replace(n_epochs=1), launched, tiny_dataset, verbose=0)
    assert runs.read_status(launched)["state"] == "completed"
    assert (launched / runs.LOG_FILE).read_text() == "worker log\n"


def _kill_first_finish(monkeypatch):
    real = loop.finish_run
    calls = []

    def finish_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed while measuring on the test split
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "finish_run", finish_then_die)


def test_an_early_stopped_run_killed_while_finishing_resumes_to_the_same_end(tiny_dataset, tmp_path, monkeypatch):
    # Only an improvement of 100 counts, so epoch 1 stays best and patience 1 stops after epoch 2 of 6
    # on any CPU. (A tiny learning rate did not: BatchNorm's moving statistics still move val_loss.)
    monkeypatch.setattr(stages, "ResumableEarlyStopping", partial(ResumableEarlyStopping, min_delta=100.0))
    config = recipe_config("g3", n_epochs=6, batch_size=32, val_fraction=0.25, limit=None,
                           early_stopping_patience=1)
    straight = train(config, tmp_path / "straight", tiny_dataset, verbose=0)
    expected = [row["epoch"] for row in runs.read_history(straight)]
    assert expected == [1, 2]  # early stopping did end it
    _kill_first_finish(monkeypatch)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(config, broken, tiny_dataset, verbose=0)
    assert checkpoint.load_state(broken)["training_done"] is True
    resume(broken, tiny_dataset, verbose=0)
    assert [row["epoch"] for row in runs.read_history(broken)] == expected
    assert runs.read_metrics(broken)["epochs_run"] == len(expected)
    assert runs.read_metrics(broken)["test_accuracy"] == runs.read_metrics(straight)["test_accuracy"]


@pytest.fixture
def interrupted_run(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(recipe_config("demo", **SMALL), run_dir, tiny_dataset, verbose=0, callbacks=[stop_after_epoch(1)])
    return run_dir


def _damage_missing_model(folder):
    (folder / checkpoint.load_state(folder.parent)["model_file"]).unlink()


def _damage_truncated_model(folder):
    path = folder / checkpoint.load_state(folder.parent)["model_file"]
    path.write_bytes(path.read_bytes()[:300])


def _damage_empty_state(folder):
    (folder / checkpoint.STATE_NAME).write_bytes(b"")


def _damage_truncated_state(folder):
    path = folder / checkpoint.STATE_NAME
    path.write_bytes(path.read_bytes()[:40])


def _damage_state_history(folder):
    import json

    path = folder / checkpoint.STATE_NAME
    state = json.loads(path.read_text())
    path.write_text(json.dumps(dict(state, epochs_completed=7)))


def _damage_state_row(folder):
    import json

    path = folder / checkpoint.STATE_NAME
    state = json.loads(path.read_text())
    state["history"][0]["stage"] = "warmup"
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("damage,message", [
    (_damage_missing_model, "which is missing"),
    (_damage_state_row, "is damaged: history row 1: stage is 'warmup'"),
    (_damage_truncated_model, "is unreadable"),
    (_damage_empty_state, "not valid JSON"),
    (_damage_truncated_state, "not valid JSON"),
    (_damage_state_history, "lists 1 epochs"),
])
def test_a_damaged_checkpoint_is_a_clear_refusal_not_a_fresh_start(interrupted_run, capsys, damage, message):
    damage(interrupted_run / runs.CHECKPOINT_DIR)
    history = runs.read_history(interrupted_run)
    code = main(["train", "--resume", "--run-dir", str(interrupted_run)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert runs.read_history(interrupted_run) == history  # nothing retrained, nothing rewritten
