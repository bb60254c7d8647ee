"""Export (#18): Keras' own export paths, each file checked with the runtime a user would run it with."""
import hashlib
import json
import os
import shutil
from pathlib import Path

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
    out.mkdir()
    # What someone placed at the old scheme's temporary name (pid-based) is neither written nor removed.
    planted = out / f".{Path(export.FILE_NAMES[fmt]).stem}.{os.getpid()}.tmp{Path(export.FILE_NAMES[fmt]).suffix}"
    planted.symlink_to(tmp_path / "victim")
    (tmp_path / "victim").write_text("theirs")
    entry = export.export_run(run_dir, fmt, out_dir=out, source=data, progress=lambda line: None)
    assert planted.is_symlink() and (tmp_path / "victim").read_text() == "theirs"
    planted.unlink()
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
    from helpers import export_entry

    (tmp_path / export.MANIFEST).write_text("[1, 2]")
    with pytest.raises(export.ExportError, match="not an export manifest"):
        export.read_manifest(tmp_path)
    sound = export_entry(b"model")
    export.record(tmp_path, "onnx", sound)
    assert export.read_manifest(tmp_path) == {"onnx": sound}
    assert export.read_manifest(tmp_path / "absent") == {}
    (tmp_path / export.MANIFEST).write_text(json.dumps({"exports": {"onnx": sound, "tflite": [1], "x": "y"}}))
    assert export.read_manifest(tmp_path) == {"onnx": sound}  # entries that are no record drop out
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / export.MANIFEST).symlink_to(tmp_path / "gone.json")
    with pytest.raises(export.ExportError):  # a link to nothing is a damaged manifest, not "no exports"
        export.read_manifest_entries(dangling)


# Each field a reader relies on, and a value of it no export writes.
DAMAGED_FIELDS = {
    "format": "pickle", "quantize": "int4", "file": "../model.onnx", "input": {"shape": [None, "32", 32, 3]},
    "size_bytes": -1, "sha256": "Z" * 64, "accuracy": 1.5, "keras_accuracy": "0.5", "agreement": None,
    "within_tolerance": "yes", "latency_ms_p50": True, "latency_ms_p95": -1.0, "throughput_batch64": "fast",
    "class_names": ["cat", 3], "runtime": 1, "quantization": "all ops", "machine": 5, "run_test_accuracy": 2,
}


@pytest.mark.parametrize("field", sorted(DAMAGED_FIELDS))
def test_a_manifest_entry_with_any_field_unlike_an_exports_is_left_out_and_named(tmp_path, field):
    from helpers import export_entry

    sound = export_entry(b"model")
    entries = {"sound": sound, "damaged": {**sound, field: DAMAGED_FIELDS[field]}}
    if field not in {"quantize", "quantization", "machine", "run_test_accuracy"}:  # these may be absent
        entries["missing"] = {name: value for name, value in sound.items() if name != field}
    (tmp_path / export.MANIFEST).write_text(json.dumps({"exports": entries}))
    manifest = export.read_manifest_entries(tmp_path)
    kept, left_out = manifest.entries, manifest.left_out
    assert kept == {"sound": sound}
    assert json.loads(manifest.raw) == {"exports": entries}  # the file as read, for its download
    assert any("'damaged'" in line and field in line for line in left_out)
    assert len(left_out) == len(entries) - 1


@pytest.mark.parametrize("shape", [[None, 32, 48, 3], [None, 32, 32, 1], [None, 32, 32, 4], [None, 0, 0, 3],
                                   [None, 4097, 4097, 3], [None, 32, 32]])
def test_a_manifest_input_that_is_not_square_rgb_is_left_out(tmp_path, shape):
    from helpers import export_entry

    sound = export_entry(b"model")
    assert sound["input"]["shape"][1:] == [32, 32, 3]
    entries = {"sound": sound, "odd": {**sound, "input": {"shape": shape}}}
    (tmp_path / export.MANIFEST).write_text(json.dumps({"exports": entries}))
    manifest = export.read_manifest_entries(tmp_path)
    assert manifest.entries == {"sound": sound} and len(manifest.left_out) == 1 and "input" in manifest.left_out[0]


def test_a_download_is_the_checked_artefact_and_nothing_else(tmp_path, monkeypatch):
    import io
    import os
    import zipfile

    from helpers import export_entry

    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    entry = export_entry(b"onnx bytes")
    assert export.checked_download(tmp_path, entry) == ("model.onnx", b"onnx bytes")
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    saved = export_entry(b"", format="saved_model", file="saved_model", sha256=export.artefact_sha256(folder))
    name, data = export.checked_download(tmp_path, saved)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert name == "saved_model.zip" and sorted(archive.namelist()) == [
            "saved_model/saved_model.pb", "saved_model/variables/variables.index"]
        assert archive.read("saved_model/variables/variables.index") == b"index"

    def refused(entry, match):
        with pytest.raises(export.ExportError, match=match):
            export.checked_download(tmp_path, entry)

    refused({**entry, "file": "../model.onnx"}, "not the name of a file")
    refused({**entry, "file": "absent.onnx"}, "missing")
    (tmp_path / "model.onnx").write_bytes(b"onnx bytez")
    refused(entry, "changed since its check")
    (folder / "variables" / "variables.index").write_bytes(b"indey")
    refused(saved, "changed since its check")
    (tmp_path / "outside").write_bytes(b"onnx bytes")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "outside")
    refused({**entry, "file": "link.onnx"}, "is a link")
    (folder / "variables" / "extra").symlink_to(tmp_path / "outside")
    refused(saved, "holds a link")
    os.mkfifo(tmp_path / "fifo.onnx")
    refused({**entry, "file": "fifo.onnx"}, "device, pipe or socket")
    (tmp_path / "big.onnx").write_bytes(b"x" * 64)
    monkeypatch.setattr(export, "MAX_ARTEFACT_BYTES", 63)
    refused(export_entry(b"x" * 64, file="big.onnx"), "the limit is")


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
    checked = (run_dir / "export" / "model.tflite").read_bytes()
    (run_dir / "export" / "model.tflite").write_bytes(checked[:-1] + bytes([checked[-1] ^ 1]))
    app.run()  # the download is cached per version of the file: a changed one is checked again
    assert any("changed since its check" in w.value for w in app.warning)
    assert not app.get("download_button")
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
    assert any("left out 'damaged': the entry must be a JSON object" in w.value for w in app.warning)
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
