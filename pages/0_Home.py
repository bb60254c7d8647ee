"""Home: the leaderboard of every run, and where to go next. No TensorFlow here."""
import plotly.express as px
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
        left.metric("Best test accuracy", f"{best['test_accuracy']:.1%}", best["model"])
        middle.metric("Finished runs", len(finished))
        transfer = finished[finished["transfer"]]
        right.metric("Best transfer model", f"{transfer.iloc[0]['test_accuracy']:.1%}" if not transfer.empty else "—",
                     transfer.iloc[0]["model"] if not transfer.empty else None)
        chart = px.bar(finished, x="run", y="test_accuracy", color="transfer", hover_data=["model", "train_minutes"],
                       labels={"transfer": "transfer learning", **ui.LABELS}, range_y=[0, 1], height=320)
        chart.update_layout(margin=dict(t=10, b=10), xaxis_title=None, yaxis_tickformat=".0%")
        st.plotly_chart(chart, width="stretch")
    st.dataframe(
        board.drop(columns=["path", "has_model", "progress"]), hide_index=True, width="stretch",
        column_config={
            "test_accuracy": st.column_config.NumberColumn(ui.LABELS["test_accuracy"], format="percent"),
            "test_accuracy_tta": st.column_config.NumberColumn(ui.LABELS["test_accuracy_tta"], format="percent"),
            "train_minutes": st.column_config.NumberColumn(ui.LABELS["train_minutes"], format="%.1f"),
            "params": st.column_config.NumberColumn(format="localized"),
        })

st.subheader("Where next")
columns = st.columns(3)
for i, (target, label, icon) in enumerate(ui.PAGE_LINKS):
    columns[i % 3].page_link(target, label=label, icon=icon)
