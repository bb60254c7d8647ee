"""Background training jobs: a SQLite registry plus one worker process per job.

Streamlit cannot train in its own process (its script reruns, its threads
cannot call Streamlit), so the dashboard launches `python -m cifar_core
worker JOB_ID` and polls. The registry survives dashboard restarts. A job is
"running" while its worker provably lives: same pid AND same process start
time (pids get reused), or while some process holds its run folder's writer
lock (the OS drops that lock when a process dies, and keeps it while a
process is merely stopped, so a stalled worker is never declared dead and
resumed beside itself). A corrupt registry is set aside, never fatal.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import runs
from .config import TrainConfig
from .errors import CifarError, ConfigError, one_line
from .safeio import open_for_writing

DEFAULT_DB = runs.DEFAULT_RUNS_ROOT.parent / "jobs.sqlite"
STALE_SECONDS = runs.STALE_SECONDS
ACTIVE_STATES = ("queued", "running")
LOCKED_RETRIES = 50  # x 0.1 s

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    pid_started REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    message TEXT
)
"""


@dataclass(frozen=True)
class Job:
    id: int
    run_dir: Path
    config: TrainConfig | None  # None: the stored config no longer validates (see message)
    state: str
    pid: int | None
    pid_started: float | None
    created_at: float
    updated_at: float
    message: str | None
    analyses: tuple[str, ...] | None = None  # an analysis job (`analyze` of a finished run), not training
    export: tuple[str, str | None] | None = None  # an export job: (format, quantization)

    @property
    def model(self) -> str:
        if self.analyses:
            return "analysis"
        if self.export:
            return "export"
        return self.config.model if self.config is not None else "?"

    @property
    def log_file(self) -> Path:
        """Where the worker's output goes: the run's train.log, analysis/analyze.log or export/export.log."""
        if self.export:
            return self.run_dir / EXPORT_LOG
        return self.run_dir / ("analysis/analyze.log" if self.analyses else runs.LOG_FILE)


def db_path() -> Path:
    return Path(os.environ.get("CIFAR_JOBS_DB") or DEFAULT_DB)


@contextmanager
def connect():
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = _open(path)
    try:
        yield connection
    finally:
        connection.close()


def _open(path: Path) -> sqlite3.Connection:
    """A connection with the schema in place; a corrupt file is renamed aside and a new one started."""
    for _ in range(LOCKED_RETRIES):
        try:
            return _connect_with_schema(path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                _set_aside(path, exc)
                break
            # Switching a new file to WAL needs the whole file: SQLite answers "locked" at
            # once, without its busy wait, when another process is doing the same.
            busy = exc
            time.sleep(0.1)
        except sqlite3.DatabaseError as exc:
            _set_aside(path, exc)
            break
    else:
        raise CifarError(f"the job registry {path} is busy: {busy}") from None
    try:
        return _connect_with_schema(path)
    except sqlite3.DatabaseError as exc:
        raise CifarError(f"the job registry {path} cannot be opened: {exc}") from None


def _connect_with_schema(path: Path) -> sqlite3.Connection:
    # WAL: the dashboard reads while workers write; writers wait up to 30 s for each other.
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(SCHEMA)
        connection.execute(f"SELECT {COLUMNS} FROM jobs LIMIT 1").fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def _set_aside(path: Path, exc: Exception) -> None:
    stamp = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, copy = path.with_name(stamp), 1
    while aside.exists():  # twice in one second: never overwrite the earlier copy
        copy += 1
        aside = path.with_name(f"{stamp}-{copy}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{aside}{suffix}"))
    warnings.warn(f"the job registry was unreadable ({exc}); it was moved to {aside.name} and a new one "
                  "started (run folders are untouched)", stacklevel=2)


ANALYZE_KEY = "analyze"  # an analysis job's stored config: {"analyze": ["embedding", ...]}
EXPORT_KEY = "export"  # an export job's stored config: {"export": {"format": "onnx", "quantize": null}}
EXPORT_LOG = "export/export.log"


def _row_to_job(row) -> Job:
    config, message = None, row[8]
    task = _stored_task(row[2])
    analyses, export = _stored_analyses(task), _stored_export(task)
    if analyses is None and export is None:
        try:
            config = TrainConfig.from_json(row[2])
        except (ConfigError, TypeError) as exc:
            message = f"its stored config is unreadable ({exc})"[:500]
    return Job(row[0], Path(row[1]), config, row[3], row[4], row[5], row[6], row[7], message, analyses, export)


def _stored_task(text) -> tuple[str, object] | None:
    """(key, value) of a stored {"analyze": ...} or {"export": ...}; None for a training config."""
    try:
        data = json.loads(text) if isinstance(text, str) and len(text) < 10_000 else None
    except ValueError:
        return None
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in (ANALYZE_KEY, EXPORT_KEY):
        return next(iter(data.items()))
    return None


def _stored_analyses(task) -> tuple[str, ...] | None:
    """The analyses an analysis job's stored config names, or None for any other job."""
    from .analysis import ANALYSES

    chosen = task[1] if task and task[0] == ANALYZE_KEY else None
    if isinstance(chosen, list) and chosen and all(name in ANALYSES for name in chosen):
        return tuple(chosen)
    return None


def _stored_export(task) -> tuple[str, str | None] | None:
    """(format, quantization) of an export job's stored config, or None for any other job."""
    from .export import FORMATS, QUANTIZATIONS

    chosen = task[1] if task and task[0] == EXPORT_KEY else None
    if isinstance(chosen, dict) and set(chosen) == {"format", "quantize"} and chosen["format"] in FORMATS \
            and chosen["quantize"] in QUANTIZATIONS:
        return chosen["format"], chosen["quantize"]
    return None


COLUMNS = "id, run_dir, config, state, pid, pid_started, created_at, updated_at, message"


def create_job(config: TrainConfig, run_dir: Path | None = None) -> Job:
    run_dir = Path(run_dir) if run_dir else runs.create_run_dir(config.model)
    return _insert_job(run_dir, config.to_json())


def _insert_job(run_dir: Path, stored_config: str) -> Job:
    """A queued job row: a training config, or an analysis job's {"analyze": [...]}."""
    now = time.time()
    with connect() as db:
        cursor = db.execute("INSERT INTO jobs (run_dir, config, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                            (str(run_dir), stored_config, "queued", now, now))
        job_id = cursor.lastrowid
    return get_job(job_id)


def launch_analysis(run_dir: Path | str, analyses: tuple[str, ...]) -> Job:
    """Analyse a finished run in a background worker (`python -m cifar_core analyze`'s work)."""
    from .analysis import parse_only

    chosen = parse_only(",".join(analyses))
    run_dir = Path(run_dir)
    if not (run_dir / runs.MODEL_FILE).is_file():
        raise CifarError(f"{run_dir.name} has no trained model to analyse")
    return _start_new(lambda: _insert_job(run_dir, json.dumps({ANALYZE_KEY: list(chosen)})))


def launch_export(run_dir: Path | str, fmt: str, quantize: str | None = None) -> Job:
    """Export a finished run in a background worker (`python -m cifar_core export`'s work, into
    RUN_DIR/export)."""
    from .export import check_request

    check_request(fmt, quantize)
    run_dir = Path(run_dir)
    if not (run_dir / runs.MODEL_FILE).is_file():
        raise CifarError(f"{run_dir.name} has no trained model to export")
    return _start_new(lambda: _insert_job(run_dir, json.dumps({EXPORT_KEY: {"format": fmt, "quantize": quantize}})))


def get_job(job_id: int) -> Job:
    with connect() as db:
        row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise CifarError(f"no job with id {job_id}")
    return _row_to_job(row)


def update_job(job_id: int, **fields) -> None:
    fields["updated_at"] = time.time()
    assignments = ", ".join(f"{key} = ?" for key in fields)
    with connect() as db:
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))


# The Train page lists the jobs every 2 s: a registry of a long sweep lists this many, every active
# job among them (a hostile registry of a million "running" rows is bounded too).
MAX_LISTED_JOBS = 200


def list_jobs(refresh: bool = True) -> list[Job]:
    """The active jobs and the newest others, MAX_LISTED_JOBS in all, newest first (a warning where older
    ones are left out); dead workers are marked interrupted on the way."""
    jobs, total = _listed_jobs()
    if refresh:
        dead = [job for job in jobs if job.state in ACTIVE_STATES and not worker_alive(job)]
        for job in dead:
            mark_dead(job)
        if dead:
            jobs, total = _listed_jobs()
    if total > len(jobs):
        warnings.warn(f"the job registry holds {total:,} jobs; listed are every active one and the newest others, "
                      f"{MAX_LISTED_JOBS:,} in all", stacklevel=2)
    return jobs


def _listed_jobs() -> tuple[list[Job], int]:
    active = ", ".join("?" * len(ACTIVE_STATES))
    with connect() as db:
        rows = db.execute(f"SELECT {COLUMNS} FROM jobs ORDER BY state IN ({active}) DESC, id DESC LIMIT ?",
                          (*ACTIVE_STATES, MAX_LISTED_JOBS)).fetchall()
        total = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return sorted((_row_to_job(row) for row in rows), key=lambda job: -job.id), total




# --- liveness -----------------------------------------------------------------------------

def process_start_time(pid: int) -> float | None:
    """Start time of pid in clock ticks since boot (Linux), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            # The command name may contain spaces; fields after the last ')' are fixed.
            fields = handle.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has finished
            return None
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def worker_alive(job: Job, now: float | None = None) -> bool:
    """The job's worker process still exists, or something still holds its run's writer lock."""
    if runs.writer_alive(job.run_dir):
        return True
    if job.state == "queued" and job.pid is None:
        return (now or time.time()) - job.created_at < STALE_SECONDS  # launching
    return job.pid is not None and process_start_time(job.pid) == job.pid_started


def mark_dead(job: Job) -> None:
    message = "the worker stopped without finishing (killed or crashed); resume it to continue"
    update_job(job.id, state="interrupted", message=message)
    try:
        status = runs.read_status(job.run_dir) or {}
        if status.get("state") in ("running", "queued"):
            runs.write_status(job.run_dir, "interrupted", **runs.progress_fields(status), message=message)
    except (OSError, runs.RunFolderError):
        pass


# --- launching and stopping --------------------------------------------------------------------

# Jobs at once: each is a process of its own with TensorFlow and its data in memory (a transfer model
# at 224 px takes gigabytes), and two cores shared by more trainings only make each slower. A button
# clicked again, or by several visitors, is refused with the reason rather than thrashing the laptop.
MAX_ACTIVE_JOBS = 3
_launching = threading.Lock()  # the dashboard's sessions are threads: one count-then-start at a time


def _check_room_for_a_job() -> None:
    active = [job.id for job in list_jobs() if job.state in ACTIVE_STATES]  # dead workers marked first
    if len(active) >= MAX_ACTIVE_JOBS:
        raise CifarError(f"{len(active)} jobs are running or queued (job {', '.join(map(str, active))}); this "
                         f"machine runs at most {MAX_ACTIVE_JOBS} at once: wait for one to finish, or cancel one")


def launch(config: TrainConfig, run_dir: Path | None = None) -> Job:
    """Create a job and start its worker process; returns at once. A config the worker would
    refuse (a missing teacher, settings its model cannot use) is refused here, before any row,
    and so is a job beyond MAX_ACTIVE_JOBS."""
    from .training.checks import check_training_config

    check_training_config(config)
    return _start_new(lambda: create_job(config, run_dir))


def _start_new(make_job) -> Job:
    """A new job's row (and run folder) made by `make_job` and its worker started, if there is room."""
    with _launching:
        _check_room_for_a_job()
        job = make_job()
        _spawn(job, resume=False)
    return get_job(job.id)


def resume_job(job_id: int) -> Job:
    job = get_job(job_id)
    if job.config is None and not job.analyses and not job.export:
        raise CifarError(f"job {job_id} cannot be resumed: {job.message}")
    with _launching:
        if worker_alive(job):
            raise CifarError(f"job {job_id} is still running (its worker holds the run folder)")
        _check_room_for_a_job()
        update_job(job_id, state="queued", pid=None, pid_started=None, message=None)
        _spawn(get_job(job_id), resume=True)
    return get_job(job_id)


def _spawn(job: Job, resume: bool) -> None:
    """Start the job's worker, its output appended to the job's log. A worker that cannot start (a
    link or pipe where the log belongs, a full disk, no interpreter) fails the job with that line
    instead of leaving it queued with no worker."""
    env = dict(os.environ, CIFAR_JOBS_DB=str(db_path().resolve()))
    command = [sys.executable, "-m", "cifar_core", "worker", str(job.id)] + (["--resume"] if resume else [])
    try:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        if job.log_file.parent != job.run_dir:
            runs.ensure_subfolder(job.log_file.parent)
        log = open_for_writing(job.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, CifarError, "job log")
        try:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True)
        finally:
            os.close(log)
    except (CifarError, OSError) as exc:
        update_job(job.id, state="failed", message=one_line(exc))
        raise CifarError(f"job {job.id} could not start: {one_line(exc)}") from None
    update_job(job.id, pid=process.pid, pid_started=_wait_for_start_time(process.pid))


def _wait_for_start_time(pid: int) -> float | None:
    for _ in range(50):
        started = process_start_time(pid)
        if started is not None:
            return started
        time.sleep(0.01)
    return None


def cancel(job_id: int) -> Job:
    """Stop a job's worker (SIGTERM: it records 'interrupted' and stays resumable)."""
    job = get_job(job_id)
    # Record the cancel before signalling, so the worker sees it when it stops.
    update_job(job_id, state="cancelled", message="cancelled by the user; resumable")
    if job.pid and process_start_time(job.pid) == job.pid_started:
        try:
            os.kill(job.pid, signal.SIGTERM)
            os.kill(job.pid, signal.SIGCONT)  # a stopped worker handles the SIGTERM only once continued
        except ProcessLookupError:
            pass
    return get_job(job_id)


def _log_line(line: str) -> None:
    """A worker's progress line, into its log at once (the log is a file, so print alone would buffer it)."""
    print(line, flush=True)


def run_worker(job_id: int, resume: bool = False) -> int:
    """The worker process body: train, and keep the registry in step."""
    from .training import resume as resume_run
    from .training import train

    job = get_job(job_id)
    if job.state == "cancelled":  # cancelled before this process got going
        return 130
    if job.config is None and not job.analyses and not job.export:
        update_job(job_id, state="failed")
        raise CifarError(f"job {job_id}: {job.message}")
    update_job(job_id, state="running", pid=os.getpid(), pid_started=process_start_time(os.getpid()))
    try:
        if job.analyses:
            from .analysis import analyze

            analyze(job.run_dir, job.analyses, progress=_log_line)
        elif job.export:
            from .export import export_run

            export_run(job.run_dir, *job.export, progress=_log_line)
        elif resume and (job.run_dir / runs.CONFIG_FILE).exists():
            resume_run(job.run_dir, verbose=2)
        else:
            train(job.config, job.run_dir, verbose=2)
    except KeyboardInterrupt:
        if get_job(job_id).state != "cancelled":
            update_job(job_id, state="interrupted", message="stopped; resumable")
        return 130
    except Exception as exc:  # noqa: BLE001 - the registry must learn of any failure
        update_job(job_id, state="failed", message=f"{type(exc).__name__}: {exc}"[:500])
        raise
    update_job(job_id, state="completed", message=None)
    return 0
