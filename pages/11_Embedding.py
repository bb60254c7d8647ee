"""Embedding map: each test image placed by what the network's last layer makes of it (PCA, then
t-SNE), two runs side by side; select a region to see its images."""
import numpy as np
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.analysis import analysis_path
from cifar_core.imaging import upscale

ui.page("Embedding map", "🗺️")
st.caption("The 10,000 test images, placed by the features each network classifies from (its penultimate layer), "
           "projected to two dimensions with PCA then t-SNE. Crosses are misclassified. Draw a box or lasso on a "
           "map to see those images.")

chosen = ui.pick_runs("Runs (two side by side: homebrew against transfer is the point)", key="embedding_runs",
                      multiple=True, default_count=2)
if not chosen:
    st.stop()
colour_by = st.radio("Colour by", ["true class", "predicted class"], horizontal=True, key="embedding_colour")
data = ui.default_dataset()
columns = st.columns(min(len(chosen), 2))
selections = []


PALETTE = px.colors.qualitative.D3  # ten distinct colours, one per CIFAR-10 class


@st.cache_resource(show_spinner=False, max_entries=8)
def embedding_figure(run: str, model: str, names: tuple[str, ...], colour_by: str, stamp: float, _embedding):
    """The map of one run as ONE WebGL trace (colour and symbol per point): twenty traces of a
    colour-by-class plot cost the browser far more to draw. Built once per run, colouring and file."""
    import plotly.graph_objects as go

    labels, predictions = _embedding["labels"], _embedding["predictions"]
    colours = labels if colour_by == "true class" else predictions
    wrong = labels != predictions
    figure = go.Figure(go.Scattergl(
        x=_embedding["coords"][:, 0], y=_embedding["coords"][:, 1], mode="markers",
        marker=dict(size=np.where(wrong, 6, 4), opacity=0.75, symbol=np.where(wrong, "x", "circle"),
                    color=[PALETTE[c % len(PALETTE)] for c in colours]),
        customdata=_embedding["indices"],
        text=[f"{names[t]} → {names[p]}" for t, p in zip(labels, predictions, strict=True)],
        hovertemplate="#%{customdata}: %{text}<extra></extra>"))
    figure.update_layout(title=f"{model} · {run}", height=520, xaxis=dict(visible=False), yaxis=dict(visible=False),
                         margin=dict(t=40, l=0, r=0, b=0), dragmode="lasso", showlegend=False)
    return figure


def colour_key(names) -> str:
    return " ".join(f'<span style="color:{PALETTE[i % len(PALETTE)]}">●</span> {name}' for i, name in enumerate(names))


for column, record in zip(columns, chosen[:2], strict=False):
    embedding = ui.analysis(record["path"], "embedding")
    with column:
        if embedding is None:
            ui.missing_analysis(record, "embedding")
            continue
        names = tuple((ui.run_json(record["path"], "metrics.json") or {}).get("class_names") or
                      [str(i) for i in range(int(embedding["labels"].max()) + 1)])
        stamp = analysis_path(record["path"], "embedding").stat().st_mtime
        figure = embedding_figure(record["run"], record["model"], names, colour_by, stamp, embedding)
        st.markdown(colour_key(names) + " · ✕ misclassified", unsafe_allow_html=True)
        event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode=("box", "lasso"),
                                key=f"embedding_{record['run']}")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        selected = [int(p["customdata"]) for p in points if p.get("customdata") is not None]
        if selected:
            selections.append((record, names, embedding, selected))

for record, names, embedding, selected in selections:
    st.markdown(f"**{len(selected):,} images selected on {record['run']}** (the first 40)")
    if data is None or data.source == "sample" or len(data.y_test) != len(embedding["labels"]):
        st.caption("Point CIFAR10_SOURCE at the dataset to see the images; their test indices: "
                   + ", ".join(map(str, selected[:40])))
        continue
    first = selected[:40]
    st.image([upscale(data.x_test[i], 80) for i in first], width=80,
             caption=[f"{names[embedding['labels'][i]]} → {names[embedding['predictions'][i]]}" for i in first])
