"""AppTests of the insight lab's pages and of what the Classify page gained, on analysed tiny runs."""
import numpy as np
import pytest
from helpers import ANALYSIS_DAMAGES as DAMAGES
from helpers import open_page, png_bytes

from cifar_core.errors import RunFolderError


def test_calibration_page_draws_each_runs_reliability_diagram(lab):
    app = open_page("pages/9_Calibration.py")
    assert len(app.get("plotly_chart")) == 2
    table = app.dataframe[0].value
    assert set(table.columns) == {"demo-tiny", "g3-tiny"}
    assert table.loc["ECE before → after"].str.fullmatch(r"\d+\.\d\d% → \d+\.\d\d%").all()
    assert any("fitted on the run's validation split" in c.value for c in app.caption)


def test_calibration_page_says_how_to_compute_a_missing_analysis(studio):
    app = open_page("pages/9_Calibration.py")
    assert any("cifar_core analyze" in i.value for i in app.info)


@pytest.fixture
def marks_file(monkeypatch, tmp_path):
    """The label marks kept in a file of the test's own."""
    from cifar_core.analysis import labels

    marks = tmp_path / "marks.json"
    monkeypatch.setattr(labels, "MARKS_FILE", marks)
    for function in (labels.read_marks, labels.write_marks, labels.set_mark):
        monkeypatch.setattr(function, "__defaults__", (marks,))
    return marks


def test_label_issues_page_marks_an_image_and_shows_accuracy_without_it(lab, marks_file):
    from cifar_core.analysis import labels

    marks = marks_file
    app = open_page("pages/10_Label_issues.py")
    boxes = app.checkbox
    assert boxes and not any(box.value for box in boxes)
    first = boxes[0].key
    boxes[0].check().run()
    assert not app.exception
    index = int(first.rsplit("_", 1)[1])
    assert labels.read_marks(marks) == {index}
    assert any(m.label == "Without the 1 marked" for m in app.metric)


def test_two_visitors_marking_at_once_keep_each_other_s_marks(lab, marks_file):
    # Each page wrote back its own view of every mark shown: a second visitor's tick erased the first's
    # mark (and an untick made elsewhere came back), because a checkbox keeps the state its page saw.
    from cifar_core.analysis import labels

    first, second = open_page("pages/10_Label_issues.py"), open_page("pages/10_Label_issues.py")
    index = [int(box.key.rsplit("_", 1)[1]) for box in first.checkbox]
    first.checkbox[0].check().run()
    second.checkbox[1].check().run()
    assert labels.read_marks(marks_file) == {index[0], index[1]}
    assert [box.value for box in second.checkbox[:2]] == [True, True]  # the other visitor's mark is shown
    second.checkbox[0].uncheck().run()
    first.checkbox[2].check().run()
    assert labels.read_marks(marks_file) == {index[1], index[2]}
    assert [box.value for box in first.checkbox[:3]] == [False, True, True]


def test_a_mark_never_overwrites_a_marks_file_it_cannot_read(lab, marks_file):
    from cifar_core.analysis import labels

    app = open_page("pages/10_Label_issues.py")
    marks_file.write_text("{half")
    app.checkbox[0].check().run()
    assert not app.exception
    assert marks_file.read_text() == "{half"  # the marks someone made are not replaced by one click
    assert any("marks.json" in e.value for e in app.error)
    with pytest.raises(RunFolderError):
        labels.set_mark(3, True, marks_file)


def test_embedding_page_maps_two_runs_in_one_webgl_figure(lab):
    import json

    app = open_page("pages/11_Embedding.py")
    [chart] = app.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert [trace["type"] for trace in spec["data"]] == ["scattergl", "scattergl"]
    assert {a["text"] for a in spec["layout"]["annotations"]} == {"demo · demo-tiny", "g3 · g3-tiny"}
    app.radio(key="embedding_colour").set_value("predicted class").run()
    app.toggle(key="embedding_all_points").set_value(True).run()
    assert not app.exception
    assert len(json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]["x"]["bdata"]) > 0


def test_robustness_page_draws_curves_and_corrupts_a_photo_live(lab):
    app = open_page("pages/12_Robustness.py")
    assert len(app.get("plotly_chart")) == 2 and "demo · demo-tiny" in app.dataframe[0].value.columns
    app.slider(key="robustness_severity").set_value(5).run()
    app.selectbox(key="robustness_corruption").set_value("contrast").run()
    assert not app.exception
    captions = " ".join(c for image in app.get("image") for c in (i.caption for i in image.proto.imgs))
    assert "contrast, severity 5" in captions
    assert len(app.get("progress")) == 6  # top 3 of each model


def test_classify_shows_calibrated_probabilities_and_nearest_training_images(lab):
    app = open_page("pages/6_Classify.py")
    app.button(key="classify_sample").click().run()
    assert not app.exception
    assert any("calibrated" in m.value for m in app.markdown if "Prediction:" in m.value)
    captions = " ".join(c for image in app.get("image") for c in (i.caption for i in image.proto.imgs))
    assert "looks like these training images" in captions or "nearest training images" in " ".join(
        c.value for c in app.caption)


def test_nearest_neighbours_come_from_the_photos_own_features(lab):
    from cifar_core import ui
    from cifar_core.analysis.embedding import nearest
    from cifar_core.data import load_dataset
    from cifar_core.explain import read_photos
    from cifar_core.inference import load_run_model

    run_dir = lab["runs"] / "g3-tiny"
    dataset = load_dataset(lab["data"])
    run = load_run_model(run_dir)
    reading = read_photos(run, [dataset.x_train[4]])
    index = ui._analysis(str(run_dir), "neighbours.npz", 0.0)
    found, _ = nearest(index, reading.features[0], 3)
    assert found[0][0] == 4  # a training image's nearest training image is itself
    assert png_bytes(np.zeros((2, 2, 3), np.uint8))  # helpers import kept honest


def test_occlusion_finds_the_region_the_class_depends_on():
    from cifar_core.explain import occlusion_map

    def predict(batch):  # the class's probability is the brightness of the bottom-right corner
        corner = batch[:, 24:, 24:].astype(np.float32).mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - corner, corner], axis=1)

    view = np.full((32, 32, 3), 255, np.uint8)
    heat = occlusion_map(predict, view, class_index=1)
    assert heat.shape == (7, 7) and heat.max() == 1.0
    assert np.unravel_index(heat.argmax(), heat.shape) == (6, 6) and heat[0, 0] == 0


def test_inspection_shows_stages_filters_and_both_heatmaps(shipped_runs):
    from cifar_core.explain import CHANNELS_SHOWN, inspect_photo
    from cifar_core.inference import load_run_model

    run = load_run_model(shipped_runs["runs"] / "g3-tiny")
    photo = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    seen = inspect_photo(run, photo)
    assert seen.top_class in run.class_names and 0 < seen.probability <= 1
    names = [name for name, _ in seen.stages]
    assert names[0] == "conv1" and len(names) == len(set(names)) >= 2
    assert all(maps.shape[0] == CHANNELS_SHOWN and 0 <= maps.min() and maps.max() <= 1 for _, maps in seen.stages)
    assert seen.filters.shape[1:] == (3, 3, 3) and seen.gradcam is not None and seen.occlusion.shape == (7, 7)


def test_inside_page_renders_for_the_sample_photo(lab):
    app = open_page("pages/13_Inside.py")
    assert not app.exception and any("says" in m.value for m in app.markdown)
    assert len(app.get("image")) >= 5


def test_compare_shows_two_runs_reliability_diagrams_side_by_side(lab):
    app = open_page("pages/4_Compare.py")
    titles = [chart.proto.spec for chart in app.get("plotly_chart")]
    assert sum('"text":"demo-tiny"' in t or '"text":"g3-tiny"' in t for t in titles) == 2


def test_a_missing_analysis_can_be_started_as_a_job(studio, monkeypatch):
    from cifar_core import jobs

    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda job, resume: spawned.append(job.id))  # the shared runs stay as they are
    app = open_page("pages/9_Calibration.py")
    [first, *_] = [b for b in app.button if b.key and b.key.startswith("analyze_calibration_")]
    first.click().run()
    assert not app.exception and any("Started job" in s.value for s in app.success)
    [job] = jobs.list_jobs(refresh=False)
    assert job.analyses == ("calibration",) and spawned == [job.id]


PAGES_READING = {"calibration": ("pages/9_Calibration.py", "pages/4_Compare.py", "pages/6_Classify.py"),
                 "robustness": ("pages/12_Robustness.py",), "labels": ("pages/10_Label_issues.py",),
                 "embedding": ("pages/11_Embedding.py",), "neighbours.npz": ("pages/6_Classify.py",)}


@pytest.fixture
def damaged_lab(analysed_runs, studio, monkeypatch, tmp_path):
    """A private copy of the analysed tiny runs (its files get damaged), the dashboard pointed at it."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(analysed_runs["runs"], root)
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(root))
    return root


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_analysis_of_one_run_is_a_warning_on_every_page_that_reads_it(damaged_lab, name):
    from cifar_core.analysis import analysis_path

    for run in ("demo-tiny", "g3-tiny"):  # whichever run a page picks first
        change, _ = next(iter(DAMAGES[name].values()))
        change(analysis_path(damaged_lab / run, name))
    for page in PAGES_READING[name]:
        app = open_page(page)
        if page == "pages/6_Classify.py":
            app.button(key="classify_sample").click().run()
        assert not app.exception, page
        assert any(analysis_path(damaged_lab / "demo-tiny", name).name in w.value for w in app.warning), page


def test_runs_whose_files_disagree_on_their_classes_are_a_warning_on_every_page(damaged_lab):
    # The Label issues page named classes from metrics.json and indexed them with the analysis's class
    # indices: a metrics.json naming fewer classes was an IndexError in front of the audience.
    import json

    from cifar_core import runs

    for run in ("demo-tiny", "g3-tiny"):
        metrics_path = damaged_lab / run / runs.METRICS_FILE
        metrics_path.write_text(json.dumps({**json.loads(metrics_path.read_text()), "class_names": ["a", "b"]}))
        predictions = runs.read_predictions(damaged_lab / run)
        wider = {key: np.pad(predictions[key], ((0, 0), (0, 1))) for key in predictions if key != "y_true"}
        runs.write_predictions(damaged_lab / run, predictions["y_true"], wider["probs"], wider.get("probs_tta"))
    for page, names_too_few in (("pages/10_Label_issues.py", True), ("pages/4_Compare.py", True),
                                ("pages/11_Embedding.py", False)):  # its analysis agrees with data.json
        warnings = [w.value for w in open_page(page).warning]  # open_page: no exception
        assert any("data.json names 3 classes but the run's files hold 4" in w for w in warnings) == names_too_few


def test_class_names_come_from_data_json_and_are_numbered_where_too_few(damaged_lab):
    from streamlit.testing.v1 import AppTest

    script = f"""
import streamlit as st
from cifar_core import ui
st.write(repr([ui.class_names({str(damaged_lab / "demo-tiny")!r}, n) for n in (2, 3, 4)]))
st.write(repr(ui.class_names({str(damaged_lab / "no-such-run")!r}, 2)))
"""
    app = AppTest.from_string(script).run()
    assert not app.exception
    assert app.markdown[0].value == repr([["cat", "dog", "ship"]] * 2 + [["0", "1", "2", "3"]])
    assert app.markdown[1].value == repr(["0", "1"])
    assert [w.value for w in app.warning] == [
        "demo-tiny: data.json names 3 classes but the run's files hold 4; the classes are shown by number",
        "no-such-run: data.json names 0 classes but the run's files hold 2; the classes are shown by number"]


def test_the_evaluate_page_leaves_out_what_disagrees_with_its_confusion_matrix(damaged_lab):
    # Its cell browser and its epoch scrubber indexed metrics.json's classes with the other files' class
    # indices: an IndexError (predictions of fewer classes), a ValueError (an epoch's class beyond them).
    from cifar_core import runs

    for run in ("demo-tiny", "g3-tiny"):
        predictions = runs.read_predictions(damaged_lab / run)
        runs.write_predictions(damaged_lab / run, predictions["y_true"] % 2, predictions["probs"][:, :2])
        epochs = runs.read_epoch_predictions(damaged_lab / run)
        runs.write_epoch_predictions(damaged_lab / run, epochs["y_true"], epochs["predicted"] + 5, epochs["epochs"])
    warnings = [w.value for w in open_page("pages/5_Evaluate.py").warning]  # open_page: no exception
    assert any("predictions.npz holds 2 classes but metrics.json names 3" in w for w in warnings)
    assert any("epoch-predictions.npz holds classes up to 7 but metrics.json names 3" in w for w in warnings)
