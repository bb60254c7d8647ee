"""Embedding map: each test image placed by what the network's last layer makes of it (PCA, then
t-SNE), two runs side by side; select a region to see its images."""
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import ui
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
for column, record in zip(columns, chosen[:2], strict=False):
    embedding = ui.analysis(record["path"], "embedding")
    with column:
        if embedding is None:
            ui.missing_analysis(record, "embedding")
            continue
        names = (ui.run_json(record["path"], "metrics.json") or {}).get("class_names") or \
            [str(i) for i in range(int(embedding["labels"].max()) + 1)]
        frame = pd.DataFrame({"x": embedding["coords"][:, 0], "y": embedding["coords"][:, 1],
                              "index": embedding["indices"],
                              "true class": [names[i] for i in embedding["labels"]],
                              "predicted class": [names[i] for i in embedding["predictions"]]})
        frame["result"] = np.where(embedding["labels"] == embedding["predictions"], "right", "misclassified")
        figure = px.scatter(frame, x="x", y="y", color=colour_by, symbol="result", render_mode="webgl",
                            symbol_map={"right": "circle", "misclassified": "x"}, custom_data=["index"],
                            hover_data={"x": False, "y": False, "true class": True, "predicted class": True},
                            category_orders={colour_by: list(names)}, height=520,
                            title=f"{record['model']} · {record['run']}")
        figure.update_traces(marker=dict(size=4, opacity=0.7))
        figure.update_layout(xaxis=dict(visible=False), yaxis=dict(visible=False), legend=dict(font=dict(size=10)),
                             margin=dict(t=40, l=0, r=0, b=0), dragmode="lasso")
        event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode=("box", "lasso"),
                                key=f"embedding_{record['run']}")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        selected = [int(p["customdata"][0]) for p in points if p.get("customdata")]
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
