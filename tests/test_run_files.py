"""No page taken down by one bad file: every run file kind has one validating
reader, and the pages and the CLI use it."""
import shutil
import sqlite3

import pytest
from helpers import open_page

from cifar_core import jobs, runs
from cifar_core.errors import RunFolderError


@pytest.fixture
def studio_copy(studio, tmp_path, monkeypatch):
    """The tiny shipped runs copied, so tests may plant bad run folders beside them."""
    root = tmp_path / "runs"
    shutil.copytree(studio["runs"], root)
    shutil.rmtree(root / "broken")
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(root))
    return root


def _plant(root, name, **files):
    source = root / "demo-tiny"
    target = root / name
    shutil.copytree(source, target)
    for file_name, content in files.items():
        path = target / file_name
        if isinstance(content, str):
            path.write_text(content)
        else:
            content(path)
    return target


def _folder(path):
    path.unlink()
    path.mkdir()


BAD_METRICS = {
    "string-accuracy": '{"test_accuracy": "0.9"}',
    "numeric-date": '{"test_accuracy": 0.5, "measured_at": 20261127}',
    "deep": '{"test_accuracy": 0.5, "machine": ' + "[" * 5000 + "]" * 5000 + "}",
    "list": '[0.5, 0.6]',
    "folder": _folder,
    "accuracy-above-one": '{"test_accuracy": 7}',
    "bad-matrix": '{"test_accuracy": 0.5, "confusion_matrix": [["a"]]}',
}


@pytest.mark.parametrize("kind", sorted(BAD_METRICS))
def test_a_bad_metrics_file_skips_its_run_and_keeps_the_rest(studio_copy, kind):
    _plant(studio_copy, f"bad-{kind}", **{"metrics.json": BAD_METRICS[kind]})
    with pytest.raises(RunFolderError, match="metrics.json"):
        runs.load_run(studio_copy / f"bad-{kind}")
    with pytest.warns(UserWarning):
        found, problems = runs.list_runs(studio_copy)
    assert {r.run_id for r in found} == {"demo-tiny", "g3-tiny"}
    assert len(problems) == 1 and f"bad-{kind}" in problems[0] and "\n" not in problems[0]


def test_every_page_survives_bad_run_files(studio_copy):
    for kind, content in BAD_METRICS.items():
        _plant(studio_copy, f"bad-{kind}", **{"metrics.json": content})
    _plant(studio_copy, "bad-status", **{"status.json": '{"state": "exploded"}'})
    _plant(studio_copy, "bad-config", **{"config.json": '{"model": "demo", "n_epochs": 1.5}'})
    app = open_page("streamlit_app.py")
    assert set(app.dataframe[0].value["model"]) == {"demo", "g3"}
    assert sum("bad-" in w.value for w in app.warning) == len(BAD_METRICS) + 2
    for page in ("pages/4_Compare.py", "pages/5_Evaluate.py", "pages/1_Dataset.py"):
        open_page(page)


@pytest.mark.parametrize("history,message", [
    ("epoch,loss\nx,1.0\n", "line 2: epoch is 'x'"),
    ("epoch,loss\n1.5,1.0\n", "epoch is '1.5'"),
    ("epoch,loss\n0,1.0\n", "epoch is '0'"),
    ("epoch,loss\n1,lots\n", "loss is 'lots'"),
    ("epoch,stage\n1,warmup\n", "stage is 'warmup'"),
    ('epoch,loss\n1,"' + "9" * 200_000 + '"\n', "field larger than field limit"),
    (b"epoch,loss\n1,\xff\xfe\n", "utf-8"),
])
def test_a_malformed_history_is_one_clear_error(tmp_path, history, message):
    path = tmp_path / runs.HISTORY_FILE
    path.write_bytes(history if isinstance(history, bytes) else history.encode())
    with pytest.raises(RunFolderError, match="history.csv") as caught:
        runs.read_history(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_compare_and_train_pages_survive_a_malformed_history(studio_copy):
    bad = _plant(studio_copy, "bad-history")
    (bad / runs.HISTORY_FILE).write_text("epoch,loss\nx,1.0\n")
    app = open_page("pages/4_Compare.py")
    app.multiselect(key="compare_runs").set_value(
        [o for o in app.multiselect(key="compare_runs").options if "bad-history" in o or "g3-tiny" in o]).run()
    assert not app.exception and any("history.csv" in w.value for w in app.warning)


def test_history_values_round_trip_exactly(tmp_path):
    rows = [{"epoch": 12, "stage": "fine_tune", "loss": 0.123456789, "accuracy": 0.5, "val_loss": None,
             "val_accuracy": None, "learning_rate": 1.25e-05, "seconds": 1234.5678}]
    runs.write_history(tmp_path, rows)
    [back] = runs.read_history(tmp_path)
    assert type(back["epoch"]) is int and back["epoch"] == 12 and back["stage"] == "fine_tune"
    assert back["loss"] == pytest.approx(0.123457, abs=1e-6) and back["seconds"] == pytest.approx(1234.57, abs=0.01)
    assert back["learning_rate"] == 1.25e-05 and back["val_loss"] is None


def test_a_corrupt_job_registry_is_set_aside_with_a_warning(tmp_path, monkeypatch):
    db = tmp_path / "jobs.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("CIFAR_JOBS_DB", str(db))
    with pytest.warns(UserWarning, match="moved to jobs.sqlite.corrupt-"):
        assert jobs.list_jobs() == []
    [aside] = tmp_path.glob("jobs.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    assert jobs.list_jobs() == []  # the new registry works and warns no more


def test_a_job_row_with_an_unknown_config_key_is_listed_not_fatal(tmp_path, monkeypatch, studio):
    from cifar_core.config import TrainConfig

    db = tmp_path / "jobs.sqlite"  # the studio fixture's registry
    job = jobs.create_job(TrainConfig(model="demo"), tmp_path / "run-a")
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE jobs SET config = ? WHERE id = ?", ('{"model": "demo", "colour": "red"}', job.id))
    [listed] = jobs.list_jobs(refresh=False)
    assert listed.config is None and listed.model == "?" and "colour" in listed.message
    with pytest.raises(Exception, match="cannot be resumed"):
        jobs.resume_job(job.id)
    app = open_page("pages/3_Train.py")
    assert "?" in list(app.dataframe[0].value["model"])


def test_a_corrupt_registry_does_not_take_down_the_train_page(studio, tmp_path):
    (tmp_path / "jobs.sqlite").write_bytes(b"garbage" * 1000)
    app = open_page("pages/3_Train.py")
    assert any("job registry was unreadable" in w.value for w in app.warning)


def test_data_paths_in_shared_runs_are_checked_not_scanned(studio, studio_copy, monkeypatch):
    from cifar_core import ui
    from cifar_core.data.sources import looks_like_dataset

    monkeypatch.delenv("CIFAR10_SOURCE")
    for name, data in (("shared-root", "/"), ("shared-photos", str(studio["data"]))):
        run_dir = _plant(studio_copy, name)
        runs.atomic_write_text(run_dir / runs.CONFIG_FILE, runs.read_config(run_dir).replace(data=data).to_json())
    sources = ui.candidate_sources()
    assert "/" not in sources and str(studio["data"]) in sources
    assert not looks_like_dataset(runs.Path("/")) and looks_like_dataset(studio["data"])


def test_evaluate_page_explains_a_run_without_a_per_class_report(studio_copy):
    import json

    run_dir = _plant(studio_copy, "zz-no-report")
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    metrics.pop("per_class")
    runs.atomic_write_json(run_dir / runs.METRICS_FILE, metrics)
    app = open_page("pages/5_Evaluate.py")
    choice = app.selectbox(key="eval_run")
    choice.set_value(next(option for option in choice.options if option.startswith("zz-no-report"))).run()
    assert not app.exception
    assert any("no per-class report" in info.value for info in app.info), [i.value for i in app.info]
