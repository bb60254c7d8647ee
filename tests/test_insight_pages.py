"""AppTests of the insight lab's pages and of what the Classify page gained, on analysed tiny runs."""
import numpy as np
from helpers import open_page, png_bytes


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


def test_label_issues_page_marks_an_image_and_shows_accuracy_without_it(lab, monkeypatch, tmp_path):
    from cifar_core.analysis import labels

    marks = tmp_path / "marks.json"
    monkeypatch.setattr(labels, "MARKS_FILE", marks)
    monkeypatch.setattr(labels.read_marks, "__defaults__", (marks,))
    monkeypatch.setattr(labels.write_marks, "__defaults__", (marks,))
    app = open_page("pages/10_Label_issues.py")
    boxes = app.checkbox
    assert boxes and not any(box.value for box in boxes)
    first = boxes[0].key
    boxes[0].check().run()
    assert not app.exception
    index = int(first.rsplit("_", 1)[1])
    assert labels.read_marks(marks) == {index}
    assert any(m.label == "Without the 1 marked" for m in app.metric)


def test_embedding_page_maps_two_runs(lab):
    app = open_page("pages/11_Embedding.py")
    assert len(app.get("plotly_chart")) == 2
    app.radio(key="embedding_colour").set_value("predicted class").run()
    assert not app.exception


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
