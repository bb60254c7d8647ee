"""Deploy: export a run's model (SavedModel, LiteRT, ONNX; INT8), checked on the test split with the
runtime that will run it; download the file and its manifest, copy the three lines that use it."""
from pathlib import Path

import pandas as pd
import streamlit as st

from cifar_core import jobs, runs, ui
from cifar_core.errors import CifarError
from cifar_core.export import (
    EXPORT_DIR,
    MANIFEST,
    ExportError,
    ManifestRead,
    artefact_signature,
    checked_download,
    read_manifest_entries,
)

ui.page("Deploy", "📦")
st.caption("Take a model out of the studio: a phone app (LiteRT), a web service or another language (ONNX), "
           "TensorFlow Serving (SavedModel). Every export is read back by its own runtime on the 10,000 test "
           "images before it is listed: accuracy within 0.1 point of the Keras model (1 point for INT8).")

record = ui.pick_runs("Run", key="deploy_run", with_model=True)
if record is None:
    st.stop()
run_dir = Path(record["path"])
FORMATS = {"LiteRT (.tflite, phones)": "tflite", "ONNX (.onnx, onnxruntime)": "onnx",
           "SavedModel (TensorFlow)": "saved_model"}
left, middle, right = st.columns([3, 2, 2])
fmt = FORMATS[left.radio("Format", list(FORMATS), key="deploy_format")]
int8 = middle.checkbox("INT8 (post-training, calibrated on training images)", key="deploy_int8",
                       disabled=fmt == "saved_model")
if right.button("Export", type="primary", key="deploy_start"):
    if runs.writer_alive(run_dir):
        st.warning(f"{record['run']} is being written by another job; export it when that job ends.")
    else:
        try:
            job = jobs.launch_export(run_dir, fmt, "int8" if int8 and fmt != "saved_model" else None)
            st.success(f"Started job {job.id}: exporting and checking on the test split (a minute or two); "
                       "its progress is in the Train page's jobs table.")
        except CifarError as exc:
            ui.fail(exc)

folder = run_dir / EXPORT_DIR
try:
    manifest = read_manifest_entries(folder)
except CifarError as exc:
    ui.fail(exc)
    manifest = ManifestRead({}, [], b"")
exports = manifest.entries
for line in manifest.left_out:
    st.warning(line)
if not exports:
    st.info(f"{record['run']} has no exports yet. Export one above, or with "
            f"`python -m cifar_core export {run_dir} --format onnx`.")
    st.stop()


def row(name: str, entry: dict) -> dict:
    """A table row of a sound manifest entry (read_manifest_entries checked each field)."""
    return {"export": name, "file": entry["file"], "size (MB)": entry["size_bytes"] / 1e6,
            "INT8 setting": entry.get("quantization", {}).get("setting"),
            "accuracy": entry["accuracy"], "Keras model": entry["keras_accuracy"],
            "top-1 agreement": entry["agreement"], "passed": "yes" if entry["within_tolerance"] else "NO",
            "batch 1 p50 (ms)": entry["latency_ms_p50"], "batch 1 p95 (ms)": entry["latency_ms_p95"],
            "batch 64 (images/s)": entry["throughput_batch64"], "runtime": entry["runtime"]}


table = pd.DataFrame([row(name, entry) for name, entry in sorted(exports.items())])
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "size (MB)": st.column_config.NumberColumn(format="%.2f"),
    **{name: st.column_config.NumberColumn(format="percent") for name in ("accuracy", "Keras model",
                                                                          "top-1 agreement")},
    "batch 64 (images/s)": st.column_config.NumberColumn(format="localized")})
machines = sorted({entry.get("machine") for entry in exports.values() if entry.get("machine")})
st.caption(f"Latency and throughput measured on {'; '.join(machines) or 'the exporting machine'} when each "
           "file was made.")

SNIPPETS = {
    "tflite": """from ai_edge_litert.interpreter import Interpreter
import numpy as np
from PIL import Image

model = Interpreter(model_path="{file}"); model.allocate_tensors()
pixels = np.asarray(Image.open("photo.jpg").convert("RGB").resize((32, 32)), np.float32)[None]
model.set_tensor(model.get_input_details()[0]["index"], pixels); model.invoke()
probabilities = model.get_tensor(model.get_output_details()[0]["index"])[0]""",
    "onnx": """import numpy as np, onnxruntime
from PIL import Image

session = onnxruntime.InferenceSession("{file}")
pixels = np.asarray(Image.open("photo.jpg").convert("RGB").resize((32, 32)), np.float32)[None]
probabilities = session.run(None, {{session.get_inputs()[0].name: pixels}})[0][0]""",
    "saved_model": """import numpy as np, tensorflow as tf
from PIL import Image

model = tf.saved_model.load("{file}")
pixels = np.asarray(Image.open("photo.jpg").convert("RGB").resize((32, 32)), np.float32)[None]
probabilities = model.serve(pixels).numpy()[0]""",
}


@st.cache_data(show_spinner=False, max_entries=4)
def checked_bytes(folder_name: str, entry: dict, signature: tuple) -> tuple[str, bytes]:
    """The checked artefact's download, read, hashed and zipped once per version of its files (a
    SavedModel is zipped anew only when one of them changes), not on every rerun of the page."""
    return checked_download(folder_name, entry)


chosen = st.selectbox("Download", sorted(exports), key="deploy_download")
entry = exports[chosen]
classes = ", ".join(entry["class_names"])
try:
    download_name, download = checked_bytes(str(folder), entry, artefact_signature(folder, entry["file"]))
except ExportError as exc:
    st.warning(str(exc))
else:
    left, right = st.columns(2)
    left.download_button(f"Download {download_name}", download, file_name=download_name, key="deploy_file")
    right.download_button(f"Download {MANIFEST}", manifest.raw, file_name=MANIFEST, key="deploy_manifest")
    st.markdown(f"**Use it** (raw 0-255 RGB pixels at 32x32 in; every normalisation and any resize is inside "
                f"the file). Output order: {classes}.")
    st.code(SNIPPETS[entry["format"]].format(file=entry["file"]), language="python")
