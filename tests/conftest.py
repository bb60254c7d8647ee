"""Shared fixtures: tiny synthetic data, isolated caches and run folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, ROOT, png_bytes  # noqa: F401 - fixtures below use them

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



def synthetic_images(n: int, num_classes: int, size: int = 32, seed: int = 0):
    """Images whose mean colour encodes the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    base = (labels * (200 // max(num_classes - 1, 1)))[:, None, None, None]
    images = np.clip(base + rng.integers(0, 50, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


@pytest.fixture
def tiny_dataset():
    from cifar_core.data import Dataset

    x_train, y_train = synthetic_images(120, 10, seed=1)
    x_test, y_test = synthetic_images(40, 10, seed=2)
    names = tuple(f"class{i}" for i in range(10))
    return Dataset(x_train, y_train, x_test, y_test, names, "synthetic", "synthetic (tests)")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("CIFAR10_SOURCE", raising=False)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train/<class>/*.png and test/<class>/*.png, 4 and 2 per class, 8x8..40x40 sizes."""
    root = tmp_path / "my-photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = 8 + 8 * i
                pixels = np.full((size, size + 3, 3), 60 * c, np.uint8) + rng.integers(0, 20, (size, size + 3, 3),
                                                                                     dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(png_bytes(pixels))
    (root / "README.txt").write_text("not part of the layout")
    return root


@pytest.fixture(scope="session")
def shipped_runs(tmp_path_factory):
    """Two finished runs (demo, g3) on a tiny image folder, like a fresh clone's artifacts/runs."""
    from cifar_core.config import recipe_config
    from cifar_core.data import load_dataset
    from cifar_core.training import train

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
    """The dashboard's environment pointed at the tiny shipped runs, with its own job registry."""
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(shipped_runs["runs"]))
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    monkeypatch.setenv("CIFAR10_SOURCE", str(shipped_runs["data"]))
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "jobs.sqlite"))
    monkeypatch.chdir(ROOT)
    return shipped_runs


@pytest.fixture(scope="session")
def analysed_runs(shipped_runs, tmp_path_factory):
    """A copy of the tiny shipped runs with every analysis computed (the insight lab's pages read them)."""
    import shutil

    from cifar_core.analysis import analyze

    root = tmp_path_factory.mktemp("analysed") / "runs"
    shutil.copytree(shipped_runs["runs"], root)
    previous = os.environ.get("CIFAR_CORE_CACHE")
    os.environ["CIFAR_CORE_CACHE"] = str(shipped_runs["cache"])
    try:
        for run in ("demo-tiny", "g3-tiny"):
            analyze(root / run, source=str(shipped_runs["data"]), progress=lambda line: None)
    finally:
        if previous is None:
            os.environ.pop("CIFAR_CORE_CACHE", None)
        else:
            os.environ["CIFAR_CORE_CACHE"] = previous
    return {**shipped_runs, "runs": root}


@pytest.fixture
def lab(analysed_runs, studio, monkeypatch):
    """The dashboard pointed at the analysed copy of the tiny runs."""
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(analysed_runs["runs"]))
    return analysed_runs


@pytest.fixture
def spawn_context(monkeypatch):
    """multiprocessing's spawn context with a clean __main__: a spawned child re-runs the parent's
    __main__ by path, and after an AppTest that may be a dashboard page (which must not run bare)."""
    import multiprocessing
    import sys
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    return multiprocessing.get_context("spawn")
