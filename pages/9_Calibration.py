"""Calibration: how far to trust each model's probabilities, before and after temperature scaling."""
import pandas as pd
import streamlit as st

from cifar_core import ui
from cifar_core.charts import reliability_figure

ui.page("Calibration", "🎯")
st.caption("A model is calibrated when, of the photos it calls 80% sure, 80% are right. Temperature scaling "
           "divides the logits by one number fitted on held-out training images (never the test split); the "
           "diagrams and figures below are measured on the 10,000 test images, 15 equal-width confidence bins.")

chosen = ui.pick_runs("Runs", key="calibration_runs", multiple=True, default_count=2)
if not chosen:
    st.stop()


columns = st.columns(len(chosen))
rows = {}
for column, record in zip(columns, chosen, strict=True):
    report = ui.analysis(record["path"], "calibration")
    with column:
        if report is None:
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
