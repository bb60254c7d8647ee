"""Streamlit helpers shared by the pages (the only module that imports streamlit).

Pages stay thin: they lay out widgets and call these cached loaders, which
call the UI-free core. TensorFlow is imported only by loaders that need a model.
"""
from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from . import runs
from .data.sources import MAX_SAMPLE_BYTES, SAMPLE_FILE
from .errors import CifarError

ROOT = Path(__file__).resolve().parent.parent
LOW_CONFIDENCE = 0.5
# The dashboard's pages by section: (file, title, Material icon, URL path). Material icons
# ship with Streamlit's font; emoji depend on the laptop's fonts.
PAGES = {
    "Studio": [("pages/0_Home.py", "CIFAR-10 Studio", ":material/home:", "")],
    "Data": [("pages/1_Dataset.py", "Dataset", ":material/dataset:", "Dataset"),
             ("pages/2_Augmentation.py", "Augmentation preview", ":material/casino:", "Augmentation")],
    "Training": [("pages/3_Train.py", "Train a model", ":material/model_training:", "Train"),
                 ("pages/7_Race.py", "Race and replay", ":material/sports_score:", "Race")],
    "Evaluation": [("pages/4_Compare.py", "Compare runs", ":material/compare_arrows:", "Compare"),
                   ("pages/5_Evaluate.py", "Evaluate a run", ":material/grid_on:", "Evaluate")],
    "Explain": [("pages/6_Classify.py", "Classify your photos", ":material/photo_camera:", "Classify"),
                ("pages/8_Audience.py", "Audience mode", ":material/groups:", "Audience")],
    "Insight lab": [("pages/9_Calibration.py", "Calibration", ":material/target:", "Calibration"),
                    ("pages/10_Label_issues.py", "Label issues", ":material/label_off:", "Labels"),
                    ("pages/11_Embedding.py", "Embedding map", ":material/scatter_plot:", "Embedding"),
                    ("pages/12_Robustness.py", "Robustness lab", ":material/shield:", "Robustness"),
                    ("pages/13_Inside.py", "Inside the network", ":material/layers:", "Inside")],
    "Deploy": [("pages/14_Deploy.py", "Deploy", ":material/deployed_code:", "Deploy")],
}
# The home page links to every other page.
PAGE_LINKS = [(file, title, icon) for section in PAGES.values() for file, title, icon, path in section if path]


def navigation():
    """st.navigation over PAGES: real titles, icons and sections in the sidebar."""
    sections = {name: [st.Page(file, title=title, icon=icon, url_path=path or None, default=not path)
                       for file, title, icon, path in pages] for name, pages in PAGES.items()}
    return st.navigation(sections, expanded=True)  # every page listed: no "view more" in a talk


def page(title: str, icon: str) -> None:
    st.set_page_config(page_title=f"{title} · CIFAR-10 Studio", page_icon=icon, layout="wide")
    st.title(title)  # the icon goes to the browser tab only: headless fonts lack emoji


def preload_plotly() -> None:
    """Load plotly's JavaScript while the presenter is on the home page, so the first page with a
    plotly chart does not wait for it: in headless Chromium that first load added about 0.9 s to
    the page switch (BENCHMARKS.md). Streamlit ships plotly as its own lazily imported chunk; this
    imports the same file, so the page's own import finds it loaded. No-op if the chunk is not found."""
    chunk = _plotly_chunk()
    if chunk:
        st.html(f'<script>import("./static/js/{chunk}").catch(() => null);</script>', unsafe_allow_javascript=True)


@functools.cache  # the installed Streamlit's files do not change while the server runs
def _plotly_chunk() -> str | None:
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    found = sorted(folder.glob("PlotlyChart.*.js"))
    return found[0].name if found else None


def fail(exc: Exception) -> None:
    """A user-facing error: one clear line, never a traceback."""
    st.error(str(exc) if isinstance(exc, CifarError) else f"{type(exc).__name__}: {exc}")


# --- runs ---------------------------------------------------------------------------------------

@st.cache_data(ttl=3, show_spinner=False)
def _run_records(root: str) -> tuple[list[dict], list[str]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found, problems = runs.list_runs(root)
    records = []
    for run in found:
        metrics, config, status = run.metrics or {}, run.config or {}, run.status or {}
        if not isinstance(metrics, dict) or not isinstance(config, dict) or not isinstance(status, dict):
            problems.append(f"skipped {run.run_id}: a JSON file is not an object")
            continue
        records.append({
            "run": run.run_id, "path": str(run.path), "model": config.get("model", "?"),
            "transfer": bool(metrics.get("transfer", False)),
            "test_accuracy": metrics.get("test_accuracy"), "test_accuracy_tta": metrics.get("test_accuracy_tta"),
            "train_minutes": (metrics.get("train_seconds") or 0) / 60 or None,
            "params": metrics.get("n_params"), "epochs": metrics.get("epochs_run"),
            "state": runs.effective_state(status, run_dir=run.path), "progress": status.get("progress"),
            "date": (metrics.get("measured_at") or "")[:10] or None, "data": metrics.get("data"),
            "cpu": runs.machine_name(metrics.get("machine")),
            "has_model": run.has_model,
        })
    return records, problems


# Record keys are data names; these are what a page shows for them.
LABELS = {"test_accuracy": "test accuracy", "test_accuracy_tta": "with flip TTA", "train_minutes": "train minutes"}


def run_records() -> tuple[list[dict], list[str]]:
    return _run_records(str(runs.runs_root()))


def leaderboard() -> tuple[pd.DataFrame, list[str]]:
    records, problems = run_records()
    frame = pd.DataFrame(records, columns=["run", "model", "transfer", "test_accuracy", "test_accuracy_tta",
                                           "train_minutes", "params", "epochs", "state", "date", "data", "cpu",
                                           "path", "has_model", "progress"])
    if not frame.empty:
        frame = frame.sort_values("test_accuracy", ascending=False, na_position="last").reset_index(drop=True)
    return frame, problems


def finished_runs() -> list[dict]:
    return [r for r in run_records()[0] if r["state"] == "completed" and r["test_accuracy"] is not None]


def run_label(record: dict) -> str:
    accuracy = record.get("test_accuracy")
    score = f"{accuracy:.1%}" if accuracy is not None else record.get("state", "")
    return f"{record['run']}  ({record['model']}, {score})"


def best_run_per_model(records: list[dict]) -> list[dict]:
    """The most accurate run of each model, best first, with the best of the other kind (homebrew or
    transfer) second: a default pair then shows two kinds of network side by side, not two runs of one
    model nor two backbones of one family (Lite2 and Lite0 make much the same errors)."""
    best: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: -(r["test_accuracy"] or 0)):
        best.setdefault(record["model"], record)
    ranked = list(best.values())
    other_kind = next((r for r in ranked[1:] if bool(r.get("transfer")) != bool(ranked[0].get("transfer"))), None)
    if other_kind is None:
        return ranked
    return [ranked[0], other_kind, *(r for r in ranked[1:] if r is not other_kind)]


def pick_runs(label: str, key: str, multiple: bool = False, default_count: int = 2, with_model: bool = False):
    records = [r for r in finished_runs() if r["has_model"] or not with_model]
    if not records:
        st.info("No finished runs yet: train one on the Train page, or check artifacts/runs/.")
        return [] if multiple else None
    records.sort(key=lambda r: -(r["test_accuracy"] or 0))
    labels = {run_label(r): r for r in records}
    if multiple:
        defaults = [run_label(r) for r in best_run_per_model(records)[:default_count]]
        chosen = st.multiselect(label, list(labels), default=defaults, key=key)
        return [labels[c] for c in chosen]
    chosen = st.selectbox(label, list(labels), key=key)
    return labels[chosen] if chosen else None


@st.cache_data(ttl=3, show_spinner=False)
def _run_file_cached(run_dir: str, name: str, mtime: float):
    return runs.read_run_file(run_dir, name)


def run_json(run_dir: str, name: str) -> dict | None:
    """A run's JSON file through its validating reader; a bad file is a warning and None."""
    path = Path(run_dir) / name
    try:
        if not path.exists():
            return None
        return _run_file_cached(run_dir, name, path.stat().st_mtime)
    except (CifarError, OSError) as exc:
        st.warning(f"{Path(run_dir).name}: {exc}")
        return None


def class_names(run_dir: str, classes: int) -> list[str]:
    """Names for every class index below `classes` (what the page's arrays hold): the run's data.json
    names, the file its analyses are checked against. Where the run's files disagree on how many
    classes there are, a warning and the classes by number: a page never indexes past a list."""
    names = list((run_json(run_dir, runs.DATA_FILE) or {}).get("class_names") or ())
    if len(names) >= classes:
        return names
    st.warning(f"{Path(run_dir).name}: {runs.DATA_FILE} names {len(names)} classes but the run's files hold "
               f"{classes}; the classes are shown by number")
    return [str(i) for i in range(classes)]


def history_frame(run_dir: str) -> pd.DataFrame:
    """A run's history; a bad history.csv is a warning and an empty frame, never an exception."""
    try:
        rows = runs.read_history(run_dir)
    except CifarError as exc:
        st.warning(f"{Path(run_dir).name}: {exc}")
        rows = []
    return pd.DataFrame(rows, columns=list(runs.HISTORY_COLUMNS))


@st.cache_data(show_spinner=False)
def predictions(run_dir: str, mtime: float) -> dict:
    return runs.read_predictions(run_dir)


def run_predictions(run_dir: str) -> dict:
    path = Path(run_dir) / runs.PREDICTIONS_FILE
    return predictions(run_dir, path.stat().st_mtime if path.exists() else 0.0)


@st.cache_data(show_spinner=False, max_entries=16)
def _epoch_predictions(run_dir: str, mtime: float) -> dict | None:
    return runs.read_epoch_predictions(run_dir)


def run_epoch_predictions(run_dir: str) -> dict | None:
    """The run's per-epoch validation predictions, or None (none saved, or a bad file: a warning)."""
    path = Path(run_dir) / runs.EPOCH_PREDICTIONS_FILE
    try:
        return _epoch_predictions(run_dir, path.stat().st_mtime) if path.is_file() else None
    except CifarError as exc:
        st.warning(f"{Path(run_dir).name}: {exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=16)
def _ensemble(run_dirs: tuple[str, ...], mtimes: tuple[float, ...]) -> dict:
    from .ensemble import measure_ensemble

    return measure_ensemble(list(run_dirs))


def ensemble(run_dirs: list[str]) -> dict:
    """The runs measured as one classifier from their saved predictions (cifar_core.ensemble), read
    again when any of them is re-measured; a CifarError says why they cannot be."""
    from .ensemble import MAX_MEMBERS

    run_dirs = [str(d) for d in run_dirs[:MAX_MEMBERS]]
    paths = [Path(d) / runs.PREDICTIONS_FILE for d in run_dirs]
    return _ensemble(tuple(run_dirs), tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths))


# --- analysis files (written by `python -m cifar_core analyze`) -----------------------------------

@st.cache_resource(show_spinner=False, max_entries=32)  # shared, not copied per call: read-only arrays
def _analysis(run_dir: str, name: str, mtime: float):
    from .analysis import files

    return files.read_analysis(run_dir, name)


def analysis(run_dir: str, name: str):
    """A run's analysis file (embedding, calibration, robustness, labels, neighbours.npz), checked
    against the run (files.read_analysis), or None when it has none; a bad file is a warning and
    None, never an exception."""
    from .analysis import analysis_path

    path = analysis_path(run_dir, name)
    try:
        return None if runs.absent(path) else _analysis(run_dir, name, path.lstat().st_mtime)
    except CifarError as exc:
        st.warning(f"{Path(run_dir).name}: {exc}")
        return None


def missing_analysis(record: dict, name: str) -> None:
    """Say a run lacks an analysis, and offer to compute it as a background job."""
    from . import jobs

    if runs.writer_alive(record["path"]):
        st.info(f"{record['run']} is being analysed (or trained) right now; this page shows the result "
                f"when it is written.")
        return
    st.info(f"{record['run']} has no {name} analysis yet. Compute it here in the background, or with "
            f"`python -m cifar_core analyze {record['path']} --only {name}` (the page only reads it).")
    if st.button(f"Compute the {name} analysis of {record['run']}", key=f"analyze_{name}_{record['run']}"):
        try:
            job = jobs.launch_analysis(record["path"], (name,))
            st.success(f"Started job {job.id}; its progress is in the Train page's jobs table.")
        except CifarError as exc:
            fail(exc)


def calibrated(run_dir: str, probabilities: np.ndarray) -> tuple[np.ndarray, bool]:
    """(probabilities after the run's fitted temperature, True) where calibration.json has one,
    else (the model's own, False)."""
    from .analysis.calibration import softmax

    report = analysis(run_dir, "calibration")  # its temperature is checked to lie in the fitting bounds
    if report is None:
        return probabilities, False
    return softmax(np.log(np.maximum(probabilities, 1e-30)), float(report["temperature"])), True


NEIGHBOURS = 8


def show_neighbours(record: dict, reading, position: int) -> None:
    """'It says cat because it looks like these': the photo's nearest training images in the
    model's feature space (cosine), from the run's neighbours.npz."""
    from .analysis.embedding import nearest
    from .imaging import upscale

    index = analysis(record["path"], "neighbours.npz")
    if index is None or reading.features is None or reading.features.shape[1] != index["components"].shape[1]:
        return
    found, similarity = nearest(index, reading.features[position], NEIGHBOURS)
    names = reading.class_names
    labels = [names[int(index["labels"][i])] for i in found[0]]
    data = default_dataset()
    caption = f"nearest training images: {', '.join(labels)}"
    if data is None or data.source == "sample" or len(data.y_train) != len(index["labels"]):
        st.caption(caption)
        return
    st.image(np.hstack([upscale(data.x_train[i], 48) for i in found[0]]),
             caption=f"looks like these training images: {', '.join(labels)}")


def agreement_line(names: list[str], votes: list[tuple[str, np.ndarray]], figures: dict | None) -> tuple[bool, str]:
    """(whether every model's top class is the same, what to say): the models' answer together (the
    mean of their probabilities, as `ensemble` measures it) and, from `figures` (the runs' agreement on
    the test split), how often such an answer was right there."""
    tops = [names[int(np.argmax(probabilities))] for _, probabilities in votes]
    joint = np.mean([probabilities for _, probabilities in votes], axis=0)
    label = names[int(np.argmax(joint))]
    unanimous = len(set(tops)) == 1
    if unanimous:
        line, share, where = f"All {len(votes)} models say **{label}**.", "accuracy_unanimous", "all agree"
    else:
        said = ", ".join(f"{run}: {top}" for (run, _), top in zip(votes, tops, strict=True))
        line = f"The models disagree ({said}); together: **{label}** ({joint.max():.0%})."
        share, where = "accuracy_split", "split"
    if figures is not None and figures.get(share) is not None:
        line += f" On the test split, where these models {where} they are right {figures[share]:.1%} of the time."
    return unanimous, line


def show_agreement(readings: list, position: int) -> None:
    """What the chosen models say together about one photo, and how far that deserves trust."""
    names = list(readings[0][1].class_names)
    if any(list(reading.class_names) != names for _, reading in readings):
        st.caption("These models know different classes: no joint answer.")
        return
    try:
        figures = ensemble([record["path"] for record, _ in readings])["agreement"]
    except CifarError:
        figures = None  # runs measured on different test splits: the answer without its track record
    unanimous, line = agreement_line(names, [(record["run"], reading.probabilities[position])
                                             for record, reading in readings], figures)
    (st.success if unanimous else st.warning)(line)


# --- models -------------------------------------------------------------------------------------

_photo_worker = None
_photo_worker_lock = threading.Lock()


def photo_worker():
    """The server's one model worker process (cifar_core.photo_worker), started on first use."""
    global _photo_worker
    with _photo_worker_lock:
        if _photo_worker is None:
            from .photo_worker import PhotoWorker

            _photo_worker = PhotoWorker()
        return _photo_worker


def read_photos(run_dir: str, images: list[np.ndarray]):
    """One model's PhotoReading for a batch of photos, from the warm model worker."""
    with st.spinner("Reading the photos…", show_time=True):
        return photo_worker().read(run_dir, images)


# --- audience mode --------------------------------------------------------------------------------

_audience = {"server": None}
_audience_lock = threading.Lock()


def audience_server():
    """The open audience room's server, or None."""
    return _audience["server"]


def open_audience_room() -> None:
    """Start the audience server (only reachable when the dashboard was started with --audience)."""
    from . import audience

    if not audience.enabled():
        raise CifarError("audience mode is off: start the dashboard with -- --audience")
    with _audience_lock:
        if _audience["server"] is None:
            server = audience.AudienceServer(audience.Room(), port=audience.port_from())
            server.start()
            _audience["server"] = server


def close_audience_room() -> None:
    """Stop the server; the gallery goes with it."""
    with _audience_lock:
        if _audience["server"] is not None:
            _audience["server"].stop()
            _audience["server"] = None


_warm_up_started = threading.Lock()
INSIDE_SAMPLE_INDEX = 1
WORKER_START_DELAY_SECONDS = 1.5  # the shipped sample's photo the Inside page shows when none is dropped


# Modules the pages import on first use that take a second or more to import on a 2-core machine
# (scikit-learn: 1.7 s, on the Compare page's first visit, for its ensemble line). The server imports
# them while the title slide shows, beside the model worker, so no page's first visit pays for them.
PAGE_MODULES = ("sklearn.metrics", "plotly.subplots")


def preload_page_modules() -> list[str]:
    """Import PAGE_MODULES into this process; the names that failed to import (that page alone says so)."""
    failed = []
    for name in PAGE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            failed.append(name)
    return failed


def warm_up_models() -> None:
    """Once per server process: have the model worker load and trace the shipped models
    in the background, the Classify page's default choice first. Each page's sidebar says
    whether they are ready."""
    if not _warm_up_started.acquire(blocking=False):
        if photo_worker().is_warm():
            st.sidebar.caption(":material/check_circle: Models ready")
        else:
            st.sidebar.caption(":material/hourglass_top: Loading the models in the background…")
        return
    records = [r for r in finished_runs() if r["has_model"]]
    first = best_run_per_model(sorted(records, key=lambda r: -(r["test_accuracy"] or 0)))
    order = [r["path"] for r in first] + [r["path"] for r in records if r not in first]
    sample = sample_dataset()
    inside = (first[0]["path"], sample.x_test[INSIDE_SAMPLE_INDEX]) if first and sample is not None else None

    def start() -> None:
        # A process of its own: it loads the models, then inspects the Inside page's default (the best
        # model on the sample's photo), on the other core.
        photo_worker().warm(order, inside)
        preload_page_modules()

    # A moment after the first page's script: its charts draw in the browser before TensorFlow's
    # import takes a core.
    threading.Timer(WORKER_START_DELAY_SECONDS, start).start()
    st.sidebar.caption(":material/hourglass_top: Loading the models in the background…")


# --- data ---------------------------------------------------------------------------------------

def candidate_sources() -> list[str]:
    """Where the studio looks for the dataset, in order: env var, then shipped runs' configs.

    A path in a run's config is a suggestion from a file anyone may have shared:
    it is used only if it already looks like a dataset, and never scanned."""
    from .data.sources import looks_like_dataset

    found = []
    if os.environ.get("CIFAR10_SOURCE"):
        found.append(os.environ["CIFAR10_SOURCE"])
    for record in run_records()[0]:
        config = run_json(record["path"], runs.CONFIG_FILE) or {}
        source = config.get("data")
        if not source or source == "keras":
            continue
        path = (ROOT / source).resolve()
        if str(path) not in found and looks_like_dataset(path):
            found.append(str(path))
    keras_cache = Path.home() / ".keras" / "datasets" / "cifar-10-batches-py"
    if keras_cache.is_dir():
        found.append(str(keras_cache))
    return found


@st.cache_resource(show_spinner="Loading dataset (cached after the first time)…", max_entries=2)
def dataset(source: str):
    from .data import load_dataset

    return load_dataset(source)


@st.cache_resource(show_spinner=False)
def sample_dataset():
    from .data import Dataset

    """A small committed sample of the test split, so pages work with no dataset at hand; None where
    it is missing or damaged (the pages then say there is no data)."""
    from .data.sources import validate_dataset
    from .errors import DataSourceError
    from .safeio import read_cached_npz

    arrays = read_cached_npz(SAMPLE_FILE, MAX_SAMPLE_BYTES, ("images", "labels", "class_names"))
    if arrays is None:
        return None
    images, labels = arrays["images"], arrays["labels"]
    sample = Dataset(images, labels, images, labels, tuple(str(n) for n in arrays["class_names"].reshape(-1)),
                     "sample", f"CIFAR-10 sample ({len(labels)} test images, shipped)")
    try:
        validate_dataset(sample)
    except DataSourceError:
        return None
    return sample


# What the uploaders offer (a browser's file picker filters by extension); the decoder then checks
# the bytes themselves, whatever the name says.
UPLOAD_TYPES = ["jpg", "jpeg", "png", "gif", "bmp", "webp"]
# Photos one drop reads: each may decode to 64 MiB (imaging.MAX_DECODED_BYTES) and is read by every
# chosen model, so a folder dropped whole would hold gigabytes and the page for minutes.
MAX_PHOTOS = 12


def photos_to_read(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The first MAX_PHOTOS of a drop, before any is decoded; a warning says how many more waited."""
    if len(files) > MAX_PHOTOS:
        st.warning(f"{len(files)} photos dropped: the first {MAX_PHOTOS} are read. Drop the others in another "
                   "round.")
    return files[:MAX_PHOTOS]


def dropped_photo(key: str, sample_index: int = 0):
    """A photo dropped on the page's uploader (decoded and validated), else one image of the shipped
    sample (said so); None, with the reason on the page, when there is neither."""
    from .imaging import decode_image

    upload = st.file_uploader("A photo", type=UPLOAD_TYPES, key=key)
    if upload is not None:
        try:
            return decode_image(upload.getvalue(), upload.name)
        except CifarError as exc:
            fail(exc)
            return None
    sample = sample_dataset()
    if sample is None:
        return None
    st.caption("No photo dropped: using an image of the shipped sample.")
    return sample.x_test[sample_index]


def example_indices(n_available: int, count: int = 3, seed: int | None = None) -> list[int]:
    """`count` different image indices (fewer if fewer exist): one image twice would repeat its charts."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_available, min(count, n_available), replace=False)]


def default_dataset():
    """The full dataset if it can be found, else the shipped sample, else None; never raises."""
    for source in candidate_sources():
        try:
            return dataset(source)
        except CifarError:
            continue
    return sample_dataset()


def preset_label(name: str) -> str:
    """'fastnet — airbench-style net …: 57 min on AMD EPYC, 2 cores; about 41 min here (bench)'.

    The time is the shipped run's, on the machine it was measured on; where `bench` has measured
    this CPU, the training images that run processed divided by this machine's images/s too."""
    from .bench import this_machine_speeds
    from .config import PRESETS, builds_network_of, preset_config, recipe_config

    if name not in PRESETS:
        return "custom (the fields below)"
    preset = PRESETS[name]
    metrics = run_json(str(runs.DEFAULT_RUNS_ROOT / preset.shipped_run), runs.METRICS_FILE) or {}
    seconds = metrics.get("train_seconds")
    if seconds is None:
        return f"{name} — {preset.summary}"
    label = f"{name} — {preset.summary}: {duration(seconds)} on {runs.machine_name(metrics.get('machine')) or '?'}"
    config = preset_config(name)
    speeds = this_machine_speeds()
    # "auto" trains in whichever precision is faster here; bench timed the recipe the same way.
    precisions = ("float32", "mixed_bfloat16") if config.precision == "auto" else (config.precision,)
    # bench times presets by name; a model's own recipe stands in only for a preset of the same network.
    own_recipe = builds_network_of(config.model, config.model_options, recipe_config(config.model))
    names = [name] + ([config.model] if own_recipe else [])
    here = max((speeds.get((timed, config.batch_size, p)) or 0 for timed in names for p in precisions), default=0)
    processed = seconds * (metrics.get("train_images_per_second") or 0)
    if here and processed and not metrics.get("transfer"):
        # A distilled run's teacher labelling is not a training step bench times: as measured.
        label += f"; about {duration(processed / here + (metrics.get('teacher_seconds') or 0))} here (bench)"
    return label


def duration(seconds: float) -> str:
    """'38 s' under two minutes, else '57 min'."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def registered_models() -> set[str]:
    from .models import model_names

    return set(model_names())


def elapsed(since: float) -> str:
    return f"{(time.perf_counter() - since) * 1000:.0f} ms"
