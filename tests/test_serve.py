"""The prediction service (#18): FastAPI routes, refusals as 4xx JSON, the fastest verified export."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import png_bytes

from cifar_core import serve
from cifar_core.errors import CifarError

PHOTO = png_bytes(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
CLASSES = ("cat", "dog", "ship")


def _stub(model_id="stub", probabilities=(0.2, 0.7, 0.1), fail=False):
    def predict(batch):
        assert batch.shape == (1, 32, 32, 3) and batch.dtype == np.float32
        if fail:
            raise RuntimeError("boom")
        return np.array([probabilities], np.float32)

    return serve.ServedModel(model_id, CLASSES, 32, 0.9, "stub engine", predict)


@pytest.fixture
def client():
    return TestClient(serve.create_app([_stub("a"), _stub("b", (0.5, 0.1, 0.4))]), raise_server_exceptions=False)


def _post(client, data=PHOTO, field="image", **form):
    return client.post("/v1/predict", files={field: ("photo.png", io.BytesIO(data), "image/png")}, data=form)


def test_health_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": 2}
    listed = client.get("/v1/models").json()["models"]
    assert [m["id"] for m in listed] == ["a", "b"]
    assert listed[0] == {"id": "a", "test_accuracy": 0.9, "engine": "stub engine", "classes": list(CLASSES),
                         "input": [32, 32, 3]}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    assert schema["content"]["multipart/form-data"]["schema"]["required"] == ["image"]


def test_a_photo_gets_each_models_top_k_in_order(client):
    answer = _post(client)
    assert answer.status_code == 200
    body = answer.json()
    assert [p["model"] for p in body["predictions"]] == ["a", "b"]
    assert [c["class"] for c in body["predictions"][0]["top_k"]] == ["dog", "cat", "ship"]
    assert [c["class"] for c in body["predictions"][1]["top_k"]] == ["cat", "ship", "dog"]
    assert body["predictions"][0]["top_k"][0]["probability"] == pytest.approx(0.7)
    assert body["milliseconds"] >= body["predictions"][0]["milliseconds"] >= 0


def test_model_and_top_k_are_chosen_and_checked(client):
    one = _post(client, model="b", top_k="1").json()["predictions"]
    assert [p["model"] for p in one] == ["b"] and len(one[0]["top_k"]) == 1
    unknown = _post(client, model="nope")
    assert unknown.status_code == 404 and "GET /v1/models lists them: a, b" in unknown.json()["error"]
    for bad in ("0", "4", "two", "-1", "1.5"):
        answer = _post(client, top_k=bad)
        assert answer.status_code == 400 and "top_k must be a whole number from 1 to 3" in answer.json()["error"]


@pytest.mark.parametrize("data", [b"not an image at all", PHOTO[: len(PHOTO) // 3], b""])
def test_a_hostile_file_is_a_400_with_the_decoders_message(client, data):
    answer = _post(client, data=data)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("image: ") and "Traceback" not in answer.text


def test_size_cap_missing_field_and_wrong_method_are_4xx_json():
    client = TestClient(serve.create_app([_stub()], max_upload_bytes=1000))
    too_big = _post(client, data=b"x" * 70_000)
    assert too_big.status_code == 413 and "up to" in too_big.json()["error"]
    assert _post(client, data=PHOTO[:900]).status_code == 400  # under the cap: read, then refused as truncated
    wrong_field = _post(client, field="file")
    assert wrong_field.status_code == 400 and "field 'image'" in wrong_field.json()["error"]
    assert client.get("/v1/predict").status_code == 405 and "error" in client.get("/v1/predict").json()
    assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()


def test_a_failing_engine_is_a_json_500_without_a_traceback():
    client = TestClient(serve.create_app([_stub(fail=True)]), raise_server_exceptions=False)
    answer = _post(client)
    assert answer.status_code == 500 and answer.json() == {"error": "internal error (RuntimeError)"}


def _fake_exports(run_dir, entries: dict[str, dict]):
    """An export folder whose files are a few bytes each and whose manifest records `entries`
    (sha256 of each file's bytes unless the entry gives one)."""
    from helpers import export_entry

    folder = run_dir / "export"
    folder.mkdir(parents=True)
    manifest = {}
    for name, entry in entries.items():
        content = name.encode()
        if "file" not in entry:
            (folder / f"{name}.bin").write_bytes(content)
        manifest[name] = export_entry(content, **{"file": f"{name}.bin", **entry})
    (folder / "manifest.json").write_text(json.dumps({"exports": manifest}))


def test_only_checked_unaltered_light_exports_are_served_fastest_first(tmp_path, monkeypatch):
    from cifar_core import export

    hashed = []
    monkeypatch.setattr(export, "artefact_sha256", lambda path, hash=export.artefact_sha256: hashed.append(
        path.name) or hash(path))
    _fake_exports(tmp_path, {
        "saved_model": {"format": "saved_model", "latency_ms_p50": 0.1},  # a skipped one first: skip, go on
        "onnx": {"format": "onnx", "latency_ms_p50": 2.0},
        "tflite": {"format": "tflite", "latency_ms_p50": 1.0},
        "damaged": {"format": "onnx", "input": {"shape": [None, "32", 32, 3]}},  # not what an export writes
        "slower": {"format": "onnx", "latency_ms_p50": 3.0},
        "tflite-int8": {"format": "tflite", "latency_ms_p50": 0.1, "within_tolerance": False},
        "onnx-int8": {"format": "onnx", "latency_ms_p50": 0.1, "sha256": "0" * 64},
        "outside": {"format": "onnx", "latency_ms_p50": 0.1, "file": "../outside.bin"},
        "absent": {"format": "onnx", "latency_ms_p50": 0.1, "file": "absent.bin"},
        "resized": {"format": "onnx", "latency_ms_p50": 0.1, "size_bytes": 10 ** 10},  # never hashed
    })
    (tmp_path / "outside.bin").write_bytes(b"outside")
    assert [entry["format"] + ":" + path.name for entry, path in serve.verified_exports(tmp_path)] == [
        "tflite:tflite.bin", "onnx:onnx.bin", "onnx:slower.bin"]
    assert "resized.bin" not in hashed and "onnx.bin" in hashed  # a file of another size is never read


def test_the_first_export_that_fits_and_loads_is_the_engine(tmp_path, monkeypatch):
    from cifar_core import export, runs

    runs.atomic_write_json(tmp_path / runs.DATA_FILE, {"class_names": list(CLASSES)})
    runs.atomic_write_json(tmp_path / runs.METRICS_FILE, {"test_accuracy": 0.75})
    _fake_exports(tmp_path, {
        "other-classes": {"format": "tflite", "latency_ms_p50": 0.1, "class_names": ["a", "b", "c"]},
        "no-runtime": {"format": "tflite", "latency_ms_p50": 0.2},
        "onnx-int8": {"format": "onnx", "latency_ms_p50": 0.3, "quantize": "int8"},
        "onnx": {"format": "onnx", "latency_ms_p50": 0.4}})
    loaded = []

    def load_runner(fmt, path):
        loaded.append(f"{fmt}:{path.name}")
        if path.name == "no-runtime.bin":
            raise ImportError("no ai-edge-litert here")
        return export.Runner(lambda batch: np.array([[0.1, 0.2, 0.7]]), "stub runtime 1.0")

    monkeypatch.setattr(export, "load_runner", load_runner)
    served = serve.load_served_model(tmp_path)
    assert loaded == ["tflite:no-runtime.bin", "onnx:onnx-int8.bin"]  # the other classes' file is never loaded
    assert served.engine == "onnx int8 (stub runtime 1.0)" and served.test_accuracy == 0.75
    assert served.id == tmp_path.name
    assert served.class_names == CLASSES and served.image_size == 32
    assert served.top_k(np.zeros((40, 40, 3), np.uint8), 2) == [
        {"class": "ship", "probability": pytest.approx(0.7)}, {"class": "dog", "probability": pytest.approx(0.2)}]
    (tmp_path / "export" / "onnx-int8.bin").unlink()
    assert serve.load_served_model(tmp_path).engine == "onnx (stub runtime 1.0)"  # a float file says so


@pytest.fixture
def exported_run(shipped_runs, tmp_path, monkeypatch):
    from cifar_core import export

    monkeypatch.setenv("CIFAR_CORE_CACHE", str(shipped_runs["cache"]))
    run_dir = tmp_path / "demo-tiny"
    shutil.copytree(shipped_runs["runs"] / "demo-tiny", run_dir)
    export.export_run(run_dir, "onnx", source=str(shipped_runs["data"]), progress=lambda line: None)
    return run_dir


@pytest.mark.integration  # exports a model (and starts a server)
def test_the_service_runs_the_verified_export_and_answers_like_keras(exported_run):
    from cifar_core.imaging import decode_image, resize_image
    from cifar_core.inference import classify_arrays, load_run_model

    served = serve.load_served_model(exported_run)
    assert served.engine.startswith("onnx (onnxruntime")
    top = served.top_k(decode_image(PHOTO), 3)
    run = load_run_model(exported_run)
    expected = classify_arrays(run, [resize_image(decode_image(PHOTO), 32)])[0]
    assert top[0]["class"] == run.class_names[int(np.argmax(expected))]
    assert top[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-3)


@pytest.mark.integration  # exports a model (and starts a server)
def test_a_tampered_or_unlisted_export_is_not_served(exported_run):
    (exported_run / "export" / "model.onnx").write_bytes(b"tampered")
    assert serve.load_served_model(exported_run).engine == "keras (no verified export)"
    (exported_run / "export" / "manifest.json").write_text("{broken")
    assert serve.verified_exports(exported_run) == []
    manifest = {"exports": {"onnx": {"format": "onnx", "file": "../../model.keras", "within_tolerance": True}}}
    (exported_run / "export" / "manifest.json").write_text(json.dumps(manifest))
    assert serve.verified_exports(exported_run) == []  # only files inside the export folder


def test_serving_nothing_or_a_non_run_is_refused(tmp_path):
    with pytest.raises(CifarError, match=r"^name at least one run to serve \(--run RUN_DIR\)$"):
        serve.serve([])
    with pytest.raises(CifarError, match="not a finished run folder"):
        serve.load_served_model(tmp_path)


@pytest.mark.integration  # exports a model (and starts a server)
def test_a_short_load_with_hostile_requests_gets_no_5xx_and_the_server_stays_up(exported_run):
    from tools import load_test

    port = load_test.free_port()
    server = load_test.start_server([str(exported_run)], port)
    try:
        report = load_test.run_load(f"http://127.0.0.1:{port}", clients=4, seconds=4, hostile_every=3,
                                    server_pid=server.pid)
    finally:
        server.terminate()
        server.wait(20)
    assert report["server_errors"] == 0 and report["still_answers"]
    assert report["statuses"].get("200", 0) > 0 and report["latency_ms"]["p50"] > 0
    refused = {status for found in report["hostile"].values() for status in found}
    assert refused and refused <= {"400", "413"}  # every hostile kind refused with a 4xx, none served
    memory = report["server_memory_mb"]
    assert memory and memory["peak"] < memory["start"] + 300


# --- the upload reader and the service's edges, one behaviour each ---------------------------------

class _Request:
    """What the upload reader uses of a Starlette request."""

    def __init__(self, headers=None, form=None):
        self.headers = headers or {}
        self._form = form or {}
        self.form_limits = None

    async def form(self, **limits):
        self.form_limits = limits
        return self._form


class _Upload:
    def __init__(self, data: bytes):
        self.data, self.asked = data, []

    async def read(self, size):
        self.asked.append(size)
        return self.data[:size]


def test_the_declared_size_is_checked_at_the_exact_cap_before_reading():
    from cifar_core.uploads import FORM_OVERHEAD_BYTES, size_refusal

    cap = 1000 + FORM_OVERHEAD_BYTES
    assert size_refusal(_Request({"content-length": str(cap)}), 1000) is None
    assert size_refusal(_Request({"content-length": str(cap + 1)}), 1000) == (413, "Images up to 1000 bytes, please.")
    for headers in ({}, {"content-length": ""}, {"content-length": "-5"}, {"content-length": "12abc"}):
        assert size_refusal(_Request(headers), 1000) == (411, "The upload must declare its size (Content-Length).")


def test_a_file_over_the_cap_is_refused_after_reading_cap_plus_one():
    import asyncio

    from cifar_core.errors import ImageDecodeError
    from cifar_core.uploads import MAX_FORM_FIELDS, single_file

    upload = _Upload(b"x" * 50)
    request = _Request(form={"image": upload})
    with pytest.raises(ImageDecodeError, match="larger than 10 bytes"):
        asyncio.run(single_file(request, "image", 10))
    assert upload.asked == [11] and request.form_limits == {"max_files": 1, "max_fields": MAX_FORM_FIELDS}
    fits = _Upload(b"x" * 10)
    assert asyncio.run(single_file(_Request(form={"image": fits}), "image", 10))[0] == b"x" * 10


def test_two_files_or_too_many_fields_are_a_400(client):
    two = client.post("/v1/predict", files=[("image", ("a.png", io.BytesIO(PHOTO), "image/png")),
                                            ("image", ("b.png", io.BytesIO(PHOTO), "image/png"))])
    assert two.status_code == 400 and "error" in two.json()
    many = client.post("/v1/predict", files={"image": ("a.png", io.BytesIO(PHOTO), "image/png")},
                       data={f"field{i}": "x" for i in range(6)})
    assert many.status_code == 400 and "error" in many.json()


def test_empty_choices_mean_the_defaults_and_the_top_k_bound_is_inclusive(client):
    every = _post(client, model="", top_k="").json()["predictions"]
    assert [p["model"] for p in every] == ["a", "b"] and all(len(p["top_k"]) == 3 for p in every)
    assert len(_post(client, top_k="3").json()["predictions"][0]["top_k"]) == 3  # as many as there are classes
    long_name = _post(client, model="m" * 200).json()["error"]
    assert "m" * 80 in long_name and "m" * 81 not in long_name  # an echo of the input, bounded
    long_k = _post(client, top_k="9" * 50).json()["error"]
    assert "9" * 20 in long_k and "9" * 21 not in long_k


def test_the_docs_name_the_service(client):
    info = client.get("/openapi.json").json()["info"]
    assert info["title"] == "CIFAR-10 Studio prediction service"
    assert info["description"] == "Top-k classes of an image from the studio's trained runs."


def test_without_a_verified_export_the_keras_model_serves_in_inference_mode(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cifar_core import export, inference, runs

    runs.atomic_write_json(tmp_path / runs.DATA_FILE, {"class_names": list(CLASSES)})
    runs.atomic_write_json(tmp_path / runs.METRICS_FILE, {"test_accuracy": 0.5})
    calls = []

    def model(batch, training):
        calls.append((batch.shape, training))
        return np.array([[0.6, 0.3, 0.1]])

    run = SimpleNamespace(model="the keras model", data_image_size=24, input_size=48, class_names=CLASSES)
    monkeypatch.setattr(inference, "load_run_model", lambda run_dir: run if run_dir == tmp_path else None)
    monkeypatch.setattr(export, "portable_model", lambda keras_model, size, input_size:
                        model if (keras_model, size, input_size) == ("the keras model", 24, 48) else None)
    served = serve.load_served_model(tmp_path)
    assert (served.id, served.class_names, served.image_size, served.test_accuracy, served.engine) == (
        tmp_path.name, CLASSES, 24, 0.5, "keras (no verified export)")
    assert served.top_k(np.zeros((30, 30, 3), np.uint8), 1) == [{"class": "cat", "probability": pytest.approx(0.6)}]
    assert calls == [((1, 24, 24, 3), False)]


def test_serve_starts_uvicorn_on_the_given_address_once_every_run_loaded(monkeypatch, tmp_path):
    import uvicorn

    started, lines = [], []
    monkeypatch.setattr(serve, "load_served_model", lambda run_dir: _stub(Path(run_dir).name))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    serve.serve([tmp_path / "a", tmp_path / "b"], host="0.0.0.0", port=9001, progress=lines.append)
    (app, options), = started
    assert options["host"] == "0.0.0.0" and options["port"] == 9001
    # Its bounds: at most 64 connections at once (more get a 503) and idle keep-alives closed after 5 s.
    assert options["limit_concurrency"] == 64 and options["timeout_keep_alive"] == 5
    assert options["log_level"] == "warning"  # no access line per request in the terminal
    assert [route.path for route in app.routes if route.path.startswith("/v1")] == ["/v1/models", "/v1/predict"]
    assert lines == ["a: stub engine", "b: stub engine", "serving on http://0.0.0.0:9001 (docs at /docs)"]
    with pytest.raises(CifarError, match="^two runs share a folder name; serve each run once$"):
        serve.serve([tmp_path / "a", tmp_path / "x" / "a"], progress=lines.append)
    assert len(started) == 1


def test_an_export_at_the_size_cap_is_served_and_one_byte_over_is_not(tmp_path, monkeypatch):
    from cifar_core import export

    _fake_exports(tmp_path, {"onnx": {"format": "onnx"}})
    monkeypatch.setattr(export, "MAX_ARTEFACT_BYTES", len(b"onnx"))
    assert [path.name for _, path in serve.verified_exports(tmp_path)] == ["onnx.bin"]
    monkeypatch.setattr(export, "MAX_ARTEFACT_BYTES", len(b"onnx") - 1)
    assert serve.verified_exports(tmp_path) == []


def test_probabilities_are_answered_to_six_decimals():
    third = serve.ServedModel("m", CLASSES, 32, 0.9, "stub", lambda batch: np.array([[1 / 3, 1 / 3, 1 / 3]]))
    assert [answer["probability"] for answer in third.top_k(np.zeros((32, 32, 3), np.uint8), 3)] == [0.333333] * 3
