"""Deploy: export a run's model (SavedModel, LiteRT, ONNX; INT8), checked on the test split with the
runtime that will run it; download the file and its manifest, copy the three lines that use it."""
import io
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from cifar_core import jobs, runs, ui
from cifar_core.errors import CifarError
from cifar_core.export import EXPORT_DIR, FILE_NAMES, MANIFEST, read_manifest

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
    exports = read_manifest(folder)
except CifarError as exc:
    ui.fail(exc)
    exports = {}
if not exports:
    st.info(f"{record['run']} has no exports yet. Export one above, or with "
            f"`python -m cifar_core export {run_dir} --format onnx`.")
    st.stop()


def row(name: str, entry: dict) -> dict:
    quantization = entry.get("quantization")
    return {"export": name, "file": entry.get("file"), "size (MB)": (entry.get("size_bytes") or 0) / 1e6,
            "INT8 setting": quantization.get("setting") if isinstance(quantization, dict) else None,
            "accuracy": entry.get("accuracy"), "Keras model": entry.get("keras_accuracy"),
            "top-1 agreement": entry.get("agreement"), "passed": "yes" if entry.get("within_tolerance") else "NO",
            "batch 1 p50 (ms)": entry.get("latency_ms_p50"), "batch 1 p95 (ms)": entry.get("latency_ms_p95"),
            "batch 64 (images/s)": entry.get("throughput_batch64"), "runtime": entry.get("runtime")}


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


def download_bytes(path: Path) -> bytes:
    """A file's bytes; a SavedModel folder as a zip of its files."""
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, str(Path(path.name) / file.relative_to(path)))
    return buffer.getvalue()


chosen = st.selectbox("Download", sorted(exports), key="deploy_download")
entry = exports[chosen]
target = folder / str(entry.get("file", ""))
classes = ", ".join(entry.get("class_names") or [])
if target.parent != folder or not target.exists():
    st.warning(f"{entry.get('file')} is listed in {MANIFEST} but missing from {folder}; export it again.")
else:
    left, right = st.columns(2)
    name = target.name + (".zip" if target.is_dir() else "")
    left.download_button(f"Download {name}", download_bytes(target), file_name=name, key="deploy_file")
    right.download_button(f"Download {MANIFEST}", (folder / MANIFEST).read_bytes(), file_name=MANIFEST,
                          key="deploy_manifest")
    st.markdown(f"**Use it** (raw 0-255 RGB pixels at 32x32 in; every normalisation and any resize is inside "
                f"the file). Output order: {classes}.")
    st.code(SNIPPETS[entry.get("format", "onnx")].format(file=FILE_NAMES.get(entry.get("format"), target.name)
                                                         if not entry.get("quantize") else target.name),
            language="python")
