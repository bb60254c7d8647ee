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

ui.page("Train", "🏋️")
st.caption("Each job runs in its own worker process and writes a run folder; this page only reads it. "
           "Jobs survive a restart of the dashboard.")

sources = ui.candidate_sources()
preset_names = ["custom", *PRESETS]
with st.form("train_form"):
    preset = st.selectbox("Preset", preset_names, key="train_preset", format_func=ui.preset_label,
                          help="A preset trains exactly the recipe of one shipped run; 'custom' uses the fields "
                               "below. The time is what the shipped run took on the machine it was measured on.")
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

with warnings.catch_warnings(record=True) as registry_notes:
    warnings.simplefilter("always")
    try:
        all_jobs = jobs.list_jobs()
    except CifarError as exc:
        ui.fail(exc)
        st.stop()
for note in registry_notes:
    st.warning(str(note.message))
if not all_jobs:
    st.info("No jobs yet.")
    st.stop()
table = pd.DataFrame([{"job": j.id, "model": j.model, "state": j.state, "run": j.run_dir.name,
                       "started": time.strftime("%H:%M:%S", time.localtime(j.created_at)), "message": j.message}
                      for j in all_jobs])
st.dataframe(table, hide_index=True, width="stretch")
ids = [j.id for j in all_jobs]
default = ids.index(st.session_state.get("train_watch", ids[0])) if st.session_state.get("train_watch") in ids else 0
watched = st.selectbox("Watch job", ids, index=default, key="train_watch_select",
                       format_func=lambda i: f"job {i}")


@st.fragment(run_every=2)
def live(job_id: int) -> None:
    job = jobs.get_job(job_id)
    try:
        status = runs.read_status(job.run_dir) or {}
    except CifarError:
        status = {}
    state = job.state if job.state not in jobs.ACTIVE_STATES else status.get("state", job.state)
    progress = float(status.get("progress") or 0.0)
    eta = status.get("eta_seconds")
    label = f"{state} — epoch {status.get('epoch', 0)}/{status.get('n_epochs', '?')}"
    if eta and state == "running":
        label += f", about {eta / 60:.1f} min left"
    st.progress(min(progress, 1.0), text=label)
    if job.message:
        st.caption(job.message)
    history = ui.history_frame(str(job.run_dir))
    if not history.empty:
        metric_columns = [c for c in ("accuracy", "val_accuracy") if history[c].notna().any()]
        long = history.melt(id_vars="epoch", value_vars=metric_columns, var_name="curve", value_name="value")
        figure = px.line(long, x="epoch", y="value", color="curve", markers=True, height=300,
                         title="Accuracy per epoch")
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
