"""Train: launch background jobs from a form, watch live curves, cancel or resume."""
import time
import warnings

import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import jobs, runs, ui
from cifar_core.config import AUGMENTATIONS, OPTIMIZERS, PRESETS, preset_config, recipe_config
from cifar_core.errors import CifarError
from cifar_core.models import model_names

ui.page("Train a model", "🏋️")
st.caption("Each job runs in its own worker process and writes a run folder; this page only reads it. "
           "Jobs survive a restart of the dashboard.")

sources = ui.candidate_sources()
preset_names = ["custom", *PRESETS]
with st.form("train_form"):
    preset = st.selectbox("Preset", preset_names, key="train_preset", format_func=ui.preset_label,
                          help="A preset trains exactly the recipe of one shipped run; 'custom' uses the fields "
                               "below. The time is the shipped run's, on the machine it was measured on; 'here' "
                               "estimates this machine's from its training speed measured by "
                               "`python -m cifar_core bench` (run it once on a new machine).")
    left, right = st.columns(2)
    model = left.selectbox("Model", model_names(), index=model_names().index("demo"), key="train_model")
    source = right.text_input("Data source", value=sources[0] if sources else "keras", key="train_source")
    epochs = left.number_input("Epochs", 1, 200, 3, key="train_epochs")
    limit = right.number_input("Train on a subset of N images (0 = all)", 0, 1_000_000, 5000, step=1000,
                               key="train_limit")
    optimizer = left.selectbox("Optimizer", OPTIMIZERS, key="train_optimizer")
    learning_rate = right.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="train_lr")
    augmentations = st.multiselect("Augmentations", AUGMENTATIONS, default=["flip"], key="train_aug")
    submitted = st.form_submit_button("Start training", type="primary")
if submitted:
    try:
        if preset != "custom":
            config = preset_config(preset, data=source)
        else:
            config = recipe_config(model, data=source, n_epochs=int(epochs), limit=int(limit) or None,
                                   optimizer=optimizer, learning_rate=float(learning_rate),
                                   augmentations=tuple(augmentations))
        job = jobs.launch(config)
        st.session_state.train_watch = job.id
        st.success(f"Started job {job.id}: {job.run_dir.name}")
    except CifarError as exc:
        ui.fail(exc)



def _state(job, status: dict) -> str:
    """The registry's state once it is final; while active, the run folder's (fresher: the
    registry row says 'queued' until its worker reports back, the run folder knows at once)."""
    if job.state not in jobs.ACTIVE_STATES or not status:
        return job.state
    return runs.effective_state(status, run_dir=job.run_dir)


def _job_rows(all_jobs) -> pd.DataFrame:
    rows = []
    for job in all_jobs:
        try:
            status = runs.read_status(job.run_dir) or {}
        except CifarError:
            status = {}
        state = _state(job, status)
        rows.append({"job": job.id, "model": job.model, "state": state, "progress": float(status.get("progress") or 0),
                     "run": job.run_dir.name, "started": time.strftime("%H:%M:%S", time.localtime(job.created_at)),
                     "message": job.message})
    return pd.DataFrame(rows)


@st.fragment(run_every=2)
def jobs_table() -> list[int]:
    """The jobs, refreshed every 2 s; returns their ids, newest first."""
    with warnings.catch_warnings(record=True) as registry_notes:
        warnings.simplefilter("always")
        try:
            all_jobs = jobs.list_jobs()
        except CifarError as exc:
            ui.fail(exc)
            return []
    for note in registry_notes:
        st.warning(str(note.message))
    if not all_jobs:
        st.info("No jobs yet.")
        return []
    st.dataframe(_job_rows(all_jobs), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                           max_value=1)})
    return [j.id for j in all_jobs]


ids = jobs_table()
if not ids:
    st.stop()
default = ids.index(st.session_state.get("train_watch", ids[0])) if st.session_state.get("train_watch") in ids else 0
watched = st.selectbox("Watch job", ids, index=default, key="train_watch_select",
                       format_func=lambda i: f"job {i}")


def _curve(run_dir: str):
    """Per-batch running accuracy (live.csv) with each epoch's validation accuracy on top."""
    try:
        live = pd.DataFrame(runs.read_live(run_dir))
    except CifarError as exc:
        st.warning(str(exc))
        live = pd.DataFrame()
    history = ui.history_frame(run_dir)
    parts = []
    if not live.empty:
        parts.append(live.assign(curve="training accuracy (running)")[["epoch", "accuracy", "curve"]])
    if not history.empty and history["val_accuracy"].notna().any():
        parts.append(history.assign(curve="validation accuracy")[["epoch", "val_accuracy", "curve"]]
                     .rename(columns={"val_accuracy": "accuracy"}).dropna())
    if not parts:
        return None
    figure = px.line(pd.concat(parts, ignore_index=True), x="epoch", y="accuracy", color="curve", height=300,
                     markers=False, title="Accuracy, updated every few seconds")
    figure.update_layout(yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.25))
    return figure


@st.fragment(run_every=2)
def live(job_id: int) -> None:
    job = jobs.get_job(job_id)
    try:
        status = runs.read_status(job.run_dir) or {}
    except CifarError:
        status = {}
    state = _state(job, status)
    progress = float(status.get("progress") or 0.0)
    eta = status.get("eta_seconds")
    label = f"{state} — epoch {status.get('epoch', 0)}/{status.get('n_epochs', '?')}"
    if status.get("batch") and state == "running":
        label += f", batch {status['batch']:,}/{status.get('steps_per_epoch', 0):,}"
    if eta and state == "running":
        label += f", about {eta / 60:.1f} min left"
    st.progress(min(progress, 1.0), text=label)
    if job.message:
        st.caption(job.message)
    figure = _curve(str(job.run_dir))
    if figure is not None:
        st.plotly_chart(figure, width="stretch", key=f"train_curve_{job_id}")
    left, right = st.columns(2)
    if state in ("running", "queued") and left.button("Cancel", key=f"cancel_{job_id}"):
        jobs.cancel(job_id)
        st.rerun()
    if state in ("interrupted", "cancelled", "failed") and right.button("Resume", key=f"resume_{job_id}"):
        try:
            jobs.resume_job(job_id)
        except CifarError as exc:
            ui.fail(exc)
        st.rerun()


live(watched)
st.caption("To watch several jobs race each other on one chart, open **Race and replay** in the sidebar.")
