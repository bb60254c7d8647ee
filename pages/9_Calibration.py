"""Calibration: how far to trust each model's probabilities, before and after temperature scaling."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cifar_core import ui

ui.page("Calibration", "🎯")
st.caption("A model is calibrated when, of the photos it calls 80% sure, 80% are right. Temperature scaling "
           "divides the logits by one number fitted on held-out training images (never the test split); the "
           "diagrams and figures below are measured on the 10,000 test images, 15 equal-width confidence bins.")

chosen = ui.pick_runs("Runs", key="calibration_runs", multiple=True, default_count=2)
if not chosen:
    st.stop()


def reliability_figure(report: dict, title: str) -> go.Figure:
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect")
    for when, colour in (("before", "#e4572e"), ("after", "#1f77b4")):
        bins = [b for b in report["bins"][when] if b["count"]]
        figure.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                           name=f"{when} scaling (ECE {report[f'ece_{when}']:.1%})", line=dict(color=colour),
                           marker=dict(size=[4 + 16 * b["count"] / report["n_test"] ** 0.5 / 10 for b in bins]),
                           customdata=[b["count"] for b in bins],
                           hovertemplate="confidence %{x:.0%}: accuracy %{y:.0%} (%{customdata:,} images)")
    figure.update_layout(title=title, height=380, xaxis=dict(title="confidence (top class)", tickformat=".0%",
                                                             range=[0, 1]),
                         yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1]),
                         legend=dict(orientation="h", y=-0.25), margin=dict(t=40))
    return figure


columns = st.columns(len(chosen))
rows = {}
for column, record in zip(columns, chosen, strict=True):
    report = ui.analysis(record["path"], "calibration")
    with column:
        if not isinstance(report, dict) or "bins" not in report:
            ui.missing_analysis(record, "calibration")
            continue
        st.plotly_chart(reliability_figure(report, f"{record['model']} · {record['run']}"), width="stretch",
                        key=f"calibration_{record['run']}")
        st.caption(f"Temperature {report['temperature']:.2f}, fitted on {report['fitted_on']}.")
    rows[record["run"]] = {
        "temperature": f"{report['temperature']:.2f}",
        "ECE before → after": f"{report['ece_before']:.2%} → {report['ece_after']:.2%}",
        "NLL before → after": f"{report['nll_before']:.3f} → {report['nll_after']:.3f}",
        "Brier before → after": f"{report['brier_before']:.4f} → {report['brier_after']:.4f}",
        "fitted on": report["fitted_on"]}
if rows:
    st.dataframe(pd.DataFrame(rows), width="stretch")
