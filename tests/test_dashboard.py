"""One Streamlit AppTest per page, on real (tiny) runs in an isolated runs folder."""
from helpers import ROOT, open_page


def test_home_leaderboard_lists_runs_and_warns_about_broken_ones(studio):
    app = open_page("streamlit_app.py")
    table = app.dataframe[0].value
    assert set(table["model"]) == {"demo", "g3"}
    assert any("broken" in w.value for w in app.warning)


def test_dataset_page_shows_counts_and_classes(studio):
    app = open_page("pages/1_Dataset.py")
    values = [m.value for m in app.metric]
    assert "3" in values and "18" in values and "9" in values
    assert any("cat" in md.value for md in app.markdown)


def test_augmentation_page_rerolls(studio):
    app = open_page("pages/2_Augmentation.py")
    assert len(app.get("image")) >= 1
    app.button(key="aug_reroll").click().run()
    assert not app.exception and app.session_state["aug_seed"] == 1


def test_augmentation_page_explains_a_clashing_choice(studio):
    app = open_page("pages/2_Augmentation.py")
    app.radio(key="aug_mode").set_value("custom").run()
    app.multiselect(key="aug_custom").set_value(["flip", "altflip"]).run()
    assert not app.exception and any("flip and altflip" in e.value for e in app.error)
    app.multiselect(key="aug_custom").set_value(["altflip", "crop"]).run()
    assert not app.exception and not app.error and len(app.get("image")) >= 1


def test_train_page_launches_a_job(studio, monkeypatch, tmp_path):
    app = open_page("pages/3_Train.py")
    # The job's run folder goes to this test's own folder: a worker that finishes before the cancel
    # below (one epoch of a tiny set) must not add a run to the session's shared tiny runs.
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "job-runs"))
    app.number_input(key="train_epochs").set_value(1)
    app.number_input(key="train_limit").set_value(0)
    app.button[0].click().run()  # the form's submit button
    assert not app.exception
    assert any("Started job" in s.value for s in app.success), [e.value for e in app.error]
    from cifar_core import jobs

    [job] = jobs.list_jobs()
    assert job.config.model == "demo" and job.config.n_epochs == 1
    jobs.cancel(job.id)


def test_compare_page_pairs_predictions(studio):
    import numpy as np

    from cifar_core import runs

    app = open_page("pages/4_Compare.py")
    pairs = ("Only A right", "Only B right", "Both wrong")
    shown = {m.label: int(m.value) for m in app.metric if m.label in pairs}
    first, second = app.selectbox(key="compare_a").value, app.selectbox(key="compare_b").value
    a, b = (runs.read_predictions(studio["runs"] / name) for name in (first, second))
    right_a = a["probs"].astype(np.float32).argmax(1) == a["y_true"]
    right_b = b["probs"].astype(np.float32).argmax(1) == b["y_true"]
    assert shown == {"Only A right": int((right_a & ~right_b).sum()), "Only B right": int((right_b & ~right_a).sum()),
                     "Both wrong": int((~right_a & ~right_b).sum())}


def test_compare_page_measures_the_chosen_runs_as_one_classifier(studio):
    from cifar_core.ensemble import measure_ensemble

    app = open_page("pages/4_Compare.py")
    assert not app.exception
    chosen = app.selectbox(key="compare_a").options  # the chosen runs' names
    expected = measure_ensemble([studio["runs"] / name for name in chosen])
    key = "_tta" if "test_accuracy_tta" in expected else ""
    shown = {m.label: m.value for m in app.metric}
    assert shown[f"Averaged{' (flip TTA)' if key else ''}"] == f"{expected['test_accuracy' + key]:.2%}"
    assert shown["All agree on"] == f"{expected['agreement' + key]['unanimous_fraction']:.1%}"


def test_compare_page_says_why_runs_measured_on_other_test_splits_cannot_be_averaged(studio):
    import shutil

    from cifar_core import runs, ui

    other = studio["runs"] / "demo-other-split"
    shutil.copytree(studio["runs"] / "demo-tiny", other)
    try:
        saved = runs.read_predictions(other)
        runs.write_predictions(other, saved["y_true"][::-1], saved["probs"][::-1])
        ui._run_records.clear()
        app = open_page("pages/4_Compare.py")
        picker = app.multiselect(key="compare_runs")
        pair = [next(o for o in picker.options if o.split()[0] == name) for name in ("demo-tiny", "demo-other-split")]
        picker.set_value(pair).run()
        assert not app.exception
        assert [i.value for i in app.info if i.value.startswith("These runs cannot be averaged")] == [
            "These runs cannot be averaged: demo-other-split was measured on another test split than demo-tiny "
            "(9 against 9 images, or in another order)"]
        assert app.dataframe[0].value.shape[1] == 2  # the rest of the page still draws
    finally:
        shutil.rmtree(other)
        ui._run_records.clear()


def test_evaluate_page_shows_matrix_and_report(studio):
    app = open_page("pages/5_Evaluate.py")
    assert app.metric[0].label == "Test accuracy"
    report = app.dataframe[0].value
    assert list(report["class"]) == ["cat", "dog", "ship"]
    app.selectbox[1].set_value("dog").run()
    assert not app.exception


def test_classify_page_classifies_sample_images(studio):
    app = open_page("pages/6_Classify.py")
    app.button(key="classify_sample").click().run()
    assert not app.exception, [e.message for e in app.exception]
    predictions = [md.value for md in app.markdown if md.value.startswith("Prediction:")]
    assert len(predictions) == 3 * 2  # three images, two models
    assert all("%" in p for p in predictions)
    # One joint answer per photo, with the two runs' track record on the test split where they agree or split.
    joint = [a.value for a in (*app.success, *app.warning) if a.value.startswith(("All 2 models", "The models"))]
    assert len(joint) == 3, joint
    assert all("On the test split, where these models" in line for line in joint), joint


def test_a_drop_of_more_photos_than_a_read_takes_reads_the_first_and_says_so(studio, monkeypatch):
    # A folder dropped whole was decoded whole (up to 64 MiB a photo) and read by every chosen model.
    from cifar_core import imaging, ui

    monkeypatch.setattr(ui, "MAX_PHOTOS", 2)
    decoded = []
    decode = imaging.decode_image
    monkeypatch.setattr(imaging, "decode_image", lambda data, name="image": decoded.append(name) or decode(data, name))
    app = open_page("pages/6_Classify.py")
    app.button(key="classify_sample").click().run()
    assert not app.exception
    assert len([md for md in app.markdown if md.value.startswith("Prediction:")]) == 2 * 2  # two photos, two models
    assert len(decoded) == 2
    assert "3 photos dropped: the first 2 are read. Drop the others in another round." in [w.value for w in app.warning]
    monkeypatch.setattr(ui, "MAX_PHOTOS", 3)  # exactly as many as a read takes: all of them, nothing to say
    app.run()
    assert len(decoded) == 2 + 3 and not any("photos dropped" in w.value for w in app.warning)


def test_the_joint_answer_says_agreement_and_the_runs_track_record():
    import numpy as np

    from cifar_core.ui import agreement_line

    names = ["cat", "dog", "ship"]
    figures = {"unanimous_fraction": 0.9, "accuracy_unanimous": 0.97, "accuracy_split": 0.6}
    same = [("a", np.array([0.7, 0.2, 0.1])), ("b", np.array([0.5, 0.4, 0.1]))]
    assert agreement_line(names, same, figures) == (
        True, "All 2 models say **cat**. On the test split, where these models all agree they are right 97.0% "
              "of the time.")
    split = [("a", np.array([0.7, 0.2, 0.1])), ("b", np.array([0.1, 0.8, 0.1]))]
    # Together: the mean (0.4, 0.5, 0.1) says dog, at 50%.
    assert agreement_line(names, split, figures) == (
        False, "The models disagree (a: cat, b: dog); together: **dog** (50%). On the test split, where these "
               "models split they are right 60.0% of the time.")
    assert agreement_line(names, split, None)[1].endswith("together: **dog** (50%).")
    never_split = {**figures, "accuracy_split": None}
    assert agreement_line(names, split, never_split)[1].endswith("(50%).")


def test_home_page_does_not_import_tensorflow(studio):
    from helpers import tensorflow_and_keras_imported_by

    assert tensorflow_and_keras_imported_by("import runpy; runpy.run_path('pages/0_Home.py')") == "False False"


def test_navigation_declares_every_page_with_a_title_in_a_section(studio):
    from cifar_core.ui import PAGES

    declared = [file for pages in PAGES.values() for file, *_ in pages]
    assert sorted(declared) == sorted(f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py"))
    assert list(PAGES) == ["Studio", "Data", "Training", "Evaluation", "Explain", "Insight lab", "Deploy"]
    app = open_page("streamlit_app.py")  # the entry point runs the home page by default
    assert app.title[0].value == "CIFAR-10 Studio" and len(app.dataframe) == 1


def test_default_selection_shows_different_models_best_first():
    from cifar_core.ui import best_run_per_model

    records = [{"run": "a", "model": "lite0", "test_accuracy": 0.91},
               {"run": "b", "model": "fastnet", "test_accuracy": 0.89},
               {"run": "c", "model": "lite0", "test_accuracy": 0.92},
               {"run": "d", "model": "demo", "test_accuracy": None}]
    assert [r["run"] for r in best_run_per_model(records)] == ["c", "b", "d"]
    # The second is the best of the other kind: a homebrew net against the best transfer model, not its sibling.
    kinds = [{"run": "lite2", "model": "lite2", "transfer": True, "test_accuracy": 0.94},
             {"run": "lite0", "model": "lite0", "transfer": True, "test_accuracy": 0.93},
             {"run": "fastnet", "model": "fastnet", "transfer": False, "test_accuracy": 0.91},
             {"run": "g3", "model": "g3", "transfer": False, "test_accuracy": 0.85}]
    assert [r["run"] for r in best_run_per_model(kinds)] == ["lite2", "fastnet", "lite0", "g3"]
    weak_transfer = {"run": "small", "model": "lite0", "transfer": True, "test_accuracy": 0.80}
    assert [r["run"] for r in best_run_per_model([*kinds[2:], weak_transfer])] == ["fastnet", "small", "g3"]


def test_the_server_preloads_the_modules_pages_import_on_first_use():
    # Compare's first visit paid 1.7 s importing scikit-learn in front of the audience; the server now
    # imports such modules at start-up. A fresh interpreter, so the modules are not imported already.
    import subprocess
    import sys

    check = ("import sys; from cifar_core import ui; names = ui.PAGE_MODULES; "
             "before = [n for n in names if n in sys.modules]; failed = ui.preload_page_modules(); "
             "print(before, failed, all(n in sys.modules for n in names))")
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[0] == "[] [] True", out.stderr[-2000:]
    # Each preloaded module is one the studio's code imports lazily, so the list cannot go stale unseen.
    sources = "".join(p.read_text() for p in [*ROOT.glob("cifar_core/**/*.py"), *ROOT.glob("pages/*.py")])
    from cifar_core.ui import PAGE_MODULES

    for name in PAGE_MODULES:
        assert f"    from {name} import" in sources, name


def test_sample_examples_never_repeat_an_image():
    # A repeated image crashed the Classify page (two charts with one key); drawing with
    # replacement repeats one in 78% of draws of 3 out of 3.
    from cifar_core.ui import example_indices

    for seed in range(20):
        assert sorted(example_indices(3, seed=seed)) == [0, 1, 2]
    assert len(example_indices(100)) == 3
    assert sorted(example_indices(2)) == [0, 1]


def test_train_page_launches_a_preset(studio, tmp_path, monkeypatch):
    from cifar_core import jobs
    from cifar_core.config import preset_config

    app = open_page("pages/3_Train.py")
    # The job's run folder goes to a folder of this test's own: the shared tiny runs stay as they are
    # however far the worker gets before the cancel below.
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "job-runs"))
    assert "demo — small CNN on an 8,000-image subset, for live demos: 38 s on AMD EPYC, 2 cores" in \
        app.selectbox(key="train_preset").options  # no bench of this machine in the test's cache
    app.selectbox(key="train_preset").set_value("demo")
    app.button[0].click().run()
    assert not app.exception and any("Started job" in s.value for s in app.success)
    [job] = jobs.list_jobs()
    assert job.config == preset_config("demo", data=str(studio["data"]))
    jobs.cancel(job.id)


def test_race_page_replays_recorded_runs_labelled_as_replays(studio):
    import time

    app = open_page("pages/7_Race.py")
    assert set(app.multiselect(key="race_replay").value) == {"demo-tiny", "g3-tiny"}
    bars = " ".join(p.proto.text for p in app.get("progress"))
    assert "press Start" in bars and "REPLAY" in bars
    app.session_state["race_started"] = time.time() - 0.01  # a replay that has just begun
    app.run()
    assert not app.exception
    bars = " ".join(p.proto.text for p in app.get("progress"))
    assert "0/2 epochs" in bars and any("nothing is training" in i.value for i in app.info)


def test_evaluate_page_scrubs_the_confusion_matrix_by_epoch(studio):
    app = open_page("pages/5_Evaluate.py")
    slider = app.select_slider(key="eval_epoch")
    assert slider.options == ["1", "2"] and slider.value == 2
    slider.set_value(1).run()
    assert not app.exception and any("Epoch 1: validation accuracy" in c.value for c in app.caption)


def test_compare_page_says_which_curve_each_run_draws(studio):
    app = open_page("pages/4_Compare.py")
    assert not app.exception
    table = app.dataframe[0].value
    assert table.loc["test accuracy"].str.endswith("%").all()
    assert table.loc["training time (min)"].str.fullmatch(r"[\d,]+\.\d|—").all()


def test_race_page_draws_a_job_training_now_from_its_live_points(studio, tmp_path):
    import json
    import shutil

    from cifar_core import runs, ui

    live = studio["runs"] / "demo-live"
    shutil.copytree(studio["runs"] / "demo-tiny", live)
    try:
        (live / runs.MODEL_FILE).unlink()
        (live / runs.LOCK_FILE).unlink(missing_ok=True)  # a writer that is not ours: judged by heartbeat
        runs.write_status(live, "running", progress=0.6, epoch=1, n_epochs=2)
        ui._run_records.clear()
        done = sum(row["seconds"] for row in runs.read_history(live)[:1])
        runs.write_history(live, runs.read_history(live)[:1])
        (live / runs.LIVE_FILE).unlink(missing_ok=True)
        runs.append_live_point(live, done + 3.0, 1.5, 1.0, 0.42)
        app = open_page("pages/7_Race.py")
        assert app.multiselect(key="race_live").value == ["demo-live"]
        assert app.multiselect(key="race_replay").value == []  # a live race is not mixed with replays
        traces = {trace["name"]: trace for trace in json.loads(app.get("plotly_chart")[0].proto.spec)["data"]}
        assert set(traces) == {"demo · live (validation accuracy)", "demo · live (training accuracy (running))"}
        assert any("demo-live: running" in p.proto.text for p in app.get("progress"))
    finally:
        shutil.rmtree(live)
        ui._run_records.clear()
