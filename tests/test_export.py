"""Export (#18): Keras' own export paths, each file checked with the runtime a user would run it with."""
import hashlib
import json
import shutil

import keras
import numpy as np
import pytest

from cifar_core import export
from cifar_core.errors import ConfigError, RunFolderError


@pytest.fixture
def tiny_run(shipped_runs, tmp_path, monkeypatch):
    """A copy of the tiny g3 run (mixed bf16 where the CPU has bf16 units) to export from."""
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    run_dir = tmp_path / "g3-tiny"
    shutil.copytree(shipped_runs["runs"] / "g3-tiny", run_dir)
    return run_dir, str(shipped_runs["data"])


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "saved_model"])
def test_a_float_export_agrees_with_keras_and_is_recorded(tiny_run, tmp_path, fmt):
    run_dir, data = tiny_run
    out = tmp_path / "out"
    entry = export.export_run(run_dir, fmt, out_dir=out, source=data, progress=lambda line: None)
    target = out / export.FILE_NAMES[fmt]
    assert target.exists()
    assert entry["agreement"] == 1.0 and entry["accuracy"] == entry["keras_accuracy"]
    assert entry["within_tolerance"] and entry["max_probability_difference"] < 0.01
    assert entry["size_bytes"] == export.artefact_size(target) > 1000
    if fmt != "saved_model":
        assert entry["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert 0 < entry["latency_ms_p50"] <= entry["latency_ms_p95"] and entry["throughput_batch64"] > 0
    assert entry["input"]["shape"] == [None, 32, 32, 3] and entry["run"] == "g3-tiny"
    assert {"tensorflow", "keras", "onnxruntime", "ai-edge-litert"} <= set(entry["versions"])
    assert entry["versions"]["tensorflow"] != "not installed"  # pinned as tensorflow-cpu
    manifest = json.loads((out / export.MANIFEST).read_text())
    assert manifest["exports"][fmt] == entry
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_exports_are_smaller_and_checked_against_the_wider_tolerance(tiny_run, tmp_path, fmt):
    run_dir, data = tiny_run
    out = tmp_path / "out"
    float_entry = export.export_run(run_dir, fmt, out_dir=out, source=data, progress=lambda line: None)
    try:
        entry = export.export_run(run_dir, fmt, "int8", out_dir=out, source=data, progress=lambda line: None)
    except export.ExportError as exc:  # nine test images: one flipped answer is 11 points
        assert "outside the 1.0 point tolerance" in str(exc)
        entry = export.read_manifest(out)[f"{fmt}-int8"]
    assert entry["tolerance_points"] == 1.0 and entry["quantize"] == "int8"
    assert entry["size_bytes"] < float_entry["size_bytes"]
    assert set(export.read_manifest(out)) == {fmt, f"{fmt}-int8"}  # both kept
    if fmt == "onnx":  # chosen among the settings by held-out training images, all recorded
        choice = entry["quantization"]
        assert set(choice["held_out_agreement"]) == set(export.onnx_int8_settings())
        assert choice["setting"] == export.choose_setting(choice["held_out_agreement"])
        assert choice["held_out_images"] > 0 and choice["calibration_images"] > 0
    else:
        assert "quantization" not in entry
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [export.MANIFEST, export.FILE_NAMES[fmt], export.FILE_NAMES[fmt].replace(".", "-int8.")])


def test_the_portable_model_computes_in_float32_and_resizes_inside():
    import tensorflow as tf

    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1 / 255, dtype="mixed_bfloat16")(inputs)
    x = keras.layers.Conv2D(4, 3, dtype="mixed_bfloat16")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_bfloat16")(x)
    outputs = keras.layers.Dense(3, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    portable = export.portable_model(model, image_size=32, input_size=48)
    assert portable.input_shape == (None, 32, 32, 3)
    inner = portable.layers[-1]
    assert all(layer.dtype_policy.name == "float32" for layer in inner.layers)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3)).astype("float32")
    expected = model.predict(tf.image.resize(images, (48, 48), method="bilinear").numpy(), verbose=0)
    np.testing.assert_allclose(portable.predict(images, verbose=0), expected, atol=0.02)


def test_calibration_and_held_out_images_are_disjoint_seeded_slices_of_the_training_split():
    x_train = np.arange(3000).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 3))  # each image holds its own index
    calibration, held_out = export.training_slices(x_train, calibration=50, held_out=200)
    assert calibration.shape == (50, 2, 2, 3) and held_out.shape == (200, 2, 2, 3)
    assert calibration.dtype == held_out.dtype == np.float32
    assert not set(calibration[:, 0, 0, 0]) & set(held_out[:, 0, 0, 0])
    again = export.training_slices(x_train, calibration=50, held_out=200)
    np.testing.assert_array_equal(calibration, again[0])  # seeded
    np.testing.assert_array_equal(held_out, again[1])
    small_calibration, small_held_out = export.training_slices(x_train[:11])  # a tiny split is shared
    assert len(small_calibration) == 6 and len(small_held_out) == 5
    assert not set(small_calibration[:, 0, 0, 0]) & set(small_held_out[:, 0, 0, 0])
    one_calibration, one_held_out = export.training_slices(x_train[7:8])  # nothing to hold out: it does both
    assert one_calibration[:, 0, 0, 0].tolist() == one_held_out[:, 0, 0, 0].tolist() == [7]


def test_the_int8_setting_that_agrees_most_on_held_out_images_wins_and_ties_go_to_the_first():
    assert export.choose_setting({"a": 0.98, "b": 0.999, "c": 0.99}) == "b"
    assert export.choose_setting({"a": 0.99, "b": 0.98, "c": 0.99}) == "a"
    assert export.choose_setting({"a": 0.5, "b": 0.7, "c": 0.7}) == "b"


def test_parity_uses_the_tolerance_in_points():
    labels = np.array([0] * 100)
    reference = np.eye(2)[np.array([0] * 90 + [1] * 10)]
    same = export.parity(reference, reference, labels, 0.1)
    assert same["accuracy"] == same["keras_accuracy"] == 0.9 and same["agreement"] == 1.0 and same["within_tolerance"]
    one_more_wrong = np.eye(2)[np.array([0] * 89 + [1] * 11)]
    assert not export.parity(reference, one_more_wrong, labels, 0.1)["within_tolerance"]  # 1 point off
    assert export.parity(reference, one_more_wrong, labels, 1.0)["within_tolerance"]
    assert export.parity(reference, one_more_wrong, labels, 1.0)["agreement"] == 0.99


def test_bad_requests_are_refused_before_any_work(tiny_run, tmp_path):
    run_dir, data = tiny_run
    with pytest.raises(ConfigError, match="format"):
        export.export_run(run_dir, "pickle", source=data)
    with pytest.raises(ConfigError, match="SavedModel stays float32"):
        export.export_run(run_dir, "saved_model", "int8", source=data)
    with pytest.raises(ConfigError, match="int8"):
        export.export_run(run_dir, "onnx", "int4", source=data)
    (run_dir / "model.keras").unlink()
    with pytest.raises(RunFolderError, match="no trained model"):
        export.export_run(run_dir, "onnx", source=data)


def test_a_damaged_manifest_is_refused_on_read_and_rewritten_on_export(tmp_path):
    (tmp_path / export.MANIFEST).write_text("[1, 2]")
    with pytest.raises(export.ExportError, match="not an export manifest"):
        export.read_manifest(tmp_path)
    export.record(tmp_path, "onnx", {"accuracy": 0.5})
    assert export.read_manifest(tmp_path) == {"onnx": {"accuracy": 0.5}}
    assert export.read_manifest(tmp_path / "absent") == {}
    (tmp_path / export.MANIFEST).write_text('{"exports": {"onnx": {"accuracy": 0.5}, "tflite": [1], "x": "y"}}')
    assert export.read_manifest(tmp_path) == {"onnx": {"accuracy": 0.5}}  # entries that are no record drop out


def test_the_cli_exports_and_prints_one_line(tiny_run, tmp_path, capsys):
    from cifar_core.__main__ import main

    run_dir, data = tiny_run
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "o"), "--data", data]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nowhere"), "--format", "onnx"]) == 2
    assert "no trained model" in capsys.readouterr().err


@pytest.fixture
def deploy_studio(studio, tmp_path, monkeypatch):
    """The dashboard over a private copy of the tiny demo run (exports write into the run folder)."""
    root = tmp_path / "runs"
    shutil.copytree(studio["runs"] / "demo-tiny", root / "demo-tiny")
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(root))
    return root / "demo-tiny", str(studio["data"])


def test_deploy_page_offers_an_export_and_starts_it_as_a_job(deploy_studio, monkeypatch):
    from helpers import open_page

    from cifar_core import jobs

    started = []
    monkeypatch.setattr(jobs, "launch_export", lambda run_dir, fmt, quantize=None: started.append(
        (run_dir.name, fmt, quantize)) or jobs.Job(7, run_dir, None, "queued", None, None, 0, 0, None))
    app = open_page("pages/14_Deploy.py")
    assert any("cifar_core export" in i.value for i in app.info)
    app.radio(key="deploy_format").set_value("ONNX (.onnx, onnxruntime)").run()
    app.checkbox(key="deploy_int8").check().run()
    app.button(key="deploy_start").click().run()
    assert started == [("demo-tiny", "onnx", "int8")]
    assert any("Started job 7" in s.value for s in app.success)


def test_deploy_page_lists_checked_exports_with_downloads_and_a_snippet(deploy_studio):
    from helpers import open_page

    run_dir, data = deploy_studio
    export.export_run(run_dir, "tflite", source=data, progress=lambda line: None)
    app = open_page("pages/14_Deploy.py")
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["export"]) == ["tflite"] and list(table["passed"]) == ["yes"]
    assert "model.tflite" in app.code[0].value and "Interpreter" in app.code[0].value
    assert len(app.get("download_button")) == 2
    (run_dir / "export" / "model.tflite").unlink()
    app.run()
    assert any("missing" in w.value for w in app.warning)
    manifest = run_dir / "export" / export.MANIFEST
    exports = json.loads(manifest.read_text())["exports"]
    exports["onnx-int8"] = {**exports["tflite"], "quantization": {"setting": "all ops, percentile ranges"}}
    exports["damaged"] = ["not", "a", "record"]
    manifest.write_text(json.dumps({"exports": exports}))
    app.run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["export"]) == ["onnx-int8", "tflite"]
    assert list(table["INT8 setting"].fillna("")) == ["all ops, percentile ranges", ""]


def test_the_portable_model_swaps_what_onnx_and_litert_cannot_run():
    from cifar_core.models.homebrew import build_fastnet
    from cifar_core.models.homebrew import build_g3 as build_model_g3
    from cifar_core.models.layers import TanhGelu, to_stock_layers

    saved = to_stock_layers(build_fastnet(activation="gelu"))  # exact GELU (Erfc), a fixed Normalization
    portable = export.portable_model(saved, 32, 32)
    inner = portable.layers[-1]
    assert isinstance(inner.get_layer("block1_act1"), TanhGelu)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in inner.layers)
    with_dropout = export.portable_model(to_stock_layers(build_model_g3()), 32, 32).layers[-1]
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in with_dropout.layers)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(portable.predict(images, verbose=0), saved.predict(images, verbose=0), atol=2e-3)
