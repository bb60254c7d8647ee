"""Classify: drop photos (or use the camera); each chosen model gives its top 3, what it saw, and where it looked."""
import time

import numpy as np
import streamlit as st

from cifar_core import ui
from cifar_core.errors import CifarError
from cifar_core.imaging import ACCEPTED_FORMATS, decode_image, upscale

ui.page("Classify your photos", "📷")

chosen = ui.pick_runs("Models", key="classify_runs", multiple=True, default_count=2, with_model=True)
uploads = st.file_uploader("Drop photos here", type=ui.UPLOAD_TYPES,
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
for record in chosen:  # on arrival, not when the first photo is waiting: what each answer will need
    ui.analysis(record["path"], "calibration")
    ui.analysis(record["path"], "neighbours.npz")
if not files or not chosen:
    st.stop()

from cifar_core.evaluation import top_k  # noqa: E402
from cifar_core.explain import overlay  # noqa: E402

started = time.perf_counter()
photos = []
for name, data in ui.photos_to_read(files):
    try:
        photos.append((name, decode_image(data, name)))
    except CifarError as exc:
        st.error(str(exc))
if not photos:
    st.stop()

readings = []  # each model reads every photo in one call
for record in chosen:
    try:
        readings.append((record, ui.read_photos(record["path"], [image for _, image in photos])))
    except CifarError as exc:
        st.error(f"{record['run']}: {exc}")

for position, (name, image) in enumerate(photos):
    st.divider()
    st.markdown(f"#### {name}  \n{image.shape[1]}×{image.shape[0]} pixels")
    columns = st.columns([1] + [2] * len(readings))
    columns[0].image(image, caption="your photo", width="stretch")
    for column, (record, reading) in zip(columns[1:], readings, strict=True):
        with column:
            probabilities, calibrated = ui.calibrated(record["path"], reading.probabilities[position:position + 1])
            top = top_k(probabilities, reading.class_names, 3)[0]
            st.markdown(f"**{record['model']}** · {record['run']}")
            for label, probability in top:  # native bars: no chart library to load on a stage laptop
                st.progress(float(probability), text=f"{label} · {probability:.1%}")
            st.markdown(f"Prediction: **{top[0][0]}** ({top[0][1]:.1%}{', calibrated' if calibrated else ''})")
            if top[0][1] < ui.LOW_CONFIDENCE:
                st.warning(f"Not confident: the top class has only {top[0][1]:.0%}"
                           f"{' (calibrated)' if calibrated else ''}. "
                           f"This model knows only: {', '.join(reading.class_names)}.")
            seen = upscale(reading.views[position])
            if reading.heatmaps is None:
                st.image(seen, caption=f"what it sees ({reading.views[position].shape[0]} px)")
            else:  # one image, not two: each image is a separate fetch for the browser
                gap = np.full((seen.shape[0], 8, 3), 255, np.uint8)
                st.image(np.hstack([seen, gap, overlay(seen, reading.heatmaps[position])]),
                         caption=f"what it sees ({reading.views[position].shape[0]} px) · where it looked (Grad-CAM)")
            ui.show_neighbours(record, reading, position)
    if len(readings) >= 2:
        ui.show_agreement(readings, position)
st.caption(f"{len(photos)} photo(s) read by {len(readings)} model(s) in {ui.elapsed(started)}")
