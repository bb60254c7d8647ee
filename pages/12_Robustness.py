"""Robustness lab: accuracy as photos get noisier, blurrier, darker or attacked; and a photo of yours,
corrupted live, with each model's top 3."""
import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.analysis.corruptions import CORRUPTIONS, corrupt
from cifar_core.errors import CifarError
from cifar_core.evaluation import top_k
from cifar_core.imaging import resize_image, upscale

ui.page("Robustness lab", "🛡️")
st.caption("CIFAR-10-C-style corruptions (Hendrycks & Dietterich, 2019, their 32x32 parameters), 5 severities each, "
           "and FGSM adversarial examples, on the same seeded 2,000 test images for every model.")

chosen = ui.pick_runs("Models", key="robustness_runs", multiple=True, default_count=2, with_model=True)
if not chosen:
    st.stop()
curves, attacks, summary = [], [], {}
for record in chosen:
    report = ui.analysis(record["path"], "robustness")
    if not isinstance(report, dict) or "corruptions" not in report:
        ui.missing_analysis(record, "robustness")
        continue
    label = f"{record['model']} · {record['run']}"
    for name, accuracies in report["corruptions"].items():
        for severity, accuracy in enumerate([report["clean_accuracy"], *accuracies]):
            curves.append({"model": label, "corruption": name.replace("_", " "), "severity": severity,
                           "accuracy": accuracy})
    attacks += [{"model": label, "epsilon (/255)": row["epsilon"] * 255, "accuracy": row["accuracy"]}
                for row in report["fgsm"]]
    summary[label] = {"clean": f"{report['clean_accuracy']:.1%}",
                      "mean over corruptions": f"{report['mean_corruption_accuracy']:.1%}",
                      "FGSM 8/255": f"{report['fgsm'][-1]['accuracy']:.1%}",
                      "subset": f"{report['subset_size']:,} test images (seed {report['subset_seed']})"}
if curves:
    st.dataframe(pd.DataFrame(summary), width="stretch")
    figure = px.line(pd.DataFrame(curves), x="severity", y="accuracy", color="model", facet_col="corruption",
                     facet_col_wrap=4, markers=True, height=520)
    figure.update_layout(yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.15))
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    st.plotly_chart(figure, width="stretch", key="robustness_curves")
    figure = px.line(pd.DataFrame(attacks), x="epsilon (/255)", y="accuracy", color="model", markers=True,
                     height=300, title="FGSM: one gradient-sign step of epsilon")
    figure.update_layout(yaxis_tickformat=".0%")
    st.plotly_chart(figure, width="stretch", key="robustness_fgsm")

st.subheader("Your photo, corrupted live")
photo = ui.dropped_photo("robustness_upload")
if photo is None:
    st.stop()
left, right = st.columns(2)
corruption = left.selectbox("Corruption", CORRUPTIONS, key="robustness_corruption",
                            format_func=lambda n: n.replace("_", " "))
severity = right.slider("Severity", 0, 5, 3, key="robustness_severity")
small = corrupt(resize_image(photo, 32)[None], corruption, severity)[0]  # at the models' 32 px, as measured
columns = st.columns([1] + [1] * len(chosen))
columns[0].image(upscale(small, 192), caption=f"{corruption.replace('_', ' ')}, severity {severity}")
for column, record in zip(columns[1:], chosen, strict=True):
    with column:
        try:
            reading = ui.read_photos(record["path"], [small])
        except CifarError as exc:
            ui.fail(exc)
            continue
        st.markdown(f"**{record['model']}**")
        for name, probability in top_k(reading.probabilities, reading.class_names, 3)[0]:
            st.progress(float(probability), text=f"{name} · {probability:.1%}")
