"""Every job-state transition, pinned on the registry alone: no training, stub workers."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from cifar_core import jobs, runs
from cifar_core.config import TrainConfig
from cifar_core.errors import CifarError

CONFIG = TrainConfig(model="demo", n_epochs=2)


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "jobs.sqlite"
    monkeypatch.setenv("CIFAR_JOBS_DB", str(path))
    return path


@pytest.fixture
def sleeper():
    """A real process that stands in for a worker."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def _as_worker(job, process):
    jobs.update_job(job.id, state="running", pid=process.pid, pid_started=jobs.process_start_time(process.pid))
    return jobs.get_job(job.id)


def test_a_new_job_is_queued_in_its_own_new_run_folder(db):
    first, second = jobs.create_job(CONFIG), jobs.create_job(CONFIG)
    assert first.state == "queued" and first.pid is None and first.message is None
    assert first.config == CONFIG and first.model == "demo"
    assert first.run_dir != second.run_dir and first.run_dir.parent == runs.runs_root()
    assert first.run_dir.is_dir() and second.id == first.id + 1
    assert first.created_at == pytest.approx(time.time(), abs=5)
    with pytest.raises(CifarError, match=f"no job with id {second.id + 1}"):
        jobs.get_job(second.id + 1)


def test_updates_and_listing_newest_first(db):
    a, b, c = (jobs.create_job(CONFIG, f"/tmp/run-{i}") for i in range(3))
    before = jobs.get_job(b.id).updated_at
    time.sleep(0.01)
    jobs.update_job(b.id, state="completed", message="done")
    updated = jobs.get_job(b.id)
    assert updated.state == "completed" and updated.message == "done" and updated.updated_at > before
    assert jobs.get_job(a.id).state == "queued"  # only the named row changed
    assert [job.id for job in jobs.list_jobs(refresh=False)] == [c.id, b.id, a.id]


def test_a_queued_job_without_a_worker_is_alive_only_while_launching(db):
    job = jobs.create_job(CONFIG)
    assert jobs.worker_alive(job, now=job.created_at + jobs.STALE_SECONDS - 1)
    assert not jobs.worker_alive(job, now=job.created_at + jobs.STALE_SECONDS + 1)


def test_a_worker_is_alive_while_its_process_is(db, sleeper):
    job = _as_worker(jobs.create_job(CONFIG), sleeper)
    assert jobs.worker_alive(job) and jobs.worker_alive(job, now=time.time() + 1e6)
    sleeper.kill()
    sleeper.wait()
    assert not jobs.worker_alive(job)


def test_a_reused_pid_is_not_the_worker(db):
    job = jobs.create_job(CONFIG)
    jobs.update_job(job.id, state="running", pid=os.getpid(), pid_started=jobs.process_start_time(os.getpid()) + 1)
    assert not jobs.worker_alive(jobs.get_job(job.id))
    jobs.update_job(job.id, pid=None, pid_started=None)
    assert not jobs.worker_alive(jobs.get_job(job.id))  # running with no pid: nobody


def test_the_writer_lock_keeps_a_job_alive(db):
    job = jobs.create_job(CONFIG)
    jobs.update_job(job.id, state="running", pid=None)
    with runs.RunWriter(job.run_dir):
        assert jobs.worker_alive(jobs.get_job(job.id))
        assert [j.state for j in jobs.list_jobs()] == ["running"]


def test_a_long_registry_lists_every_active_job_and_the_newest_others(db, monkeypatch):
    # The Train page lists the jobs every 2 s; a sweep's registry of thousands was read whole each time.
    monkeypatch.setattr(jobs, "MAX_LISTED_JOBS", 3)
    made = [jobs.create_job(CONFIG, f"/tmp/run-{i}") for i in range(6)]
    for job in made[1:]:
        jobs.update_job(job.id, state="completed")  # made[0], the oldest, is still queued
    with pytest.warns(UserWarning, match="^the job registry holds 6 jobs; listed are every active"):
        listed = jobs.list_jobs(refresh=False)
    assert [job.id for job in listed] == [made[5].id, made[4].id, made[0].id]
    jobs.update_job(made[0].id, state="failed")
    with pytest.warns(UserWarning, match="holds 6 jobs"):
        assert [job.id for job in jobs.list_jobs(refresh=False)] == [made[5].id, made[4].id, made[3].id]
    monkeypatch.setattr(jobs, "MAX_LISTED_JOBS", 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all of them listed: nothing to say
        assert len(jobs.list_jobs(refresh=False)) == 6


def test_listing_marks_dead_workers_interrupted_and_keeps_progress(db, sleeper):
    dead = _as_worker(jobs.create_job(CONFIG), sleeper)
    runs.write_status(dead.run_dir, "running", epoch=1, n_epochs=2, progress=0.5)
    done = jobs.create_job(CONFIG)
    jobs.update_job(done.id, state="completed", pid=None)
    launching = jobs.create_job(CONFIG)
    sleeper.kill()
    sleeper.wait()
    states = {job.id: job for job in jobs.list_jobs()}
    assert states[dead.id].state == "interrupted" and "resume it" in states[dead.id].message
    assert states[done.id].state == "completed" and states[launching.id].state == "queued"
    status = runs.read_status(dead.run_dir)
    assert status["state"] == "interrupted" and status["epoch"] == 1 and status["progress"] == 0.5
    assert jobs.list_jobs(refresh=False)[-1].state == "interrupted"  # written, not just shown


def test_listing_without_refresh_changes_nothing(db, sleeper):
    _as_worker(jobs.create_job(CONFIG), sleeper)
    sleeper.kill()
    sleeper.wait()
    assert jobs.list_jobs(refresh=False)[0].state == "running"


def test_resume_is_refused_while_the_worker_lives_and_spawns_one_after(db, sleeper, monkeypatch):
    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda job, resume: spawned.append((job.id, resume, job.state)))
    job = _as_worker(jobs.create_job(CONFIG), sleeper)
    jobs.update_job(job.id, state="interrupted")
    with pytest.raises(CifarError, match="still running"):
        jobs.resume_job(job.id)
    assert spawned == []
    sleeper.kill()
    sleeper.wait()
    jobs.update_job(job.id, message="stopped")
    resumed = jobs.resume_job(job.id)
    assert spawned == [(job.id, True, "queued")]
    assert resumed.state == "queued" and resumed.pid is None and resumed.pid_started is None
    assert resumed.message is None


def test_cancel_records_first_then_stops_the_worker(db, sleeper):
    job = _as_worker(jobs.create_job(CONFIG), sleeper)
    cancelled = jobs.cancel(job.id)
    assert cancelled.state == "cancelled" and "resumable" in cancelled.message
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_cancel_never_signals_a_stranger_with_a_reused_pid(db, sleeper):
    job = jobs.create_job(CONFIG)
    jobs.update_job(job.id, state="running", pid=sleeper.pid, pid_started=-5.0)
    assert jobs.cancel(job.id).state == "cancelled"
    time.sleep(0.2)
    assert sleeper.poll() is None  # still running


@pytest.fixture
def fake_training(monkeypatch):
    from cifar_core import training

    calls = []
    behaviour = {"train": None, "resume": None}

    def make(kind):
        def run(*args, **kwargs):
            calls.append(kind)
            if behaviour[kind] is not None:
                raise behaviour[kind]
        return run

    monkeypatch.setattr(training, "train", make("train"))
    monkeypatch.setattr(training, "resume", make("resume"))
    return calls, behaviour


def test_the_worker_records_each_outcome(db, fake_training):
    calls, behaviour = fake_training
    job = jobs.create_job(CONFIG)
    assert jobs.run_worker(job.id) == 0 and calls == ["train"]
    finished = jobs.get_job(job.id)
    assert finished.state == "completed" and finished.message is None
    assert finished.pid == os.getpid() and finished.pid_started == jobs.process_start_time(os.getpid())

    behaviour["train"] = ValueError("disk on fire")
    job = jobs.create_job(CONFIG)
    with pytest.raises(ValueError):
        jobs.run_worker(job.id)
    assert jobs.get_job(job.id).state == "failed" and jobs.get_job(job.id).message == "ValueError: disk on fire"

    behaviour["train"] = KeyboardInterrupt()
    job = jobs.create_job(CONFIG)
    assert jobs.run_worker(job.id) == 130
    assert jobs.get_job(job.id).state == "interrupted" and jobs.get_job(job.id).message == "stopped; resumable"


def test_a_job_cancelled_before_its_worker_started_never_trains(db, fake_training, monkeypatch):
    calls, _ = fake_training
    job = jobs.create_job(CONFIG)
    jobs.cancel(job.id)
    assert jobs.run_worker(job.id) == 130 and calls == []
    assert jobs.get_job(job.id).state == "cancelled"


def test_a_cancel_during_training_stays_a_cancel(db, monkeypatch):
    from cifar_core import training

    job = jobs.create_job(CONFIG)

    def cancel_then_stop(*args, **kwargs):  # what the worker's SIGTERM handler turns a cancel into
        jobs.update_job(job.id, state="cancelled", message="cancelled by the user; resumable")
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", cancel_then_stop)
    assert jobs.run_worker(job.id) == 130
    assert jobs.get_job(job.id).state == "cancelled"


def test_the_worker_resumes_only_a_run_that_exists(db, fake_training):
    calls, _ = fake_training
    job = jobs.create_job(CONFIG)
    assert jobs.run_worker(job.id, resume=True) == 0 and calls == ["train"]  # nothing to resume yet
    runs.atomic_write_text(job.run_dir / runs.CONFIG_FILE, CONFIG.to_json())
    assert jobs.run_worker(job.id, resume=True) == 0 and calls == ["train", "resume"]


def test_the_worker_spawn_command_and_log(db, monkeypatch, sleeper):
    seen = {}

    def fake_popen(command, **kwargs):
        seen.update(command=command, **kwargs)
        return sleeper

    monkeypatch.setattr(jobs.subprocess, "Popen", fake_popen)
    job = jobs.create_job(CONFIG)
    jobs._spawn(job, resume=True)
    assert seen["command"][1:] == ["-m", "cifar_core", "worker", str(job.id), "--resume"]
    assert seen["env"]["CIFAR_JOBS_DB"] == str(db.resolve()) and seen["start_new_session"] is True
    assert (job.run_dir / runs.LOG_FILE).exists()
    spawned = jobs.get_job(job.id)
    assert spawned.pid == sleeper.pid and spawned.pid_started == jobs.process_start_time(sleeper.pid)
    jobs._spawn(job, resume=False)
    assert "--resume" not in seen["command"]


def test_launch_creates_and_spawns(db, monkeypatch):
    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda job, resume: spawned.append((job.id, resume)))
    job = jobs.launch(CONFIG)
    assert spawned == [(job.id, False)] and job.state == "queued"


def test_process_start_time_tells_live_dead_and_zombie_processes(sleeper):
    assert jobs.process_start_time(os.getpid()) > 0
    assert jobs.process_start_time(sleeper.pid) >= jobs.process_start_time(os.getpid())
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and jobs.process_start_time(sleeper.pid) is not None:
        time.sleep(0.05)
    assert jobs.process_start_time(sleeper.pid) is None  # a zombie until reaped: counted as gone
    assert jobs.process_start_time(2**22 + 12345) is None


def test_a_corrupt_registry_is_renamed_aside_and_replaced(db):
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.warns(UserWarning, match="moved to jobs.sqlite.corrupt-"):
        job = jobs.create_job(CONFIG)
    assert jobs.get_job(job.id).id == 1
    [aside] = db.parent.glob("jobs.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"SQLite format 3")


def test_a_row_whose_config_no_longer_validates_is_kept_and_named(db, fake_training):
    job = jobs.create_job(CONFIG)
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE jobs SET config = ?, message = ? WHERE id = ?",
                           ('{"model": "demo", "n_epochs": 0}', "old note", job.id))
    listed = jobs.get_job(job.id)
    assert listed.config is None and listed.model == "?" and "n_epochs" in listed.message
    with pytest.raises(CifarError, match="cannot be resumed"):
        jobs.resume_job(job.id)
    with pytest.raises(CifarError, match="n_epochs"):
        jobs.run_worker(job.id)
    assert jobs.get_job(job.id).state == "failed" and fake_training[0] == []


# --- the registry file, the worker's calls and the launcher, pinned ---------------------------

def test_the_registry_is_wal_with_a_30_second_wait(db):
    with jobs.connect() as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_setting_aside_moves_the_journal_too_and_names_the_copy(db):
    db.write_bytes(b"not a database" * 300)
    with pytest.warns(UserWarning) as caught:
        jobs.list_jobs()
    [aside] = db.parent.glob("jobs.sqlite.corrupt-*")
    assert re.fullmatch(r"jobs\.sqlite\.corrupt-\d{8}-\d{6}", aside.name)
    assert str(caught[0].message) == (f"the job registry was unreadable (file is not a database); it was moved to "
                                      f"{aside.name} and a new one started (run folders are untouched)")
    for suffix in ("", "-wal", "-shm"):  # the journal files go with the database
        Path(f"{db}{suffix}").write_bytes(suffix.encode() or b"db")
    with pytest.warns(UserWarning):
        jobs._set_aside(db, ValueError("x"))
    moved = sorted(p.name for p in db.parent.glob("jobs.sqlite.corrupt-*"))
    assert len(moved) == 4 and not db.exists() and not Path(f"{db}-wal").exists()
    assert any(name.endswith("-wal") for name in moved) and any(name.endswith("-shm") for name in moved)


def test_a_busy_registry_is_an_error_not_a_corrupt_one(db, monkeypatch):
    jobs.create_job(CONFIG)

    def busy(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(jobs, "_connect_with_schema", busy)
    naps = []
    monkeypatch.setattr(jobs.time, "sleep", naps.append)
    with pytest.raises(CifarError, match=f"^the job registry {re.escape(str(db))} is busy: database is locked$"):
        jobs.list_jobs()
    assert naps == [0.1] * jobs.LOCKED_RETRIES
    assert not list(db.parent.glob("*.corrupt-*"))  # a busy file is never moved aside


def test_a_registry_busy_for_a_moment_opens_after_a_retry(db, monkeypatch):
    real, answers = jobs._connect_with_schema, iter(["locked", "locked", None])

    def busy_twice(path):
        if next(answers):
            raise sqlite3.OperationalError("database is locked")
        return real(path)

    monkeypatch.setattr(jobs, "_connect_with_schema", busy_twice)
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)
    assert jobs.list_jobs() == []


def test_a_registry_that_fails_twice_is_reported(db, monkeypatch):
    def broken(*args, **kwargs):
        raise sqlite3.DatabaseError("disk image is malformed")

    monkeypatch.setattr(jobs, "_connect_with_schema", broken)
    with pytest.warns(UserWarning), pytest.raises(CifarError, match="cannot be opened: disk image is malformed$"):
        jobs.list_jobs()


def test_creation_stores_the_config_and_the_times(db, tmp_path):
    job = jobs.create_job(CONFIG, str(tmp_path / "chosen"))
    assert job.run_dir == tmp_path / "chosen" and isinstance(job.run_dir, Path)
    assert job.created_at == job.updated_at and job.pid is None and job.pid_started is None
    with sqlite3.connect(db) as connection:
        stored = connection.execute("SELECT config, state FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert TrainConfig.from_json(stored[0]) == CONFIG and stored[1] == "queued"


def test_the_launching_grace_ends_exactly(db):
    job = jobs.create_job(CONFIG)
    assert not jobs.worker_alive(job, now=job.created_at + jobs.STALE_SECONDS)


def test_marking_dead_records_why_in_the_registry_and_the_run(db):
    for state in ("queued", "running", "completed"):
        job = jobs.create_job(CONFIG)
        runs.write_status(job.run_dir, state, epoch=1)
        jobs.mark_dead(job)
        listed = jobs.get_job(job.id)
        assert listed.state == "interrupted"
        assert listed.message == "the worker stopped without finishing (killed or crashed); resume it to continue"
        status = runs.read_status(job.run_dir)
        expected = "completed" if state == "completed" else "interrupted"
        assert status["state"] == expected and status["epoch"] == 1
        if expected == "interrupted":
            assert status["message"] == listed.message
    jobs.mark_dead(jobs.create_job(CONFIG))  # no status.json yet: the registry alone


def test_cancel_continues_a_stopped_worker_so_it_can_stop(db, sleeper):
    job = _as_worker(jobs.create_job(CONFIG), sleeper)
    os.kill(sleeper.pid, signal.SIGSTOP)
    cancelled = jobs.cancel(job.id)
    assert cancelled.message == "cancelled by the user; resumable"
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_the_worker_runs_with_its_own_config_folder_and_quiet_logs(db, monkeypatch):
    from cifar_core import training

    job = jobs.create_job(CONFIG)
    runs.atomic_write_text(job.run_dir / runs.CONFIG_FILE, CONFIG.to_json())  # a run exists, yet no --resume
    seen = []

    def fake_train(config, run_dir, **kwargs):
        seen.append((config, run_dir, kwargs, jobs.get_job(job.id).state))

    monkeypatch.setattr(training, "train", fake_train)
    assert jobs.run_worker(job.id) == 0
    assert seen == [(CONFIG, job.run_dir, {"verbose": 2}, "running")]

    def fake_resume(run_dir, **kwargs):
        seen.append((run_dir, kwargs))

    monkeypatch.setattr(training, "resume", fake_resume)
    assert jobs.run_worker(job.id, resume=True) == 0 and seen[-1] == (job.run_dir, {"verbose": 2})

    def fail_loudly(*args, **kwargs):
        raise ValueError("x" * 1000)

    monkeypatch.setattr(training, "train", fail_loudly)
    with pytest.raises(ValueError):
        jobs.run_worker(job.id)
    assert len(jobs.get_job(job.id).message) == 500


def test_spawning_appends_to_the_log_in_the_package_root(db, monkeypatch, sleeper):
    seen = {}

    def fake_popen(command, **kwargs):
        seen.update(kwargs)
        os.write(kwargs["stdout"], b"worker output\n")  # the log's descriptor, as the child gets it
        return sleeper

    monkeypatch.setattr(jobs.subprocess, "Popen", fake_popen)
    job = jobs.create_job(CONFIG, db.parent / "new" / "run")
    jobs._spawn(job, resume=False)  # makes the folder
    (job.run_dir / runs.LOG_FILE).write_bytes(b"earlier\n")
    jobs._spawn(job, resume=False)
    assert (job.run_dir / runs.LOG_FILE).read_bytes() == b"earlier\nworker output\n"
    assert seen["cwd"] == Path(jobs.__file__).resolve().parent.parent
    assert seen["stdin"] == subprocess.DEVNULL and seen["stderr"] == subprocess.STDOUT
    monkeypatch.chdir(db.parent)
    monkeypatch.setenv("CIFAR_JOBS_DB", db.name)  # relative here; the worker runs in the package root
    jobs._spawn(job, resume=False)
    assert seen["env"]["CIFAR_JOBS_DB"] == str(db.resolve())  # so it is handed the registry's full path


def test_waiting_for_a_start_time_gives_up(monkeypatch):
    calls = []
    monkeypatch.setattr(jobs, "process_start_time", lambda pid: calls.append(pid))
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)
    assert jobs._wait_for_start_time(123) is None and calls == [123] * 50
    monkeypatch.setattr(jobs, "process_start_time", lambda pid: 42.0)
    assert jobs._wait_for_start_time(123) == 42.0


def test_process_start_time_is_field_22_of_proc_stat():
    with open(f"/proc/{os.getpid()}/stat") as handle:
        expected = float(handle.read().rsplit(")", 1)[1].split()[19])
    assert jobs.process_start_time(os.getpid()) == expected
    assert jobs.process_start_time(-1) is None


def test_set_asides_in_one_second_are_numbered(db, monkeypatch):
    monkeypatch.setattr(jobs.time, "strftime", lambda fmt: "20260101-000000")
    for _ in range(3):
        db.write_bytes(b"x")
        with pytest.warns(UserWarning):
            jobs._set_aside(db, ValueError("x"))
    assert sorted(p.name for p in db.parent.glob("jobs.sqlite.corrupt-*")) == [
        "jobs.sqlite.corrupt-20260101-000000", "jobs.sqlite.corrupt-20260101-000000-2",
        "jobs.sqlite.corrupt-20260101-000000-3"]


def test_launch_uses_the_given_folder(db, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(jobs, "_spawn", lambda job, resume: seen.update(job=job))
    job = jobs.launch(CONFIG, tmp_path / "mine")
    assert job.run_dir == tmp_path / "mine" and seen["job"].run_dir == tmp_path / "mine"


def test_the_worker_inherits_the_environment(db, tmp_path, monkeypatch, sleeper):
    captured = {}

    def fake_popen(command, **kwargs):
        captured.update(kwargs)
        return sleeper

    monkeypatch.setattr(jobs.subprocess, "Popen", fake_popen)
    monkeypatch.setenv("STUDIO_MARKER", "kept")
    jobs._spawn(jobs.create_job(CONFIG, tmp_path / "run"), resume=False)
    assert captured["env"]["STUDIO_MARKER"] == "kept" and captured["env"]["PATH"] == os.environ["PATH"]


def test_waiting_for_a_start_time_polls_every_10_ms(monkeypatch):
    naps = []
    monkeypatch.setattr(jobs, "process_start_time", lambda pid: None)
    monkeypatch.setattr(jobs.time, "sleep", naps.append)
    jobs._wait_for_start_time(1)
    assert naps == [0.01] * 50


def test_completion_clears_an_earlier_message(db, fake_training):
    job = jobs.create_job(CONFIG)
    jobs.update_job(job.id, message="stopped; resumable")
    assert jobs.run_worker(job.id) == 0 and jobs.get_job(job.id).message is None


def test_an_outdated_registry_schema_is_set_aside(db):
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, run_dir TEXT)")  # an older layout
    with pytest.warns(UserWarning, match="no such column"):
        assert jobs.list_jobs() == []
    assert len(list(db.parent.glob("jobs.sqlite.corrupt-*"))) == 1


def test_rows_keep_creation_time_and_bounded_messages(db):
    job = jobs.create_job(CONFIG)
    time.sleep(0.01)
    jobs.update_job(job.id, state="running")
    listed = jobs.get_job(job.id)
    assert listed.created_at == job.created_at and listed.updated_at > listed.created_at
    with sqlite3.connect(db) as connection:
        many_unknown = json.dumps({"model": "demo", **{f"unknown_key_{i}": i for i in range(100)}})
        connection.execute("UPDATE jobs SET config = ? WHERE id = ?", (many_unknown, job.id))
    assert len(jobs.get_job(job.id).message) == 500


def test_a_process_name_with_a_parenthesis_is_parsed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", (
        "import ctypes, time; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); print('named', flush=True); "
        "time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "named"
        with open(f"/proc/{child.pid}/stat") as handle:
            text = handle.read()
        assert "(a) b (c)" in text
        after_name = text[text.rindex(")") + 2:].split()  # fields 3.. of proc(5); start time is field 22
        assert jobs.process_start_time(child.pid) == float(after_name[19])
    finally:
        child.kill()
        child.wait()


# --- analysis and export jobs: what the registry stores, and what the worker runs ---------------

@pytest.mark.parametrize("stored, analyses, export", [
    ({"analyze": ["embedding", "labels"]}, ("embedding", "labels"), None),
    ({"export": {"format": "onnx", "quantize": None}}, None, ("onnx", None)),
    ({"export": {"format": "tflite", "quantize": "int8"}}, None, ("tflite", "int8")),
])
def test_a_stored_task_reads_back_as_the_job_it_was(db, tmp_path, stored, analyses, export):
    job = jobs.get_job(jobs._insert_job(tmp_path / "run", json.dumps(stored)).id)
    assert (job.analyses, job.export, job.config, job.message) == (analyses, export, None, None)


@pytest.mark.parametrize("stored", [
    {"analyze": []}, {"analyze": ["embedding", "astrology"]}, {"analyze": "embedding"},
    {"export": {"format": "onnx"}}, {"export": {"format": "onnx", "quantize": None, "extra": 1}},
    {"export": {"format": "pickle", "quantize": None}}, {"export": {"format": "onnx", "quantize": "int4"}},
    {"export": ["onnx", None]}, {"analyze": ["embedding"], "export": {"format": "onnx", "quantize": None}},
    {"model": "demo", "n_epochs": "many"}, "x" * 20_000,
])
def test_a_damaged_stored_task_is_an_unreadable_job_not_a_crash(db, tmp_path, stored):
    text = stored if isinstance(stored, str) else json.dumps(stored)
    job = jobs.get_job(jobs._insert_job(tmp_path / "run", text).id)
    assert (job.analyses, job.export, job.config) == (None, None, None)
    assert job.message.startswith("its stored config is unreadable (") and len(job.message) <= 500
    with pytest.raises(CifarError, match=f"^job {job.id}: its stored config is unreadable"):
        jobs.run_worker(job.id)
    assert jobs.get_job(job.id).state == "failed"


def test_a_training_job_reads_back_its_config(db, tmp_path):
    job = jobs.get_job(jobs._insert_job(tmp_path / "run", CONFIG.to_json()).id)
    assert (job.config, job.analyses, job.export, job.message) == (CONFIG, None, None, None)


@pytest.fixture
def spawned(monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "_spawn", lambda job, resume: started.append((job.id, resume)))
    return started


def test_analysis_and_export_jobs_need_a_trained_model_and_start_a_worker(db, tmp_path, spawned):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(CifarError, match="^run has no trained model to analyse$"):
        jobs.launch_analysis(run_dir, ("embedding",))
    with pytest.raises(CifarError, match="^run has no trained model to export$"):
        jobs.launch_export(run_dir, "onnx")
    assert spawned == [] and jobs.list_jobs() == []
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    analysis = jobs.launch_analysis(run_dir, ("labels", "embedding"))
    export = jobs.launch_export(run_dir, "tflite", "int8")
    assert analysis.analyses == ("labels", "embedding") and analysis.run_dir == run_dir
    assert export.export == ("tflite", "int8") and export.run_dir == run_dir and export.state == "queued"
    assert spawned == [(analysis.id, False), (export.id, False)]


def test_jobs_beyond_the_machine_s_share_are_refused_with_the_reason_before_anything_is_made(db, tmp_path, spawned,
                                                                                              monkeypatch):
    # A Start button clicked again and again (or by several visitors) started a training process each,
    # every one with TensorFlow and its data in memory, on two cores.
    monkeypatch.setattr(jobs, "MAX_ACTIVE_JOBS", 2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    first, second = jobs.launch(CONFIG, tmp_path / "first"), jobs.launch_analysis(run_dir, ("labels",))
    folders = set(runs.runs_root().iterdir()) if runs.runs_root().exists() else set()
    refusal = f"^2 jobs are running or queued \\(job {second.id}, {first.id}\\); this machine runs at most 2 at once"
    for start in (lambda: jobs.launch(CONFIG), lambda: jobs.launch_analysis(run_dir, ("labels",)),
                  lambda: jobs.launch_export(run_dir, "onnx")):
        with pytest.raises(CifarError, match=refusal):
            start()
    assert len(jobs.list_jobs()) == 2 and len(spawned) == 2
    assert (set(runs.runs_root().iterdir()) if runs.runs_root().exists() else set()) == folders  # no run folder
    jobs.update_job(first.id, state="interrupted")  # its worker stopped: there is room for one again
    assert jobs.resume_job(first.id).state == "queued" and spawned[-1] == (first.id, True)
    with pytest.raises(CifarError, match="^2 jobs are running"):
        jobs.launch_export(run_dir, "onnx")
    jobs.update_job(second.id, state="completed")
    assert jobs.launch_export(run_dir, "onnx").export == ("onnx", None)


def test_the_worker_runs_an_analysis_or_an_export_and_records_the_outcome(db, tmp_path, spawned, monkeypatch):
    from cifar_core import analysis, export

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    done = []
    monkeypatch.setattr(analysis, "analyze", lambda folder, chosen, progress: done.append(("analyze", folder, chosen)))
    monkeypatch.setattr(export, "export_run", lambda folder, fmt, quantize, progress:
                        done.append(("export", folder, fmt, quantize)))
    analysing = jobs.launch_analysis(run_dir, ("calibration",))
    exporting = jobs.launch_export(run_dir, "onnx")
    assert jobs.run_worker(analysing.id) == 0 and jobs.run_worker(exporting.id) == 0
    assert done == [("analyze", run_dir, ("calibration",)), ("export", run_dir, "onnx", None)]
    assert [jobs.get_job(j.id).state for j in (analysing, exporting)] == ["completed", "completed"]
    assert jobs.get_job(exporting.id).pid == os.getpid()


class _RecordingStdout:
    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))

    def flush(self):
        self.events.append(("flush",))


def test_a_worker_s_progress_lines_reach_its_log_as_they_happen(db, tmp_path, spawned, monkeypatch):
    from cifar_core import analysis, export

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    monkeypatch.setattr(analysis, "analyze", lambda folder, chosen, progress: progress("analysing 1 of 1"))
    monkeypatch.setattr(export, "export_run", lambda folder, fmt, quantize, progress: progress("exporting"))
    for job in (jobs.launch_analysis(run_dir, ("calibration",)), jobs.launch_export(run_dir, "onnx")):
        stdout = _RecordingStdout()
        monkeypatch.setattr(sys, "stdout", stdout)
        assert jobs.run_worker(job.id) == 0
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        written = "".join(event[1] for event in stdout.events if event[0] == "write")
        assert written == ("analysing 1 of 1\n" if job.analyses else "exporting\n")
        assert stdout.events[-1] == ("flush",)  # not left in a buffer until the worker ends


def test_an_export_is_checked_whole_before_a_job_is_made(db, tmp_path, spawned):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    with pytest.raises(CifarError, match="^quantize must be int8 or absent; received 'int4'$"):
        jobs.launch_export(run_dir, "onnx", "int4")
    assert spawned == [] and jobs.list_jobs() == []


def test_an_export_worker_logs_into_the_run_s_export_folder_made_for_it(db, tmp_path, monkeypatch, sleeper):
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda command, **kwargs: sleeper)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.MODEL_FILE).write_bytes(b"model")
    job = jobs.get_job(jobs._insert_job(run_dir, json.dumps({"export": {"format": "onnx", "quantize": None}})).id)
    jobs._spawn(job, resume=False)
    assert job.log_file.parent == run_dir / "export" and job.log_file.is_file()


@pytest.mark.parametrize("text", [None, b'{"analyze": ["labels"]}', '{"analyze": ["labels"]}'.ljust(10_000)])
def test_only_a_short_text_is_read_as_a_stored_task(text):
    assert jobs._stored_task(text) is None


def test_a_stored_task_just_under_the_bound_is_read():
    assert jobs._stored_task('{"analyze": ["labels"]}'.ljust(9_999)) == ("analyze", ["labels"])
