"""Home: time to accuracy of every run, the leaderboard, and where to go next. No TensorFlow here.

The chart is Vega-Lite (st.altair_chart), not plotly like the other pages: its
JavaScript loads about 0.6 s sooner, and this is the page a talk opens on."""
import altair as alt
import streamlit as st

from cifar_core import ui

ui.page("CIFAR-10 Studio", "🛰️")
st.caption("Convolutional networks trained with and without transfer learning on CIFAR-10, "
           "measured on this machine. Every figure comes from a run folder in artifacts/runs/.")

board, problems = ui.leaderboard()
for problem in problems:
    st.warning(f"Leaderboard: {problem}")

if board.empty:
    st.info("No runs yet. Train one on the **Train** page, or with `python -m cifar_core train --model demo`.")
else:
    finished = board[board["state"] == "completed"]
    if not finished.empty:
        best = finished.iloc[0]
        left, middle, right = st.columns(3)
        left.metric("Best test accuracy", f"{best['test_accuracy']:.1%}", best["model"], delta_color="off")
        middle.metric("Finished runs", len(finished))
        transfer = finished[finished["transfer"]]
        right.metric("Best transfer model", f"{transfer.iloc[0]['test_accuracy']:.1%}" if not transfer.empty else "—",
                     transfer.iloc[0]["model"] if not transfer.empty else None, delta_color="off")
        timed = finished.dropna(subset=["train_minutes"]).assign(
            kind=lambda f: f["transfer"].map({True: "transfer learning", False: "trained from scratch"}))
        if not timed.empty:
            st.subheader("Time to accuracy")
            cpus = sorted(set(timed["cpu"].dropna()))
            st.caption(f"Test accuracy against training minutes, each run on the machine it was measured on "
                       f"({'; '.join(cpus) or 'machine not recorded'}).")
            points = alt.Chart(timed).mark_circle(size=160).encode(
                x=alt.X("train_minutes:Q", title="training minutes (log scale)", scale=alt.Scale(type="log")),
                y=alt.Y("test_accuracy:Q", title="test accuracy", axis=alt.Axis(format="%"),
                        scale=alt.Scale(zero=False)),
                color=alt.Color("kind:N", title=None, legend=alt.Legend(orient="bottom"),
                                scale=alt.Scale(domain=["trained from scratch", "transfer learning"],
                                                range=["#1f77b4", "#e4572e"])),
                tooltip=[alt.Tooltip("run:N"), alt.Tooltip("model:N"),
                         alt.Tooltip("test_accuracy:Q", title="test accuracy", format=".1%"),
                         alt.Tooltip("train_minutes:Q", title="training minutes", format=",.1f"),
                         alt.Tooltip("cpu:N", title="machine")])
            labels = points.mark_text(align="right", dx=-9, dy=-9, fontSize=12).encode(text="run:N")
            st.altair_chart((points + labels).properties(height=320), width="stretch")
    st.dataframe(
        board.drop(columns=["path", "has_model", "progress"]), hide_index=True, width="stretch",
        column_config={
            "test_accuracy": st.column_config.NumberColumn(ui.LABELS["test_accuracy"], format="percent"),
            "test_accuracy_tta": st.column_config.NumberColumn(ui.LABELS["test_accuracy_tta"], format="percent"),
            "train_minutes": st.column_config.NumberColumn(ui.LABELS["train_minutes"], format="%.1f"),
            "params": st.column_config.NumberColumn(format="localized"),
            "cpu": st.column_config.TextColumn("machine"),
        })

st.subheader("Where next")
columns = st.columns(3)
for i, (target, label, icon) in enumerate(ui.PAGE_LINKS):
    columns[i % 3].page_link(target, label=label, icon=icon)
ui.preload_plotly()  # last: nothing on this page waits for it
