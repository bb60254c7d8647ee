"""Label issues: the test images whose given label a model least believes (cleanlab), for a person
to judge; accuracy with and without the images marked as wrongly labelled."""
import numpy as np
import pandas as pd
import streamlit as st

from cifar_core import ui
from cifar_core.analysis import labels as label_marks
from cifar_core.errors import CifarError
from cifar_core.imaging import upscale

ui.page("Label issues", "🏷️")
st.caption("CIFAR-10's test set has known wrong labels. cleanlab ranks the test images by how little the model "
           "believes their given label (its out-of-sample test probabilities). Mark the ones you judge wrong: the "
           "marks are kept in artifacts/label_marks.json, and accuracy is shown with and without them.")

record = ui.pick_runs("Run", key="labels_run")
if record is None:
    st.stop()
issues = ui.analysis(record["path"], "labels")
if issues is None:
    ui.missing_analysis(record, "labels")
    st.stop()
try:
    marked = label_marks.read_marks()
except CifarError as exc:
    ui.fail(exc)
    marked = set()
try:
    predictions = ui.run_predictions(record["path"])
except CifarError as exc:
    ui.fail(exc)
    st.stop()
names = ui.class_names(record["path"], predictions["probs"].shape[1])
truth, guessed = predictions["y_true"].astype(int), predictions["probs"].argmax(1)
left, middle, right = st.columns(3)
left.metric("Flagged by cleanlab", f"{sum(bool(i.get('flagged')) for i in issues):,}")
middle.metric("Accuracy on all test images", f"{np.mean(truth == guessed):.2%}")
right.metric(f"Without the {len(marked):,} marked", f"{label_marks.accuracy_without(truth, guessed, marked):.2%}")

count = st.slider("Suspects shown", 8, 64, 24, step=8, key="labels_count")
shown = issues[:count]
data = ui.default_dataset()
have_images = data is not None and data.source != "sample" and len(data.y_test) == len(truth)
if not have_images:
    st.caption("Point CIFAR10_SOURCE at the dataset to see the images themselves.")


def save_mark(index: int, key: str) -> None:
    """This visitor's one change, applied to the marks as they are now (others may be marking too)."""
    try:
        label_marks.set_mark(index, st.session_state[key])
    except (CifarError, OSError) as exc:
        st.session_state.labels_not_saved = f"Could not save the mark: {exc}"


if "labels_not_saved" in st.session_state:
    st.error(st.session_state.pop("labels_not_saved"))
columns = st.columns(8)
for position, issue in enumerate(shown):
    with columns[position % 8]:
        if have_images:
            st.image(upscale(data.x_test[issue["index"]], 96), width=96)
        st.caption(f"#{issue['index']}: labelled **{names[issue['given']]}**, model says "
                   f"**{names[issue['suggested']]}** (quality {issue['quality']:.2f}"
                   f"{', flagged' if issue.get('flagged') else ''})")
        key = f"labels_mark_{issue['index']}"
        st.session_state[key] = issue["index"] in marked  # the file's marks, whoever made them
        st.checkbox("label is wrong", key=key, on_change=save_mark, args=(issue["index"], key))
st.dataframe(pd.DataFrame([{**i, "given": names[i["given"]], "suggested": names[i["suggested"]]} for i in shown]),
             hide_index=True, width="stretch",
             column_config={"quality": st.column_config.NumberColumn("label quality", format="%.3f")})
