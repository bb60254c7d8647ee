"""Classify: drop photos (or use the camera); each chosen model gives its top 3, what it saw, and where it looked."""
import time

import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.errors import CifarError
from cifar_core.imaging import ACCEPTED_FORMATS, decode_image, upscale

ui.page("Classify your photos", "📷")

chosen = ui.pick_runs("Models", key="classify_runs", multiple=True, default_count=2, with_model=True)
uploads = st.file_uploader("Drop photos here", type=["jpg", "jpeg", "png", "gif", "bmp", "webp"],
                           accept_multiple_files=True, key="classify_uploads",
                           help=f"Accepted: {', '.join(sorted(ACCEPTED_FORMATS))}. Checked by content, not name.")
files = [(upload.name, upload.getvalue()) for upload in uploads or []]
if st.toggle("Use the camera", key="classify_camera"):
    shot = st.camera_input("Take a photo", key="classify_shot")
    if shot is not None:
        files.append(("camera.jpg", shot.getvalue()))
if not files:
    sample = ui.sample_dataset()
    if sample is not None and st.button("Try three test images from the shipped sample", key="classify_sample"):
        st.session_state.classify_examples = ui.example_indices(len(sample.y_test))
    examples = st.session_state.get("classify_examples", [])
    if sample is not None and examples:
        import io

        from PIL import Image

        for index in examples:
            buffer = io.BytesIO()
            Image.fromarray(sample.x_test[index]).save(buffer, format="PNG")
            files.append((f"sample-{index} (a {sample.class_names[sample.y_test[index]]}).png", buffer.getvalue()))
if not files or not chosen:
    st.stop()

from cifar_core.evaluation import top_k  # noqa: E402
from cifar_core.explain import explain_image, overlay  # noqa: E402
from cifar_core.inference import classify_arrays, model_view  # noqa: E402

loaded = []
for record in chosen:
    try:
        loaded.append((record, ui.loaded_run(record["path"])))
    except CifarError as exc:
        st.error(f"{record['run']}: {exc}")

for position, (name, data) in enumerate(files):
    st.divider()
    started = time.perf_counter()
    try:
        image = decode_image(data, name)
    except CifarError as exc:
        st.error(str(exc))
        continue
    st.markdown(f"#### {name}  \n{image.shape[1]}×{image.shape[0]} pixels")
    columns = st.columns([1] + [2] * len(loaded))
    columns[0].image(image, caption="your photo", width="stretch")
    for column, (record, run) in zip(columns[1:], loaded, strict=True):
        with column:
            probs = classify_arrays(run, [image])
            top = top_k(probs, run.class_names, 3)[0]
            seen = model_view(run, image)
            st.markdown(f"**{record['model']}** · {record['run']}")
            chart = pd.DataFrame(top, columns=["class", "probability"])
            figure = px.bar(chart, x="probability", y="class", orientation="h", range_x=[0, 1], height=160,
                            text=chart["probability"].map("{:.1%}".format))
            figure.update_layout(margin=dict(t=0, b=0, l=0, r=0), yaxis=dict(autorange="reversed", title=None))
            st.plotly_chart(figure, width="stretch", key=f"classify_{position}_{record['run']}")
            st.markdown(f"Prediction: **{top[0][0]}** ({top[0][1]:.1%})")
            if top[0][1] < ui.LOW_CONFIDENCE:
                st.warning(f"Not confident: the top class has only {top[0][1]:.0%}. "
                           f"This model knows only: {', '.join(run.class_names)}.")
            view, cam = st.columns(2)
            view.image(upscale(seen), caption=f"what it sees ({seen.shape[0]}×{seen.shape[1]})")
            heat = explain_image(run, image)
            if heat is not None:
                cam.image(overlay(upscale(seen), heat), caption="where it looked (Grad-CAM)")
    st.caption(f"classified by {len(loaded)} model(s) in {ui.elapsed(started)}")
