"""Plotly figures more than one page draws (imported by pages only: plotly is the dashboard's)."""
from __future__ import annotations


def reliability_figure(report: dict, title: str):
    """A run's top-label reliability diagram from its calibration.json: accuracy against confidence
    per bin, before and after temperature scaling, the diagonal being perfect calibration."""
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect")
    for when, colour in (("before", "#e4572e"), ("after", "#1f77b4")):
        bins = [b for b in report["bins"][when] if b["count"]]
        figure.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                           name=f"{when} scaling (ECE {report[f'ece_{when}']:.1%})", line=dict(color=colour),
                           customdata=[b["count"] for b in bins],
                           hovertemplate="confidence %{x:.0%}: accuracy %{y:.0%} (%{customdata:,} images)")
    figure.update_layout(title=title, height=380, xaxis=dict(title="confidence (top class)", tickformat=".0%",
                                                             range=[0, 1]),
                         yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1]),
                         legend=dict(orientation="h", y=-0.25), margin=dict(t=40))
    return figure
