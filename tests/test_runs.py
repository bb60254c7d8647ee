"""Run folders: atomic writes and tolerant listing."""
import json
import time

import pytest

from cifar_core import runs, schema
from cifar_core.errors import RunFolderError


def _rewrite_forever(path, stop_at):
    payload = {"values": list(range(20_000))}
    i = 0
    while time.time() < stop_at:
        payload["i"] = i
        runs.atomic_write_json(path, payload)
        i += 1


def test_a_reader_never_sees_a_partial_file(tmp_path, spawn_context):
    path = tmp_path / "status.json"
    runs.atomic_write_json(path, {"i": -1, "values": []})
    writer = spawn_context.Process(target=_rewrite_forever, args=(path, time.time() + 2.0))
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


# --- ids, folders, locks, states, readers and shipping: fast tests, no training ----------------

import os  # noqa: E402
import re  # noqa: E402

from cifar_core.config import TrainConfig  # noqa: E402

CONFIG = TrainConfig(model="demo")


def test_run_ids_say_when_what_and_a_random_part():
    now = time.mktime((2026, 11, 27, 9, 8, 7, 0, 0, -1))
    run_id = runs.new_run_id("lite0/../x y", now=now)
    assert re.fullmatch(r"20261127-090807-lite0_.._x_y-[0-9a-f]{6}", run_id)
    assert len(runs.new_run_id("m" * 100, now=now)) == len("20261127-090807-") + 40 + 7
    assert runs.new_run_id("demo").startswith(time.strftime("%Y%m%d-%H%M"))


def test_new_run_folders_go_under_the_runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "deep" / "runs"))
    assert runs.runs_root() == tmp_path / "deep" / "runs"
    made = runs.create_run_dir("demo")
    assert made.parent == tmp_path / "deep" / "runs" and made.is_dir() and not any(made.iterdir())
    monkeypatch.delenv("CIFAR_RUNS_DIR")
    assert runs.runs_root() == runs.DEFAULT_RUNS_ROOT


def test_a_clash_of_ids_tries_again_and_gives_up_in_the_end(tmp_path, monkeypatch):
    ids = iter(["taken", "taken", "free"])
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(runs, "new_run_id", lambda model: next(ids))
    assert runs.create_run_dir("demo", tmp_path) == tmp_path / "free"
    monkeypatch.setattr(runs, "new_run_id", lambda model: "taken")
    with pytest.raises(RunFolderError, match=f"^could not create a new run folder under {tmp_path}$"):
        runs.create_run_dir("demo", tmp_path)


def test_only_empty_or_launcher_folders_take_a_new_run(tmp_path):
    runs.check_new_run_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    runs.check_new_run_dir(tmp_path / "empty")
    launched = tmp_path / "launched"
    launched.mkdir()
    (launched / runs.LOG_FILE).write_text("log")
    (launched / runs.LOCK_FILE).write_text("1")
    runs.check_new_run_dir(launched)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a", "b", "c", "d", "e", "f"):
        (mine / name).write_text(name)
    with pytest.raises(RunFolderError) as caught:
        runs.check_new_run_dir(mine)
    assert str(caught.value) == (f"{mine} is not empty and not a run folder (it holds a, b, c, d, e, ...); "
                                 "pick an empty or new folder")
    (launched / runs.CONFIG_FILE).write_text("{}")
    with pytest.raises(RunFolderError, match="already holds a run; use --resume"):
        runs.check_new_run_dir(launched)


def test_the_writer_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    run_dir = tmp_path / "new" / "run"
    assert not runs.writer_alive(run_dir)
    with runs.RunWriter(run_dir):
        assert (run_dir / runs.LOCK_FILE).read_text() == str(os.getpid())
        assert runs.writer_alive(run_dir)
        with pytest.raises(RunFolderError) as caught:
            runs.RunWriter(run_dir).__enter__()
        assert str(caught.value) == (f"run is being written by another process (pid {os.getpid()}); "
                                     "wait for it to finish or cancel it first")
    assert not runs.writer_alive(run_dir)
    (run_dir / runs.LOCK_FILE).write_text("")
    with runs.RunWriter(run_dir), pytest.raises(RunFolderError, match=r"\(pid \d+\)"):
        runs.RunWriter(run_dir).__enter__()
    (tmp_path / "blank").write_text("  ")
    fd = os.open(tmp_path / "blank", os.O_RDONLY)
    assert runs._lock_holder(fd) == "?"
    os.close(fd)
    assert runs._lock_holder(fd) == "?"  # a closed descriptor: nothing to say, no error


def test_effective_state_follows_the_lock_when_there_is_one(tmp_path):
    status = {"state": "running", "heartbeat": time.time()}
    assert runs.effective_state(status, run_dir=tmp_path) == "running"  # no lock file: the heartbeat decides
    with runs.RunWriter(tmp_path):
        assert runs.effective_state({"state": "queued", "heartbeat": 0}, run_dir=tmp_path) == "queued"
    assert runs.effective_state(status, run_dir=tmp_path) == "interrupted"
    for state in ("completed", "failed", "cancelled", "interrupted"):
        assert runs.effective_state({"state": state}, run_dir=tmp_path) == state
    assert runs.effective_state({}) == "unknown"


@pytest.mark.parametrize("age,state", [(runs.STALE_SECONDS - 1, "running"), (runs.STALE_SECONDS, "running"),
                                       (runs.STALE_SECONDS + 1, "interrupted")])
def test_without_a_lock_a_heartbeat_goes_stale_after_the_limit(age, state):
    status = {"state": "running", "heartbeat": 1000.0}
    assert runs.effective_state(status, now=1000.0 + age) == state
    assert runs.effective_state({"state": "queued", "heartbeat": 1000.0}, now=1000.0 + age) == \
        state.replace("running", "queued")
    assert runs.effective_state({"state": "running"}, now=1e12) == "running"  # no heartbeat at all


def test_status_writes_validate_the_state_and_keep_progress(tmp_path):
    with pytest.raises(ValueError, match="^state must be one of .*; received 'done'$"):
        runs.write_status(tmp_path, "done")
    written = runs.write_status(tmp_path, "running", epoch=3, n_epochs=9, progress=0.3, stage="train")
    assert written["pid"] == os.getpid() and written["heartbeat"] == pytest.approx(time.time(), abs=5)
    assert runs.read_status(tmp_path) == written
    updated = runs.update_status(tmp_path, "interrupted", message="stopped")
    assert {k: updated[k] for k in ("state", "epoch", "n_epochs", "progress", "message")} == {
        "state": "interrupted", "epoch": 3, "n_epochs": 9, "progress": 0.3, "message": "stopped"}
    assert "stage" not in updated  # only the progress fields carry over
    (tmp_path / runs.STATUS_FILE).write_text("{broken")
    assert runs.update_status(tmp_path, "failed")["state"] == "failed"  # a corrupt status is replaced


def _run_folder(root, name, config=CONFIG, **files):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    runs.atomic_write_text(run_dir / runs.CONFIG_FILE, config.to_json())
    for file_name, data in files.items():
        target = run_dir / file_name
        if isinstance(data, (dict, list)):
            runs.atomic_write_json(target, data)
        else:
            target.write_bytes(data if isinstance(data, bytes) else data.encode())
    return run_dir


def test_load_run_validates_and_fills_in_what_is_missing(tmp_path):
    bare = _run_folder(tmp_path, "bare")
    run = runs.load_run(bare)
    assert run.run_id == "bare" and run.path == bare and run.config == CONFIG.to_dict()
    assert run.status == {"state": "unknown"} and run.metrics is None and run.data is None and not run.has_model
    full = _run_folder(tmp_path, "full", **{runs.METRICS_FILE: {"test_accuracy": 0.5},
                                            runs.DATA_FILE: {"class_names": ["a", "b"]},
                                            runs.STATUS_FILE: {"state": "completed"}, runs.MODEL_FILE: b"zip"})
    run = runs.load_run(full)
    assert run.metrics == {"test_accuracy": 0.5} and run.data["class_names"] == ["a", "b"] and run.has_model
    assert run.status == {"state": "completed"}
    bad = _run_folder(tmp_path, "bad", **{runs.CONFIG_FILE: '{"model": "demo", "n_epochs": 0}'})
    with pytest.raises(RunFolderError, match=r"^config.json in bad: n_epochs must be in \[1, 10000\]"):
        runs.load_run(bad)
    (tmp_path / "no-config").mkdir()
    with pytest.raises(RunFolderError, match="^missing config.json in "):
        runs.load_run(tmp_path / "no-config")


def test_listing_is_newest_first_and_skips_hidden_files_and_launches(tmp_path):
    for name in ("20260101-a", "20261231-b", "20260601-c"):
        _run_folder(tmp_path, name)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "stray-file.txt").write_text("x")
    launching = tmp_path / "20261232-launching"
    launching.mkdir()
    (launching / runs.LOG_FILE).write_text("starting")
    found, problems = runs.list_runs(tmp_path)
    assert [r.run_id for r in found] == ["20261231-b", "20260601-c", "20260101-a"] and problems == []
    assert runs.list_runs(tmp_path / "nowhere") == ([], [])
    half = tmp_path / "20261233-half"
    half.mkdir()
    (half / runs.LOG_FILE).write_text("x")
    (half / "notes.txt").write_text("x")  # not just a launcher's files: a broken run, reported
    with pytest.warns(UserWarning, match="skipped 20261233-half: missing config.json"):
        assert len(runs.list_runs(tmp_path)[1]) == 1


def test_a_crowded_root_is_read_only_as_far_as_the_listing_shows(tmp_path, monkeypatch):
    # The dashboard lists the runs every few seconds: 3,000 folders took 1.8 s a time, however many
    # of them the page could show.
    monkeypatch.setattr(runs, "MAX_LISTED_RUNS", 4)
    for name in ("20260101-a", "20260102-b", "20260103-c", "lite2-shipped"):
        _run_folder(tmp_path, name)
    (tmp_path / "20260102-stray.txt").write_text("an entry, not a run")
    (tmp_path / ".hidden").mkdir()  # not an entry the listing counts
    read = []
    load_run = runs.load_run
    monkeypatch.setattr(runs, "load_run", lambda run_dir: read.append(run_dir.name) or load_run(run_dir))
    with pytest.warns(UserWarning, match="holds 5 entries"):
        found, problems = runs.list_runs(tmp_path)
    assert [r.run_id for r in found] == read == ["lite2-shipped", "20260103-c", "20260102-b"]
    assert problems == [f"{tmp_path} holds 5 entries; only the first 4 were read (newest runs first)"]
    (tmp_path / "20260102-stray.txt").unlink()
    assert [r.run_id for r in runs.list_runs(tmp_path)[0]] == ["lite2-shipped", "20260103-c", "20260102-b",
                                                                "20260101-a"]  # exactly as many: no warning


def test_read_json_reports_missing_and_bad_files_by_name(tmp_path):
    with pytest.raises(RunFolderError, match=f"^missing metrics.json in {tmp_path}$"):
        runs.read_json(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(RunFolderError, match="is a folder; a JSON file was expected"):
        runs.read_json(tmp_path / "metrics.json")
    (tmp_path / "data.json").write_text("[1,")
    with pytest.raises(RunFolderError, match=f"^data.json in {tmp_path.name} is not valid JSON"):
        runs.read_json(tmp_path / "data.json")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "gone")
    with pytest.raises(RunFolderError, match="no such file"):
        runs.read_json(tmp_path / "dangling.json")


@pytest.mark.parametrize("reader,name,data,message", [
    (runs.read_metrics, "metrics.json", {"test_accuracy": 1.01}, "test_accuracy has an unexpected value 1.01"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": -0.01}, "test_accuracy has an unexpected value -0.01"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": True}, "test_accuracy has an unexpected value True"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "n_params": -1}, "n_params"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "n_params": 2.5}, "n_params"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "class_names": ["a", 1]}, "class_names"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "class_names": "ab"}, "class_names"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "teacher_seconds": "9 min"}, "teacher_seconds"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "teacher_run": ["a"]}, "teacher_run"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "teacher_test_accuracy_tta": 93.4},
     "teacher_test_accuracy_tta"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "per_class": {"a": {"f1": 1}}}, "per_class"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "stage_seconds": {"head": "x"}}, "stage_seconds"),
    (runs.read_metrics, "metrics.json", {"test_accuracy": 0.5, "model": 3}, "model has an unexpected value 3"),
    (runs.read_metrics, "metrics.json", {"accuracy": 0.5}, "metrics.json in r has no test_accuracy"),
    (runs.read_status, "status.json", {"state": "done"}, "state has an unexpected value 'done'"),
    (runs.read_status, "status.json", {"state": "running", "heartbeat": float("inf")}, "heartbeat"),
    (runs.read_status, "status.json", {"state": "running", "progress": 1.5}, "progress"),
    (runs.read_data_info, "data.json", {"class_names": ["a", "b"], "image_size": 0}, "image_size"),
    (runs.read_data_info, "data.json", {"class_names": ["a", "b"], "image_size": 513}, "image_size"),
    (runs.read_data_info, "data.json", {"class_names": ["a"] * 1001}, "class_names"),
    (runs.read_data_info, "data.json", {"class_names": ["a", "b"], "train_counts": [1, -1]}, "train_counts"),
])
def test_each_schema_refuses_a_wrong_value_by_name(tmp_path, reader, name, data, message):
    run_dir = tmp_path / "r"
    runs.atomic_write_json(run_dir / name, data)
    with pytest.raises(RunFolderError) as caught:
        reader(run_dir)
    assert message in str(caught.value) and str(caught.value).startswith(f"{name} in r")


def test_schemas_accept_the_edges_and_keep_unknown_fields(tmp_path):
    runs.atomic_write_json(tmp_path / runs.METRICS_FILE, {"test_accuracy": 1, "test_loss": float("nan"),
                                                          "per_class": {"a": {"precision": 1, "recall": 0.5,
                                                                              "f1": 0.6, "support": 3}},
                                                          "confusion_matrix": [[1, 0], [0, 2]], "new_field": [1]})
    assert runs.read_metrics(tmp_path)["new_field"] == [1]
    runs.atomic_write_json(tmp_path / runs.DATA_FILE, {"class_names": ["a", "b"], "image_size": 512})
    assert runs.read_data_info(tmp_path)["image_size"] == 512
    runs.atomic_write_json(tmp_path / runs.DATA_FILE, {"class_names": ["a", "b"], "image_size": 1})
    assert runs.read_data_info(tmp_path)["image_size"] == 1
    runs.atomic_write_json(tmp_path / runs.STATUS_FILE, {"state": "running", "progress": 0, "eta_seconds": None})
    assert runs.read_status(tmp_path)["progress"] == 0
    assert runs.read_metrics(tmp_path / "absent") is None and runs.read_status(tmp_path / "absent") is None


def test_values_in_messages_are_shortened():
    assert schema.preview("x" * 10) == "'xxxxxxxxxx'"
    assert schema.preview("x" * 100) == "'" + "x" * 56 + "..."
    assert len(schema.preview(list(range(100)))) == 60


def test_one_reader_per_file_kind(tmp_path):
    run_dir = _run_folder(tmp_path, "r", **{runs.METRICS_FILE: {"test_accuracy": 0.25}})
    assert runs.read_run_file(run_dir, runs.METRICS_FILE) == {"test_accuracy": 0.25}
    assert runs.read_run_file(run_dir, runs.CONFIG_FILE) == CONFIG.to_dict()
    assert runs.read_run_file(run_dir, runs.DATA_FILE) is None
    with pytest.raises(ValueError, match="no reader for 'notes.txt'"):
        runs.read_run_file(run_dir, "notes.txt")


@pytest.mark.parametrize("text,message", [
    ("epoch,loss\nx,1.0\n", "corrupt history.csv in r, line 2: epoch is 'x'"),
    ("epoch,loss\n1,1.0\n2,1.0\n3,oops\n", "line 4: loss is 'oops'"),
    ("epoch,stage\n1,head\n2,fine_tune\n3,later\n", "line 4: stage is 'later'"),
    ("epoch\n-1\n", "epoch is '-1'"),
])
def test_history_errors_name_the_line_and_the_field(tmp_path, text, message):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / runs.HISTORY_FILE).write_text(text)
    with pytest.raises(RunFolderError) as caught:
        runs.read_history(tmp_path / "r")
    assert message in str(caught.value)


def test_history_writes_every_column_and_reads_types_back(tmp_path):
    rows = [{"epoch": 1, "stage": "head", "loss": 2.0, "accuracy": 0.25, "val_loss": 1.5, "val_accuracy": 0.5,
             "learning_rate": 0.001, "seconds": 12.0, "extra": "ignored"},
            {"epoch": 2, "stage": "train", "loss": None, "accuracy": 1, "val_loss": None, "val_accuracy": None,
             "learning_rate": 0.0001234567, "seconds": 0.5}]
    runs.write_history(tmp_path, rows)
    assert (tmp_path / runs.HISTORY_FILE).read_text().splitlines()[0] == ",".join(runs.HISTORY_COLUMNS)
    back = runs.read_history(tmp_path)
    assert back[0] == {key: rows[0][key] for key in runs.HISTORY_COLUMNS}
    assert back[1]["learning_rate"] == pytest.approx(0.000123457) and back[1]["loss"] is None
    assert back[1]["accuracy"] == 1.0 and type(back[1]["epoch"]) is int
    assert runs.read_history(tmp_path / "none") == []


def _shippable(root, name="good"):
    run_dir = _run_folder(root, name, **{runs.METRICS_FILE: {"test_accuracy": 0.5},
                                         runs.DATA_FILE: {"class_names": ["a", "b"]},
                                         runs.STATUS_FILE: {"state": "completed"},
                                         runs.HISTORY_FILE: "epoch,loss\n1,0.5\n",
                                         runs.PREDICTIONS_FILE: b"npz", runs.MODEL_FILE: b"zip"})
    (run_dir / runs.CHECKPOINT_DIR).mkdir()
    (run_dir / runs.CHECKPOINT_DIR / "state.json").write_text("{}")
    (run_dir / runs.LOCK_FILE).write_text("1")
    (run_dir / runs.LOG_FILE).write_text("log")
    return run_dir


def test_shipping_copies_exactly_the_shipped_files(tmp_path):
    run_dir = _shippable(tmp_path / "work")
    shipped = runs.ship(run_dir, tmp_path / "shipped", "preset-run")
    assert shipped == tmp_path / "shipped" / "preset-run"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(runs.SHIPPED_FILES)
    assert (shipped / runs.MODEL_FILE).read_bytes() == b"zip"
    with pytest.raises(RunFolderError, match="already exists"):
        runs.ship(run_dir, tmp_path / "shipped", "preset-run")
    record = runs.keep_record(run_dir, tmp_path / "records")
    assert sorted(p.name for p in record.iterdir()) == sorted(runs.RECORD_FILES) and record.name == "good"
    assert not list((tmp_path / "shipped").glob(".*"))  # no staging folder left behind


def test_only_finished_complete_runs_ship(tmp_path):
    unfinished = _shippable(tmp_path, "unfinished")
    runs.atomic_write_json(unfinished / runs.STATUS_FILE, {"state": "running"})
    with pytest.raises(RunFolderError, match="^unfinished has not completed; only finished runs ship$"):
        runs.ship(unfinished, tmp_path / "out")
    lacking = _shippable(tmp_path, "lacking")
    (lacking / runs.PREDICTIONS_FILE).unlink()
    with pytest.raises(RunFolderError, match=r"^lacking lacks \['predictions.npz'\]$"):
        runs.ship(lacking, tmp_path / "out")
    broken = _shippable(tmp_path, "broken")
    (broken / runs.HISTORY_FILE).write_text("epoch\nx\n")
    with pytest.raises(RunFolderError, match="history.csv"):
        runs.ship(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_edges_of_folder_checks_and_listing(tmp_path):
    five = tmp_path / "five"
    five.mkdir()
    for name in "abcde":
        (five / name).write_text(name)
    with pytest.raises(RunFolderError, match=r"\(it holds a, b, c, d, e\); pick"):
        runs.check_new_run_dir(five)
    tmp_path = tmp_path / "runs"
    launched = tmp_path / "20260101-launched"
    launched.mkdir(parents=True)
    for name in runs.LAUNCH_FILES:
        (launched / name).write_text("x")
    hidden = _run_folder(tmp_path, ".hidden-run")
    assert runs._being_created(launched) and not runs._being_created(hidden)
    assert runs.list_runs(tmp_path) == ([], [])  # a launch in progress and a hidden folder: nothing to show
    with runs.RunWriter(tmp_path / "perm"):
        mode = (tmp_path / "perm" / runs.LOCK_FILE).stat().st_mode & 0o777
    assert mode == 0o666 & ~runs._UMASK


def test_schema_edges(tmp_path):
    for value, ok in (([[1, 0], [0, 1]], True), ({}, False), ([["1"]], False), ("[[1]]", False)):
        assert runs._matrix(value) is ok, value
    assert runs._class_names(["c"] * 1000) and not runs._class_names(["c"] * 1001)
    assert schema.preview("x" * 58) == "'" + "x" * 58 + "'"  # 60 characters: kept whole
    (tmp_path / runs.HISTORY_FILE).mkdir()
    with pytest.raises(RunFolderError, match="is a folder; a history file was expected"):
        runs.read_history(tmp_path)


def test_shipping_a_run_with_a_folder_where_a_file_belongs_fails_cleanly(tmp_path):
    run_dir = _shippable(tmp_path / "work")
    (run_dir / runs.PREDICTIONS_FILE).unlink()
    (run_dir / runs.PREDICTIONS_FILE).mkdir()
    with pytest.raises(RunFolderError, match="predictions.npz"):
        runs.ship(run_dir, tmp_path / "shipped")
    assert not (tmp_path / "shipped").exists() or not any((tmp_path / "shipped").iterdir())


def test_predictions_round_trip_as_compact_arrays(tmp_path):
    import numpy as np

    probs = np.array([[0.1, 0.9], [0.6, 0.4]], np.float64)
    runs.write_predictions(tmp_path, [1, 0], probs)
    back = runs.read_predictions(tmp_path)
    assert sorted(back) == ["probs", "y_true"] and back["y_true"].dtype == np.int16
    assert back["probs"].dtype == np.float16 and np.allclose(back["probs"], probs, atol=1e-3)
    runs.write_predictions(tmp_path, [1, 0], probs, probs[:, ::-1])
    assert np.allclose(runs.read_predictions(tmp_path)["probs_tta"], probs[:, ::-1], atol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RunFolderError, match="^no predictions.npz in nothing$"):
        runs.read_predictions(tmp_path / "nothing")
    (tmp_path / runs.PREDICTIONS_FILE).write_bytes(b"not an npz")
    with pytest.raises(RunFolderError, match=f"^corrupt predictions.npz in {tmp_path.name}: "):
        runs.read_predictions(tmp_path)


def test_atomic_writes_make_folders_share_files_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "a" / "b" / "status.json"
    runs.atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one" and (target.stat().st_mode & 0o777) == 0o666 & ~runs._UMASK
    seen = []
    real_replace = os.replace

    def spy(source, destination):
        seen.append(source)
        real_replace(source, destination)

    import unittest.mock

    with unittest.mock.patch.object(runs.os, "replace", spy):
        runs.atomic_write_text(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    [temporary] = [runs.Path(p) for p in seen]
    assert temporary.parent == target.parent and temporary.name.startswith(".status.json.")
    assert temporary.name.endswith(".tmp") and not temporary.exists()


def test_arrays_are_streamed_into_their_file_with_no_copy_of_it_in_memory(tmp_path):
    import numpy as np
    from helpers import traced_peak

    # 32 MiB: numpy writes an .npz member in 16 MiB chunks, so a smaller array is one chunk, copied.
    values = np.random.default_rng(0).integers(0, 255, (32 << 20,), dtype=np.uint8)
    writes = {"npy": lambda: runs.atomic_write_npy(tmp_path / "big.npy", values),
              "npz": lambda: runs.atomic_write_npz(tmp_path / "big.npz", {"x": values}, compressed=False)}
    for name, write in writes.items():
        _, peak = traced_peak(write)
        # At most one chunk; the file's bytes in a buffer first would cost the array's size again (twice).
        assert peak < 0.6 * values.nbytes, (name, peak)
    assert np.array_equal(np.load(tmp_path / "big.npy"), values)
    assert np.array_equal(np.load(tmp_path / "big.npz")["x"], values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy", "big.npz"]


def test_a_streamed_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "weights.npz"
    runs.atomic_write_bytes(target, b"previous")

    def half_then_full_disk(handle):
        handle.write(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        runs.atomic_write_with(target, half_then_full_disk)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["weights.npz"]


def test_json_is_sorted_indented_and_takes_numpy_values(tmp_path):
    import numpy as np

    runs.atomic_write_json(tmp_path / "m.json", {"b": np.float32(0.5), "a": np.arange(2), "c": [np.int64(3)]})
    expected = '{\n  "a": [\n    0,\n    1\n  ],\n  "b": 0.5,\n  "c": [\n    3\n  ]\n}\n'
    assert (tmp_path / "m.json").read_text() == expected
    with pytest.raises(TypeError, match="^not JSON serializable: object$"):
        runs.atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert not (tmp_path / "x.json").exists()


def test_checkpoint_files_have_one_name_each(tmp_path):
    assert runs.checkpoint_file(tmp_path, runs.HEAD_STATS_FILE) == tmp_path / "checkpoint" / "head.json"
    assert runs.feature_cache_file(tmp_path, "train") == tmp_path / "checkpoint" / "features-train.npy"
    assert runs.feature_cache_file(tmp_path, "val", flip=True) == tmp_path / "checkpoint" / "features-val-flip.npy"


HEAD_STATS = {"test_accuracy_head": 0.8, "stage_seconds": {"features": 10.5, "head": 2}}


def _write_head_stats(run_dir, record) -> None:
    path = runs.checkpoint_file(run_dir, runs.HEAD_STATS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))


def test_a_checkpoint_record_brings_only_its_own_fields(tmp_path):
    """A record a run keeps for its metrics can never bring a figure the run did not measure."""
    assert runs.read_head_stats(tmp_path / "run") is None
    _write_head_stats(tmp_path / "run", {**HEAD_STATS, "test_accuracy": 1.0, "n_params": 1, "machine": {}})
    assert runs.read_head_stats(tmp_path / "run") == HEAD_STATS


@pytest.mark.parametrize("record,problem", [
    ("{", "not valid JSON"),
    ("[1]", "must be a JSON object; found list"),
    ({"stage_seconds": {"head": 2}}, "has no test_accuracy_head"),
    ({"test_accuracy_head": 0.8}, "has no stage_seconds"),
    ({**HEAD_STATS, "test_accuracy_head": 80}, "test_accuracy_head has an unexpected value 80"),
    ({**HEAD_STATS, "stage_seconds": {"head": "2 s"}}, "stage_seconds has an unexpected value"),
    ({**HEAD_STATS, "stage_seconds": [2]}, "stage_seconds has an unexpected value [2]"),
])
def test_a_damaged_checkpoint_record_is_refused_naming_it_and_its_run(tmp_path, record, problem):
    _write_head_stats(tmp_path / "run", record)
    with pytest.raises(RunFolderError) as caught:
        runs.read_head_stats(tmp_path / "run")
    assert str(caught.value).startswith("head.json in run") and problem in str(caught.value), caught.value


def test_listing_without_a_root_lists_the_runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path))
    _run_folder(tmp_path, "only")
    assert [r.run_id for r in runs.list_runs()[0]] == ["only"]


def test_history_encoding_errors_are_named(tmp_path):
    (tmp_path / runs.HISTORY_FILE).write_bytes(b"epoch\n\xff\n")
    with pytest.raises(RunFolderError) as caught:
        runs.read_history(tmp_path)
    assert str(caught.value).startswith(f"corrupt history.csv in {tmp_path.name}: 'utf-8' codec can't decode")


# --- every refusal names its file, its run and, in text, its line -------------------------------

LIVE_HEADER = "train_seconds,epoch,loss,accuracy\n"


@pytest.mark.parametrize("text,message", [
    (LIVE_HEADER + "1,0.5,2,0.1\n1,0.7,2\n", "^corrupt live.csv in r, line 3: '1,0.7,2'$"),
    (LIVE_HEADER + "1,0.5,2,0.1,9\n", "^corrupt live.csv in r, line 2: '1,0.5,2,0.1,9'$"),
    (LIVE_HEADER + "\n1,0.5,2,0.1\n-1,0.7,2,0.1\n", "^corrupt live.csv in r, line 4: '-1,0.7,2,0.1'$"),
    ("seconds,epoch\n1,1\n", "^corrupt live.csv in r: the header is not train_seconds,epoch,loss,accuracy$"),
    ("epoch,loss\n" + "1," + "9" * 140_000 + "\n",
     r"^corrupt history.csv in r: field larger than field limit \(131072\)$"),
])
def test_a_text_file_refusal_names_the_file_the_run_and_the_line(tmp_path, text, message):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    name = runs.HISTORY_FILE if text.startswith("epoch,") else runs.LIVE_FILE
    (run_dir / name).write_text(text)
    with pytest.raises(RunFolderError, match=message):
        runs.read_history(run_dir) if name == runs.HISTORY_FILE else runs.read_live(run_dir)


def test_an_oversized_live_file_is_refused_as_a_live_progress_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "MAX_LIVE_BYTES", 40)
    (tmp_path / runs.LIVE_FILE).write_text(LIVE_HEADER + "1,1,1,1\n" * 5)
    with pytest.raises(RunFolderError, match="^live.csv: live progress file is 74 bytes; the limit is 40 bytes$"):
        runs.read_live(tmp_path)


def test_an_npz_refusal_names_the_file_and_the_run(tmp_path):
    import numpy as np

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for name, read in [(runs.PREDICTIONS_FILE, runs.read_predictions),
                       (runs.EPOCH_PREDICTIONS_FILE, runs.read_epoch_predictions)]:
        runs.atomic_write_npz(run_dir / name, {"other": np.zeros(2)})
        with pytest.raises(RunFolderError, match=f"^corrupt {name} in r: no array 'y_true' in it$"):
            read(run_dir)


def test_epoch_predictions_refuse_labels_of_more_than_one_dimension(tmp_path):
    import numpy as np

    runs.atomic_write_npz(tmp_path / runs.EPOCH_PREDICTIONS_FILE, {
        "y_true": np.zeros((3, 1), np.int16), "predicted": np.zeros((2, 3), np.int16),
        "epochs": np.array([1, 2], np.int32)})
    with pytest.raises(RunFolderError, match="its arrays do not fit together"):
        runs.read_epoch_predictions(tmp_path)


def test_a_file_where_a_new_run_folder_belongs_is_named(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(RunFolderError, match=f"^{tmp_path / 'taken'} is a file, not a run folder$"):
        runs.check_new_run_dir(tmp_path / "taken")


def test_a_run_file_too_large_to_ship_is_a_run_folder_error_and_ships_nothing(tmp_path, monkeypatch):
    run_dir = _shippable(tmp_path / "work")
    monkeypatch.setattr(runs, "MAX_SHIPPED_FILE_BYTES", 3)  # the config is larger
    with pytest.raises(RunFolderError, match="config.json: file is [0-9]+ bytes; the limit is 3 bytes$"):
        runs.ship(run_dir, tmp_path / "shipped")
    assert not (tmp_path / "shipped").exists() or not any((tmp_path / "shipped").iterdir())


def test_a_run_folder_that_cannot_be_listed_is_reported_not_hidden(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = runs.Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(runs.Path, "iterdir", iterdir)
    with pytest.warns(UserWarning, match="locked"):
        found, problems = runs.list_runs(tmp_path)
    assert found == [] and len(problems) == 1 and "locked" in problems[0]


def test_a_crowded_root_gives_up_after_its_tries(tmp_path, monkeypatch):
    drawn = []
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(runs, "new_run_id", lambda model: drawn.append(model) or "taken")
    with pytest.raises(RunFolderError):
        runs.create_run_dir("demo", tmp_path)
    assert len(drawn) == runs.RUN_ID_TRIES


def test_run_ids_keep_the_model_name_s_letters_and_case():
    assert runs.new_run_id("Lite0-B.2_x", now=0).split("-", 2)[2].startswith("Lite0-B.2_x-")


# --- what the writers store ----------------------------------------------------------------------

def test_writers_store_compact_dtypes_whatever_they_are_given(tmp_path):
    import numpy as np

    probs = np.full((4, 3), 1 / 3)
    runs.write_predictions(tmp_path, np.arange(4) % 3, probs, probs)
    with np.load(tmp_path / runs.PREDICTIONS_FILE) as stored:
        assert {key: stored[key].dtype for key in stored} == {
            "y_true": np.int16, "probs": np.float16, "probs_tta": np.float16}
    runs.write_epoch_predictions(tmp_path, np.arange(3), np.zeros((2, 3)), np.array([1.0, 2.0]))
    with np.load(tmp_path / runs.EPOCH_PREDICTIONS_FILE) as stored:
        assert {key: stored[key].dtype for key in stored} == {
            "y_true": np.int16, "predicted": np.int16, "epochs": np.int32}


def test_npz_files_are_compressed_unless_asked_not_to_be(tmp_path):
    import numpy as np

    zeros = np.zeros(100_000, np.float32)
    runs.atomic_write_npz(tmp_path / "small.npz", {"x": zeros})
    runs.atomic_write_npz(tmp_path / "plain.npz", {"x": zeros}, compressed=False)
    assert (tmp_path / "small.npz").stat().st_size < zeros.nbytes / 50 < (tmp_path / "plain.npz").stat().st_size


def test_an_array_of_python_objects_is_never_pickled_into_a_run(tmp_path):
    import numpy as np

    with pytest.raises(ValueError, match="allow_pickle=False"):
        runs.atomic_write_npy(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("machine,name", [
    ({"cpu": "AMD EPYC", "cores": 2}, "AMD EPYC, 2 cores"),
    ({"cpu": "AMD EPYC", "cores": "2"}, "AMD EPYC"),
    ({"cpu": "AMD EPYC"}, "AMD EPYC"),
    ({"cpu": "", "cores": 2}, None),
    ({"cores": 2}, None),
    ("AMD EPYC", None),
    (None, None),
])
def test_a_run_s_machine_is_named_by_its_cpu_and_cores(machine, name):
    assert runs.machine_name(machine) == name
