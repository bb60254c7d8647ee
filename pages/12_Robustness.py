"""Robustness lab: accuracy as photos get noisier, blurrier, darker or attacked; and a photo of yours,
corrupted live, with each model's top 3."""
import pandas as pd
import plotly.express as px
import streamlit as st

from cifar_core import ui
from cifar_core.analysis import analysis_path
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


@st.cache_resource(show_spinner=False, max_entries=8)
def robustness_figures(labels: tuple[str, ...], stamps: tuple[float, ...], _reports: list[dict]):
    """The summary table and both figures for these runs' reports, built once per choice of runs and
    file versions (plotly express builds an eight-facet figure slowly: keep it between visits)."""
    curves, attacks, summary = [], [], {}
    for label, report in zip(labels, _reports, strict=True):
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
    curves_figure = px.line(pd.DataFrame(curves), x="severity", y="accuracy", color="model", facet_col="corruption",
                            facet_col_wrap=4, markers=True, height=520)
    curves_figure.update_layout(yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.15))
    curves_figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    attacks_figure = px.line(pd.DataFrame(attacks), x="epsilon (/255)", y="accuracy", color="model", markers=True,
                             height=300, title="FGSM: one gradient-sign step of epsilon")
    attacks_figure.update_layout(yaxis_tickformat=".0%")
    return pd.DataFrame(summary), curves_figure, attacks_figure


found = []
for record in chosen:
    report = ui.analysis(record["path"], "robustness")
    if report is None:
        ui.missing_analysis(record, "robustness")
        continue
    found.append((f"{record['model']} · {record['run']}", report,
                  analysis_path(record["path"], "robustness").stat().st_mtime))
if found:
    summary, curves_figure, attacks_figure = robustness_figures(
        tuple(label for label, _, _ in found), tuple(stamp for _, _, stamp in found), [r for _, r, _ in found])
    st.dataframe(summary, width="stretch")
    st.plotly_chart(curves_figure, width="stretch", key="robustness_curves")
    st.plotly_chart(attacks_figure, width="stretch", key="robustness_fgsm")

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
