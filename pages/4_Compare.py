"""Compare runs: overlaid curves, metrics and configs side by side, and which images each gets right."""
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.imaging import upscale

ui.page("Compare runs", "📈")

chosen = ui.pick_runs("Runs", key="compare_runs", multiple=True, default_count=3)
if not chosen:
    st.stop()

CURVES = {"accuracy": ("val_accuracy", "accuracy"), "loss": ("val_loss", "loss")}
metric = st.radio("Curve", list(CURVES), horizontal=True, key="compare_metric",
                  help="Each run draws what it measured: validation where it kept a validation split, "
                       "training where it trained on every image. The legend says which.")
axis = st.radio("Against", ["epoch", "minutes"], horizontal=True, key="compare_axis")
curves, silent = [], []
for record in chosen:
    history = ui.history_frame(record["path"])
    column = next((c for c in CURVES[metric] if not history.empty and history[c].notna().any()), None)
    if column is None:
        silent.append(record["run"])
        continue
    history["minutes"] = history["seconds"].fillna(0).cumsum() / 60
    history["line"] = f"{record['run']} ({'validation' if column.startswith('val_') else 'training'} {metric})"
    curves.append(history[["epoch", "minutes", column, "line"]].rename(columns={column: metric}).dropna())
if curves:
    figure = px.line(pd.concat(curves, ignore_index=True), x=axis, y=metric, color="line", markers=True, height=380,
                     labels={"line": "", "minutes": "training minutes"})
    if metric == "accuracy":
        figure.update_layout(yaxis_tickformat=".0%")
    figure.update_layout(legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(figure, width="stretch")
if silent:
    st.caption(f"No per-epoch {metric} recorded for: {', '.join(silent)} (no history.csv rows).")

st.subheader("Metrics")


def _percent(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "—"


def _number(value, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "—"


rows = {}
for record in chosen:
    metrics = ui.run_json(record["path"], "metrics.json") or {}
    rows[record["run"]] = {
        "model": record["model"], "transfer learning": "yes" if record["transfer"] else "no",
        "test accuracy": _percent(metrics.get("test_accuracy")),
        "with flip TTA": _percent(metrics.get("test_accuracy_tta")),
        "head only (frozen features)": _percent(metrics.get("test_accuracy_head")),
        "test loss (cross-entropy)": _number(metrics.get("test_loss"), 4),
        "training time (min)": _number((metrics.get("train_seconds") or 0) / 60 or None, 1),
        "training speed (images/s)": _number(metrics.get("train_images_per_second")),
        "parameters": _number(metrics.get("n_params")),
        "input size (px)": _number(metrics.get("input_size")),
        "data": metrics.get("data") or "—", "machine": record.get("cpu") or "—",
    }
st.dataframe(pd.DataFrame(rows), width="stretch")

if len(chosen) >= 2:
    st.subheader("As one classifier")
    try:
        together = ui.ensemble([r["path"] for r in chosen])
    except Exception as exc:  # noqa: BLE001 - a run measured elsewhere or a damaged file is said, not raised
        st.info(f"These runs cannot be averaged: {exc}")
    else:
        tta = "test_accuracy_tta" in together
        agreement = together["agreement_tta" if tta else "agreement"]
        best = max(m["test_accuracy_tta" if tta else "test_accuracy"] for m in together["members"])
        ensemble_accuracy = together["test_accuracy_tta" if tta else "test_accuracy"]
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Averaged" + (" (flip TTA)" if tta else ""), _percent(ensemble_accuracy),
                  delta=f"{(ensemble_accuracy - best) * 100:+.2f} points over the best run")
        c2.metric("All agree on", f"{agreement['unanimous_fraction']:.1%}")
        c3.metric("Right where all agree", _percent(agreement["accuracy_unanimous"]))
        c4.metric("Right where they split", _percent(agreement["accuracy_split"]))
        st.caption("The mean of the runs' saved test probabilities (`python -m cifar_core ensemble RUN RUN ...`): "
                   "no extra training, the sum of their inference times. Where the runs disagree, a prediction "
                   "deserves less trust.")

reports = [(r, ui.analysis(r["path"], "calibration")) for r in chosen[:2]]
if any(report is not None for _, report in reports):
    from cifar_core.charts import reliability_figure

    st.subheader("How far to trust their probabilities")
    for column, (record, report) in zip(st.columns(2), reports, strict=False):
        if report is not None:
            column.plotly_chart(reliability_figure(report, record["run"]), width="stretch",
                                key=f"compare_calibration_{record['run']}")
        else:
            column.caption(f"{record['run']}: no calibration analysis (see the Calibration page).")

st.subheader("Configs (differences first)")
configs = pd.DataFrame({r["run"]: ui.run_json(r["path"], "config.json") or {} for r in chosen}).astype(str)
differs = configs.nunique(axis=1) > 1
st.dataframe(pd.concat([configs[differs], configs[~differs]]), width="stretch")

st.subheader("Who gets which test images right")
if len(chosen) < 2:
    st.info("Pick two runs to compare their predictions.")
    st.stop()
left, right = st.columns(2)
first = left.selectbox("Run A", [r["run"] for r in chosen], index=0, key="compare_a")
second = right.selectbox("Run B", [r["run"] for r in chosen], index=1, key="compare_b")
by_name = {r["run"]: r for r in chosen}
try:
    a, b = (ui.run_predictions(by_name[name]["path"]) for name in (first, second))
except Exception as exc:  # noqa: BLE001 - a missing or corrupt predictions file is shown, not raised
    ui.fail(exc)
    st.stop()
if len(a["y_true"]) != len(b["y_true"]) or not np.array_equal(a["y_true"], b["y_true"]):
    st.warning("These runs were measured on different test sets; their predictions cannot be paired.")
    st.stop()
truth = a["y_true"].astype(int)
right_a = a["probs"].argmax(1) == truth
right_b = b["probs"].argmax(1) == truth
class_names = ui.class_names(by_name[first]["path"], a["probs"].shape[1])
counts = pd.DataFrame({"class": class_names,
                       f"only {first}": np.bincount(truth[right_a & ~right_b], minlength=len(class_names)),
                       f"only {second}": np.bincount(truth[right_b & ~right_a], minlength=len(class_names))})
c1, c2, c3 = st.columns(3)
c1.metric("Only A right", int((right_a & ~right_b).sum()))
c2.metric("Only B right", int((right_b & ~right_a).sum()))
c3.metric("Both wrong", int((~right_a & ~right_b).sum()))
st.plotly_chart(px.bar(counts, x="class", y=counts.columns[1:], barmode="group", height=320), width="stretch")

data = ui.default_dataset()
if data is not None and data.source != "sample" and len(data.y_test) == len(truth):
    only_b = np.flatnonzero(right_b & ~right_a)[:24]
    if len(only_b):
        st.markdown(f"**Test images B ({second}) gets right and A gets wrong** (first {len(only_b)})")
        predicted_a = a["probs"].argmax(1)
        st.image([upscale(image, 96) for image in data.x_test[only_b]], width=96,
                 caption=[f"{class_names[truth[i]]}; A said {class_names[predicted_a[i]]}" for i in only_b])
else:
    st.caption("Point CIFAR10_SOURCE at the dataset to see the images themselves.")
