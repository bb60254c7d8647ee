"""Background jobs: real worker processes, SIGKILL, cancel, resume, concurrent writers."""
import os
import signal
import time
from pathlib import Path

import pytest

from cifar_core import jobs, runs
from cifar_core.config import recipe_config


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "jobs.sqlite"
    monkeypatch.setenv("CIFAR_JOBS_DB", str(path))
    return path


def _config(image_folder, n_epochs):
    return recipe_config("demo", data=str(image_folder), n_epochs=n_epochs, batch_size=4, limit=None,
                         val_fraction=0.25, tta=False)


def _wait(predicate, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_sigkilled_worker_is_marked_interrupted_and_resumes_without_gaps(image_folder, tmp_path, db):
    job = jobs.launch(_config(image_folder, 40), tmp_path / "run")
    assert job.pid and job.pid_started
    _wait(lambda: len(runs.read_history(job.run_dir)) >= 2)
    os.kill(job.pid, signal.SIGKILL)
    _wait(lambda: jobs.process_start_time(job.pid) is None, 30)
    # The kernel drops a killed process's flock a moment after its pid turns zombie.
    _wait(lambda: jobs.list_jobs()[0].state == "interrupted", 10)
    [listed] = jobs.list_jobs()
    assert "resume" in listed.message
    assert runs.read_status(job.run_dir)["state"] == "interrupted"

    jobs.resume_job(job.id)
    _wait(lambda: jobs.get_job(job.id).state in ("completed", "failed"))
    assert jobs.get_job(job.id).state == "completed"
    assert [row["epoch"] for row in runs.read_history(job.run_dir)] == list(range(1, 41))


def test_cancel_stops_the_worker_and_two_jobs_do_not_interfere(image_folder, tmp_path, db):
    first = jobs.launch(_config(image_folder, 200), tmp_path / "first")
    second = jobs.launch(_config(image_folder, 2), tmp_path / "second")
    _wait(lambda: len(runs.read_history(first.run_dir)) >= 1)
    jobs.cancel(first.id)
    _wait(lambda: jobs.process_start_time(first.pid) is None, 60)
    assert jobs.get_job(first.id).state == "cancelled"
    assert runs.read_status(first.run_dir)["state"] == "interrupted"
    _wait(lambda: jobs.get_job(second.id).state in ("completed", "failed"))
    assert jobs.get_job(second.id).state == "completed"
    assert runs.read_json(second.run_dir / runs.METRICS_FILE)["epochs_run"] == 2


def test_a_reused_pid_is_not_mistaken_for_the_worker(image_folder, db):
    job = jobs.create_job(_config(image_folder, 1))
    # This test process is alive, but it is not the process that started the job.
    jobs.update_job(job.id, state="running", pid=os.getpid(), pid_started=12345.0)
    assert not jobs.worker_alive(jobs.get_job(job.id))
    assert jobs.list_jobs()[0].state == "interrupted"


def test_liveness_is_the_process_or_the_lock_never_the_heartbeat_age(image_folder, tmp_path, db):
    job = jobs.create_job(_config(image_folder, 1), tmp_path / "run")
    jobs.update_job(job.id, state="running", pid=os.getpid(), pid_started=jobs.process_start_time(os.getpid()))
    runs.write_status(job.run_dir, "running")
    # A live but stalled worker (lid closed, SIGSTOP) stays alive however old its heartbeat.
    assert jobs.worker_alive(jobs.get_job(job.id), now=time.time() + 100 * jobs.STALE_SECONDS)
    # Another process's start time under the same pid: that worker is gone.
    jobs.update_job(job.id, pid_started=-1.0)
    assert not jobs.worker_alive(jobs.get_job(job.id))
    with runs.RunWriter(job.run_dir):  # ...unless something still holds the run's writer lock
        assert jobs.worker_alive(jobs.get_job(job.id))
    assert not jobs.worker_alive(jobs.get_job(job.id))


def _hammer(path, worker, n):
    os.environ["CIFAR_JOBS_DB"] = str(path)
    from cifar_core import jobs as registry
    from cifar_core.config import TrainConfig

    for i in range(n):
        job = registry.create_job(TrainConfig(model="demo"), f"/tmp/run-{worker}-{i}")
        registry.update_job(job.id, state="running", message=f"{worker}:{i}")


def test_concurrent_writers_lose_nothing(db, spawn_context):
    context = spawn_context
    workers = [context.Process(target=_hammer, args=(db, w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    listed = jobs.list_jobs(refresh=False)
    assert len(listed) == 160
    assert {job.message for job in listed} == {f"{w}:{i}" for w in range(4) for i in range(40)}
    with jobs.connect() as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_analysis_runs_as_a_background_job(shipped_runs, tmp_path, monkeypatch):
    import shutil
    import time

    from cifar_core.analysis import analysis_path

    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    run_dir = tmp_path / "g3-tiny"
    shutil.copytree(shipped_runs["runs"] / "g3-tiny", run_dir)
    job = jobs.launch_analysis(run_dir, ("labels", "calibration"))
    assert job.analyses == ("labels", "calibration") and job.model == "analysis"
    deadline = time.time() + 120
    while jobs.get_job(job.id).state in jobs.ACTIVE_STATES and time.time() < deadline:
        time.sleep(0.2)
    finished = jobs.get_job(job.id)
    assert finished.state == "completed", (run_dir / "analysis" / "analyze.log").read_text()[-2000:]
    assert analysis_path(run_dir, "labels").is_file() and analysis_path(run_dir, "calibration").is_file()
    assert not analysis_path(run_dir, "robustness").exists()
    assert "calibration: done" in (run_dir / "analysis" / "analyze.log").read_text()
    assert not (run_dir / "train.log").exists() or "analysis" not in (run_dir / "train.log").read_text()


def test_an_analysis_job_needs_a_model_and_known_analyses(tmp_path, monkeypatch):
    from cifar_core.errors import CifarError, ConfigError

    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    with pytest.raises(CifarError, match="no trained model"):
        jobs.launch_analysis(tmp_path, ("labels",))
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(ConfigError, match="unknown analysis"):
        jobs.launch_analysis(tmp_path, ("umap",))
    assert jobs.list_jobs() == []


def test_launch_refuses_what_the_worker_would_before_any_job_or_folder(tmp_path, monkeypatch):
    from cifar_core.config import preset_config
    from cifar_core.errors import ConfigError

    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "runs"))  # no teacher run in here
    refused = [(preset_config("fastnet-distilled", data="x"), "not a finished run"),
               (recipe_config("demo", data="x", low_res_epochs=1, low_res_size=16, fine_tune_epochs=1),
                "transfer models' fine-tuning"),
               (recipe_config("lite0", data="x", distribute="mirrored"), "--distribute mirrored")]
    for config, reason in refused:
        with pytest.raises(ConfigError, match=reason):
            jobs.launch(config)
    assert jobs.list_jobs() == []
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_launch_checks_do_not_import_tensorflow():
    from helpers import tensorflow_and_keras_imported_by

    code = ("from cifar_core.config import recipe_config; "
            "from cifar_core.training.checks import check_training_config; "
            "check_training_config(recipe_config('fastnet', data='x'))")
    assert tensorflow_and_keras_imported_by(code) == "False False"


def _analyses(text):
    return jobs._stored_analyses(jobs._stored_task(text))


def _export(text):
    return jobs._stored_export(jobs._stored_task(text))


def test_a_stored_analysis_config_is_read_strictly():
    assert _analyses('{"analyze": ["labels"]}') == ("labels",)
    for text in ('{"analyze": []}', '{"analyze": ["umap"]}', '{"analyze": ["labels"], "model": "g3"}', "[1]",
                 "{bad", None, '{"model": "g3"}', '{"export": {"format": "onnx", "quantize": null}}',
                 "x" * 10_001):
        assert _analyses(text) is None


def test_a_stored_export_config_is_read_strictly():
    assert _export('{"export": {"format": "onnx", "quantize": null}}') == ("onnx", None)
    assert _export('{"export": {"format": "tflite", "quantize": "int8"}}') == ("tflite", "int8")
    for text in ('{"export": {"format": "pickle", "quantize": null}}', '{"export": {"format": "onnx"}}',
                 '{"export": {"format": "onnx", "quantize": "int4"}}', '{"export": ["onnx"]}',
                 '{"analyze": ["labels"]}', '{"export": {"format": "onnx", "quantize": null, "x": 1}}'):
        assert _export(text) is None
    row = (1, "/tmp/r", '{"export": {"format": "onnx", "quantize": "int8"}}', "queued", None, None, 0.0, 0.0, None)
    job = jobs._row_to_job(row)
    assert job.export == ("onnx", "int8") and job.config is None and job.message is None
    assert job.model == "export" and job.log_file == Path("/tmp/r/export/export.log")


def test_an_export_runs_as_a_background_job(shipped_runs, tmp_path, monkeypatch):
    import shutil
    import time

    from cifar_core.errors import CifarError, ConfigError
    from cifar_core.export import read_manifest

    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    with pytest.raises(CifarError, match="no trained model"):
        jobs.launch_export(tmp_path, "onnx")
    with pytest.raises(ConfigError, match="SavedModel stays float32"):
        jobs.launch_export(tmp_path, "saved_model", "int8")
    run_dir = tmp_path / "demo-tiny"
    shutil.copytree(shipped_runs["runs"] / "demo-tiny", run_dir)
    job = jobs.launch_export(run_dir, "onnx")
    deadline = time.time() + 180
    while jobs.get_job(job.id).state in jobs.ACTIVE_STATES and time.time() < deadline:
        time.sleep(0.2)
    finished = jobs.get_job(job.id)
    assert finished.state == "completed", (run_dir / "export" / "export.log").read_text()[-2000:]
    assert read_manifest(run_dir / "export")["onnx"]["within_tolerance"]
    assert "reading the 10,000 test images" in (run_dir / "export" / "export.log").read_text()
