"""Dataset: samples per class, class balance, source and counts."""
import numpy as np
import pandas as pd
import streamlit as st

from cifar_core import ui
from cifar_core.errors import CifarError
from cifar_core.imaging import mosaic

ui.page("Dataset", "📚")

sources = ui.candidate_sources()
source = st.text_input("Data source (an image folder, a .zip/.tar.gz of one, or cifar-10-python.tar.gz)",
                       value=sources[0] if sources else "", key="dataset_source",
                       help="Your own dataset works too: train/<class>/*.jpg and test/<class>/*.jpg.")
data = None
if source:
    try:
        data = ui.dataset(source)
    except CifarError as exc:
        ui.fail(exc)
if data is None:
    data = ui.sample_dataset()
    if data is None:
        st.stop()
    st.info("Showing the shipped 100-image sample. Set CIFAR10_SOURCE or enter a source above for the full dataset.")

summary = data.summary()
left, middle, right, far = st.columns(4)
left.metric("Classes", len(data.class_names))
middle.metric("Train images", f"{summary['n_train']:,}")
right.metric("Test images", f"{summary['n_test']:,}")
far.metric("Image size", f"{data.image_size}×{data.image_size}")
loaded = (f" — loaded in {data.load_seconds:.1f} s{' from the cache' if data.from_cache else ''}"
          if data.load_seconds else "")
st.caption(f"Source: {data.description}{loaded}")

per_class = st.slider("Samples per class", 4, 16, 10, key="dataset_per_class")
seed = st.number_input("Shuffle seed", 0, 10_000, 0, key="dataset_seed")
rng = np.random.default_rng(int(seed))
for index, name in enumerate(data.class_names):
    members = np.flatnonzero(data.y_train == index)
    if not len(members):
        continue
    label, row = st.columns([1, 7], vertical_alignment="center")
    label.markdown(f"**{name}**  \n{len(members):,} train")
    row.image(mosaic(data.x_train[rng.choice(members, min(per_class, len(members)), replace=False)],
                        columns=per_class, scale=2))

balance = pd.DataFrame({"class": list(data.class_names) * 2,
                        "split": ["train"] * len(data.class_names) + ["test"] * len(data.class_names),
                        "images": summary["train_counts"] + summary["test_counts"]})
st.markdown("**Class balance**")  # Vega-Lite like the home page: no second chart library to load here
st.bar_chart(balance, x="class", y="images", color="split", stack=False, height=320)
