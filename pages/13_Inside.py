"""Inside the network: for one photo, what each convolution stage responds to, the first layer's
filters, and two opinions on where the model looked (Grad-CAM and occlusion)."""
import numpy as np
import streamlit as st

from cifar_core import ui
from cifar_core.errors import CifarError
from cifar_core.explain import overlay
from cifar_core.imaging import mosaic, upscale

ui.page("Inside the network", "🔬")
record = ui.pick_runs("Model", key="inside_run", with_model=True)
if record is None:
    st.stop()
photo = ui.dropped_photo("inside_upload", sample_index=ui.INSIDE_SAMPLE_INDEX)
if photo is None:
    st.stop()
try:
    with st.spinner("Looking inside…"):
        seen = ui.photo_worker().inspect(record["path"], photo)
except CifarError as exc:
    ui.fail(exc)
    st.stop()

st.markdown(f"**{record['model']}** says **{seen.top_class}** ({seen.probability:.1%}).")
view = upscale(seen.view, 192)
left, middle, right = st.columns(3)
left.image(view, caption=f"what it sees ({seen.view.shape[0]} px)")
if seen.gradcam is not None:
    middle.image(overlay(view, seen.gradcam), caption="Grad-CAM: gradients of the top class at the last convolution")
right.image(overlay(view, seen.occlusion), caption="Occlusion: how much a grey patch there lowers the top class "
                                                   "(no gradients: a second opinion)")

st.subheader("What each stage responds to")
st.caption("The strongest channels of convolutions spread from the first layer to the last: early ones respond to "
           "edges and colours, late ones to parts of objects, at coarser resolution.")
for name, maps in seen.stages:
    tiles = (np.stack([maps] * 3, axis=-1) * 255).astype(np.uint8)
    st.image(mosaic(tiles, columns=len(tiles), scale=max(1, 64 // maps.shape[1])), caption=f"{name}: "
             f"{maps.shape[1]}×{maps.shape[2]}")

st.subheader("The first layer's filters")
tiles = (seen.filters * 255).astype(np.uint8)
st.image(mosaic(tiles, columns=min(16, len(tiles)), scale=max(1, 24 // max(tiles.shape[1], 1))),
         caption=f"{len(tiles)} filters of {tiles.shape[1]}×{tiles.shape[2]} pixels (RGB, each scaled to its range)")
