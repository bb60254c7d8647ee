"""Evaluate: confusion matrix, misclassified images per cell, per-class precision/recall/F1."""
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import runs, ui
from cifar_core.imaging import upscale

ui.page("Evaluate a run", "🧮")

record = ui.pick_runs("Run", key="eval_run")
if record is None:
    st.stop()
metrics = ui.run_json(record["path"], "metrics.json") or {}
names = metrics.get("class_names") or []
matrix = np.array(metrics.get("confusion_matrix") or [])
if not names or matrix.shape != (len(names), len(names)):
    st.error("This run's metrics.json has no usable confusion matrix.")
    st.stop()

left, middle, right = st.columns(3)
left.metric("Test accuracy", f"{metrics['test_accuracy']:.2%}")
if metrics.get("test_accuracy_tta") is not None:
    middle.metric("With flip TTA", f"{metrics['test_accuracy_tta']:.2%}")
right.metric("Test images", f"{int(matrix.sum()):,}")
st.caption(f"Measured on {metrics.get('data', '?')}")

figure = px.imshow(matrix, x=names, y=names, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                   labels=dict(x="predicted", y="true", color="images"), height=560)
figure.update_layout(margin=dict(t=10))
event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode="points", key="eval_matrix")

off_diagonal = [(matrix[i, j], i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
worst = max(off_diagonal)[1:] if off_diagonal else (0, 0)
points = (event or {}).get("selection", {}).get("points", []) if event else []
if points:
    worst = (names.index(points[0]["y"]), names.index(points[0]["x"]))
c1, c2 = st.columns(2)
true_class = c1.selectbox("True class", names, index=worst[0], key=f"eval_true_{worst}")
predicted = c2.selectbox("Predicted as", names, index=worst[1], key=f"eval_pred_{worst}")
t, p = names.index(true_class), names.index(predicted)
st.markdown(f"**{matrix[t, p]}** test images of *{true_class}* were classified as *{predicted}*.")

try:
    predictions = ui.run_predictions(record["path"])
except Exception as exc:  # noqa: BLE001
    ui.fail(exc)
    predictions = None
if predictions is not None and predictions["probs"].shape[1] != len(names):
    st.warning(f"{record['run']}: {runs.PREDICTIONS_FILE} holds {predictions['probs'].shape[1]} classes but "
               f"metrics.json names {len(names)}; `python -m cifar_core evaluate` measures both again")
    predictions = None
data = ui.default_dataset()
if predictions is not None:
    truth = predictions["y_true"].astype(int)
    guessed = predictions["probs"].argmax(1)
    cell = np.flatnonzero((truth == t) & (guessed == p))
    confidence = predictions["probs"][cell, p].astype(float)
    cell = cell[np.argsort(-confidence)][:30]
    if data is not None and data.source != "sample" and len(data.y_test) == len(truth):
        if len(cell):
            st.caption("Most confident mistakes first")
            st.image([upscale(image, 96) for image in data.x_test[cell]], width=96,
                     caption=[f"{true_class} → {predicted} ({c:.0%})" for c in np.sort(confidence)[::-1][:len(cell)]])
    else:
        st.caption("Point CIFAR10_SOURCE at the dataset to see these images; their test indices: "
                   + ", ".join(map(str, cell[:30])))

epochs_saved = ui.run_epoch_predictions(record["path"])
classes_held = 0 if epochs_saved is None else 1 + max(int(epochs_saved[key].max(initial=-1))
                                                       for key in ("y_true", "predicted"))
if classes_held > len(names):
    st.warning(f"{record['run']}: {runs.EPOCH_PREDICTIONS_FILE} holds classes up to {classes_held - 1} but "
               f"metrics.json names {len(names)}; the epoch-by-epoch view is left out")
elif epochs_saved is not None and len(epochs_saved["epochs"]):
    from cifar_core.evaluation import confusion_matrix

    st.subheader("How the mistakes changed, epoch by epoch (validation split)")
    epoch_numbers = [int(e) for e in epochs_saved["epochs"]]
    epoch = st.select_slider("Epoch", epoch_numbers, value=epoch_numbers[-1], key="eval_epoch")
    guessed_then = epochs_saved["predicted"][epoch_numbers.index(epoch)]
    truth_val = epochs_saved["y_true"]
    scrubbed = confusion_matrix(truth_val, guessed_then, len(names))
    st.caption(f"Epoch {epoch}: validation accuracy {np.mean(guessed_then == truth_val):.1%} "
               f"on {len(truth_val):,} held-out training images.")
    st.plotly_chart(px.imshow(scrubbed, x=names, y=names, text_auto=True, color_continuous_scale="Blues",
                              aspect="auto", labels=dict(x="predicted", y="true", color="images"), height=480),
                    width="stretch", key="eval_epoch_matrix")
elif epochs_saved is None:
    st.caption("This run kept no per-epoch validation predictions (runs trained before they were saved, "
               "or without a validation split).")

st.subheader("Per-class precision, recall and F1")
if not metrics.get("per_class"):
    st.info("This run's metrics.json has no per-class report; `python -m cifar_core evaluate` re-measures it.")
    st.stop()
report = pd.DataFrame(metrics["per_class"]).T.reset_index(names="class")
long = report.melt(id_vars="class", value_vars=["precision", "recall", "f1"], var_name="metric")
st.plotly_chart(px.bar(long, x="class", y="value", color="metric", barmode="group", range_y=[0, 1], height=340),
                width="stretch")
st.dataframe(report, hide_index=True, width="stretch",
             column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1")})
