"""Embedding map: each test image placed by what the network's last layer makes of it (PCA, then
t-SNE), two runs side by side; select a region to see its images."""
import numpy as np
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.analysis import analysis_path
from cifar_core.analysis.embedding import MAP_SAMPLE, map_sample
from cifar_core.imaging import upscale

ui.page("Embedding map", "🗺️")
st.caption("The 10,000 test images, placed by the features each network classifies from (its penultimate layer), "
           "projected to two dimensions with PCA then t-SNE. Crosses are misclassified. Draw a box or lasso on a "
           "map to see those images.")

chosen = ui.pick_runs("Runs (two side by side: homebrew against transfer is the point)", key="embedding_runs",
                      multiple=True, default_count=2)
if not chosen:
    st.stop()
left, right = st.columns([3, 2])
colour_by = left.radio("Colour by", ["true class", "predicted class"], horizontal=True, key="embedding_colour")
# A browser without a GPU (a projector laptop, headless Chromium) draws WebGL in software: two maps of
# 10,000 points took 2-2.4 s there, so the page opens on the same seeded sample of each map (MAP_SAMPLE).
every_point = right.toggle("Every test image (slower to draw)", key="embedding_all_points")
PALETTE = px.colors.qualitative.D3  # ten distinct colours, one per CIFAR-10 class
def map_trace(embedding, colour_by: str, every: bool):
    """One run's map as ONE WebGL trace whose colours and symbols are numbers (sent as typed arrays):
    a trace per class, or a string per point, costs the browser far more to receive and draw."""
    import plotly.graph_objects as go

    keep = np.arange(len(embedding["labels"])) if every else map_sample(len(embedding["labels"]))
    embedding = {key: embedding[key][keep] for key in ("labels", "predictions", "coords", "indices")}
    labels, predictions = embedding["labels"], embedding["predictions"]
    colours = (labels if colour_by == "true class" else predictions).astype(np.int16)
    wrong = labels != predictions
    scale = [[i / (len(PALETTE) - 1), colour] for i, colour in enumerate(PALETTE)]
    return go.Scattergl(
        x=embedding["coords"][:, 0], y=embedding["coords"][:, 1], mode="markers",
        marker=dict(size=np.where(wrong, 6, 4).astype(np.int8), opacity=0.75,
                    symbol=np.where(wrong, 4, 0).astype(np.int8),  # 4: x, 0: circle
                    color=colours, colorscale=scale, cmin=0, cmax=len(PALETTE) - 1),
        customdata=embedding["indices"], hovertemplate="test image #%{customdata}<extra></extra>")


@st.cache_resource(show_spinner=False, max_entries=8)
def maps_figure(titles: tuple[str, ...], names: tuple[str, ...], colour_by: str, every: bool,
                stamps: tuple[float, ...], _embeddings):
    """Both runs' maps in ONE figure (side by side): one WebGL canvas for the page, not one per map.
    Built once per choice of runs, colouring and file versions."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.03)
    for position, embedding in enumerate(_embeddings, start=1):
        figure.add_trace(map_trace(embedding, colour_by, every), row=1, col=position)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(height=540, margin=dict(t=40, l=0, r=0, b=0), dragmode="lasso", showlegend=False)
    return figure


shown = []
for record in chosen[:2]:
    embedding = ui.analysis(record["path"], "embedding")
    if embedding is None:
        ui.missing_analysis(record, "embedding")
    else:
        shown.append((record, embedding))
if not shown:
    st.stop()
classes_held = max(int(embedding[key].max(initial=-1)) + 1 for _, embedding in shown
                   for key in ("labels", "predictions"))
names = tuple(ui.class_names(shown[0][0]["path"], classes_held))
st.markdown(" ".join(f'<span style="color:{PALETTE[i % len(PALETTE)]}">●</span> {name}'
                     for i, name in enumerate(names)) + " · ✕ misclassified", unsafe_allow_html=True)
total = len(shown[0][1]["labels"])
if not every_point and total > MAP_SAMPLE:
    st.caption(f"Each map shows the same {MAP_SAMPLE:,} of the {total:,} test images (a seeded sample); "
               "switch on *Every test image* for all of them.")
figure = maps_figure(tuple(f"{r['model']} · {r['run']}" for r, _ in shown), names, colour_by, every_point,
                     tuple(analysis_path(r["path"], "embedding").stat().st_mtime for r, _ in shown),
                     [embedding for _, embedding in shown])
event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode=("box", "lasso"),
                        key="embedding_maps")
points = (event or {}).get("selection", {}).get("points", []) if event else []
data = None  # read only once images are selected: a visit that only looks at the maps never waits for it
for position, (record, embedding) in enumerate(shown):
    selected = [int(p["customdata"]) for p in points
                if p.get("customdata") is not None and p.get("curve_number", 0) == position]
    if not selected:
        continue
    if data is None:
        data = ui.default_dataset()
    st.markdown(f"**{len(selected):,} images selected on {record['run']}** (the first 40)")
    if data is None or data.source == "sample" or len(data.y_test) != len(embedding["labels"]):
        st.caption("Point CIFAR10_SOURCE at the dataset to see the images; their test indices: "
                   + ", ".join(map(str, selected[:40])))
        continue
    first = selected[:40]
    st.image([upscale(data.x_test[i], 80) for i in first], width=80,
             caption=[f"{names[embedding['labels'][i]]} → {names[embedding['predictions'][i]]}" for i in first])
