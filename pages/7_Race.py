"""Race and replay: accuracy against training minutes, for jobs training now and for recorded runs
replayed at a chosen speed (for rooms where nothing can train)."""
import time

import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import jobs, race, runs, ui
from cifar_core.errors import CifarError

ui.page("Race and replay", "🏁")
st.caption("Each line is a run's accuracy against its training minutes: validation accuracy where the run kept "
           "a validation split, training accuracy where it trained on every image; each line says which. "
           "Live jobs also draw the running accuracy of the epoch in progress, every few seconds.")

records = ui.run_records()[0]
recorded = [r for r in records if r["state"] == "completed"]
# Jobs the registry knows are active count at once, before their worker has written a run folder.
live_runs = {r["run"]: r for r in records if r["state"] in ("running", "queued")}
try:
    for job in jobs.list_jobs():
        if job.state in jobs.ACTIVE_STATES and job.run_dir.name not in live_runs and not job.analyses:
            live_runs[job.run_dir.name] = {"run": job.run_dir.name, "path": str(job.run_dir), "model": job.model}
except CifarError as exc:
    st.warning(f"Jobs: {exc}")
live_runs = list(live_runs.values())
left, right = st.columns(2)
live_choice = left.multiselect("Jobs training now", [r["run"] for r in live_runs],
                               default=[r["run"] for r in live_runs][:4], key="race_live",
                               help="Start jobs on the Train page (e.g. a homebrew and a transfer model).")
replay_default = [r["run"] for r in ui.best_run_per_model(recorded)][:2] if not live_runs else []
replay_choice = right.multiselect("Replay recorded runs", [r["run"] for r in recorded], default=replay_default,
                                  key="race_replay")
speed = right.select_slider("Replay speed", race.REPLAY_SPEEDS, value=60, key="race_speed",
                            format_func=lambda s: f"{s}×")
if replay_choice:
    start, stop = right.columns(2)
    if start.button("Start the replay", type="primary", key="race_start"):
        st.session_state.race_started = time.time()
    if stop.button("Show the whole runs", key="race_whole"):
        st.session_state.race_started = 0.0
if not live_choice and not replay_choice:
    st.info("Pick jobs training now, or recorded runs to replay.")
    st.stop()
by_name = {r["run"]: r for r in records + live_runs}


def _lines(now: float) -> tuple[list[dict], list[tuple[str, float, str]]]:
    """Chart points and (label, progress, caption) per run."""
    points, bars = [], []
    for name in live_choice:
        record = by_name[name]
        history = ui.history_frame(record["path"]).to_dict("records")
        try:
            live = runs.read_live(record["path"])
        except CifarError as exc:
            st.warning(str(exc))
            live = []
        label = f"{record['model']} · live"
        done = race.total_seconds(history)
        for point in race.epoch_points(history) + race.live_points(live, after_seconds=done):
            points.append({**point, "run": label})
        status = ui.run_json(record["path"], runs.STATUS_FILE) or {}
        bars.append((label, float(status.get("progress") or 0.0), f"{name}: {status.get('state', '?')}"))
    started = st.session_state.get("race_started")
    for name in replay_choice:
        record = by_name[name]
        history = ui.history_frame(record["path"]).to_dict("records")
        until = None if not started else race.replay_seconds(started, now, speed, history)
        label = f"{record['model']} · REPLAY {speed}×"
        for point in race.epoch_points(history, until_seconds=until):
            points.append({**point, "run": label})
        if started:
            fraction, epochs = race.replay_progress(started, now, speed, history)
            caption = f"replay of {name}: {epochs}/{len(history)} epochs, recorded on {record.get('cpu') or '?'}"
        else:
            fraction, caption = 1.0, f"{name}: the whole recorded run (press Start to replay it)"
        bars.append((label, fraction, caption))
    return points, bars


@st.fragment(run_every=2)
def race_view() -> None:
    points, bars = _lines(time.time())
    if replay_choice and st.session_state.get("race_started"):
        st.info(f"Replay at {speed}× speed of recorded runs: nothing is training now.", icon=":material/replay:")
    for label, fraction, caption in bars:
        st.progress(min(max(fraction, 0.0), 1.0), text=f"**{label}** — {caption}")
    if not points:
        st.caption("No epoch finished yet: the lines start at the end of each run's first epoch.")
    frame = pd.DataFrame(points, columns=["minutes", "accuracy", "epoch", "curve", "run"])
    frame["line"] = frame["run"] + " (" + frame["curve"] + ")"
    figure = px.line(frame, x="minutes", y="accuracy", color="line", markers=True, height=420,
                     labels={"minutes": "training minutes", "line": ""}, hover_data=["epoch"])
    figure.update_layout(yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.2))
    st.plotly_chart(figure, width="stretch", key="race_chart")


race_view()
