"""Run folders: atomic writes and tolerant listing."""
import json
import multiprocessing
import time

import pytest

from cifar_core import runs
from cifar_core.errors import RunFolderError


def _rewrite_forever(path, stop_at):
    payload = {"values": list(range(20_000))}
    i = 0
    while time.time() < stop_at:
        payload["i"] = i
        runs.atomic_write_json(path, payload)
        i += 1


def test_a_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "status.json"
    runs.atomic_write_json(path, {"i": -1, "values": []})
    writer = multiprocessing.get_context("spawn").Process(target=_rewrite_forever, args=(path, time.time() + 2.0))
    writer.start()
    reads = 0
    try:
        while writer.is_alive():
            json.loads(path.read_text())  # raises on a half-written file
            reads += 1
    finally:
        writer.join()
    assert reads > 10
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    runs.atomic_write_json(path, {"ok": True})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(OSError):
        runs.atomic_write_json(path, {"ok": False})
    assert json.loads(path.read_text()) == {"ok": True}
    assert not list(tmp_path.glob(".*.tmp"))


def test_listing_skips_corrupt_runs_with_a_warning(tmp_path):
    good = tmp_path / "good"
    runs.atomic_write_json(good / runs.CONFIG_FILE, {"model": "g3"})
    runs.atomic_write_json(good / runs.METRICS_FILE, {"test_accuracy": 0.5})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / runs.CONFIG_FILE).write_text('{"model": "g3", "n_ep')  # half-written by an old tool
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning):
        found, problems = runs.list_runs(tmp_path)
    assert [r.run_id for r in found] == ["good"]
    # The empty folder may be a run a job launcher is creating: skipped without a warning.
    assert len(problems) == 1 and "config.json in bad is not valid JSON" in problems[0]
    with pytest.raises(RunFolderError, match="not found"):
        runs.load_run(tmp_path / "missing")


def test_history_round_trip(tmp_path):
    rows = [{"epoch": 1, "stage": "train", "loss": 1.5, "accuracy": 0.4, "learning_rate": 0.001, "seconds": 3.0}]
    runs.write_history(tmp_path, rows)
    back = runs.read_history(tmp_path)
    assert back[0]["epoch"] == 1 and back[0]["loss"] == 1.5 and back[0]["val_loss"] is None


def test_a_run_whose_heartbeat_stopped_is_not_running_forever(tmp_path):
    status = runs.write_status(tmp_path, "running", epoch=2)
    assert runs.effective_state(status) == "running"
    assert runs.effective_state(status, now=status["heartbeat"] + runs.STALE_SECONDS + 1) == "interrupted"
    assert runs.effective_state({"state": "completed", "heartbeat": 0}) == "completed"
