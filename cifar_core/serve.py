"""`python -m cifar_core serve --run RUN_DIR [--run RUN_DIR ...] [--host 127.0.0.1] [--port 8000]`.

A prediction service on FastAPI + uvicorn, OpenAPI docs at /docs:
- POST /v1/predict: a multipart image (field `image`), optional `model` and `top_k`;
- GET /v1/models: the loaded runs with their test accuracy and the engine that runs each;
- GET /healthz: liveness.

Each run is served by its fastest verified export (`RUN_DIR/export/manifest.json`: a LiteRT or
ONNX file that passed its parity check and whose bytes still match the recorded sha256), so
no TensorFlow import is needed; without one, by its Keras model. Uploads go through the size cap
and the studio's one validating decoder; every refusal is a 4xx JSON `{"error": ...}`, never a
traceback. It binds to 127.0.0.1 unless told otherwise.
"""
# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (Request, imported where the app is made) at run time.
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import runs
from .errors import CifarError, RunFolderError
from .uploads import MAX_UPLOAD_BYTES, single_file, size_refusal

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_TOP_K = 3
# Formats the service may run without TensorFlow, and the runtimes it needs for them.
LIGHT_FORMATS = ("tflite", "onnx")


@dataclass
class ServedModel:
    id: str
    class_names: tuple[str, ...]
    image_size: int
    test_accuracy: float | None
    engine: str
    predict: object  # float32 (n, size, size, 3) 0..255 -> probabilities
    lock: threading.Lock = field(default_factory=threading.Lock)

    def top_k(self, image: np.ndarray, k: int) -> list[dict]:
        from .imaging import resize_image

        batch = resize_image(image, self.image_size)[None].astype(np.float32)
        with self.lock:  # a LiteRT interpreter serves one call at a time; two cores gain nothing more
            probabilities = np.asarray(self.predict(batch))[0]
        order = np.argsort(probabilities)[::-1][:k]
        return [{"class": self.class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order]

    def description(self) -> dict:
        return {"id": self.id, "test_accuracy": self.test_accuracy, "engine": self.engine,
                "classes": list(self.class_names), "input": [self.image_size, self.image_size, 3]}


def verified_exports(run_dir: Path) -> list[tuple[dict, Path]]:
    """The run's exports that passed their parity check and still match their recorded bytes,
    fastest first (batch-1 latency on the machine that measured them)."""
    from .export import EXPORT_DIR, MAX_ARTEFACT_BYTES, ExportError, artefact_sha256, read_manifest

    folder = run_dir / EXPORT_DIR
    try:
        manifest = read_manifest(folder)
    except ExportError:
        return []  # a damaged manifest: serve the Keras model
    found = []
    for entry in manifest.values():
        if entry["format"] not in LIGHT_FORMATS or not entry["within_tolerance"]:
            continue
        path = folder / entry["file"]  # a plain name: read_manifest checked each field
        try:
            info = path.lstat()  # one look: a link, a folder or a pipe is not a served file
        except OSError:
            continue
        # A regular file of the declared size, within a bound, before the hash reads every byte.
        declared = stat.S_ISREG(info.st_mode) and info.st_size == entry["size_bytes"] <= MAX_ARTEFACT_BYTES
        if declared and artefact_sha256(path) == entry["sha256"]:
            found.append((entry, path))
    return sorted(found, key=lambda pair: pair[0]["latency_ms_p50"])


def load_served_model(run_dir: Path | str) -> ServedModel:
    run_dir = Path(run_dir)
    data = runs.read_data_info(run_dir)
    if data is None:
        raise RunFolderError(f"{run_dir}: not a finished run folder (no {runs.DATA_FILE})")
    class_names = tuple(data["class_names"])
    metrics = runs.read_metrics(run_dir) or {}
    for entry, path in verified_exports(run_dir):
        if entry["class_names"] != list(class_names):
            continue
        from .export import load_runner

        try:
            runner = load_runner(entry["format"], path)
        except ImportError:
            continue  # its runtime is not installed here
        name = f"{entry['format']}{' int8' if entry.get('quantize') else ''}"
        return ServedModel(run_dir.name, class_names, int(entry["input"]["shape"][1]), metrics.get("test_accuracy"),
                           f"{name} ({runner.runtime})", runner.predict)
    from .inference import load_run_model

    run = load_run_model(run_dir)
    from .export import portable_model

    model = portable_model(run.model, run.data_image_size, run.input_size)
    return ServedModel(run_dir.name, run.class_names, run.data_image_size, metrics.get("test_accuracy"),
                       "keras (no verified export)", lambda batch: model(batch, training=False))


def create_app(models: list[ServedModel], max_upload_bytes: int = MAX_UPLOAD_BYTES):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    by_id = {model.id: model for model in models}
    app = FastAPI(title="CIFAR-10 Studio prediction service",
                  description="Top-k classes of an image from the studio's trained runs.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_problem(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(422, "; ".join(str(problem.get("msg")) for problem in exc.errors()) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # the last line of defence: a message, never a traceback
        return error(500, f"internal error ({type(exc).__name__})")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "models": len(by_id)}

    @app.get("/v1/models")
    def list_models():
        return {"models": [model.description() for model in models]}

    @app.post("/v1/predict", openapi_extra=PREDICT_FORM)
    async def predict(request: Request):
        """Multipart form: `image` (a JPEG, PNG, WebP, GIF or BMP file), optional `model` (an id from
        /v1/models; default: every model) and `top_k` (1..number of classes, default 3)."""
        from starlette.concurrency import run_in_threadpool

        from .imaging import decode_image

        started = time.perf_counter()
        refusal = size_refusal(request, max_upload_bytes)
        if refusal:
            return error(*refusal)
        try:
            data, form = await single_file(request, "image", max_upload_bytes)
            chosen = _chosen_models(form.get("model"), by_id, models)
            k = _top_k(form.get("top_k"), min(len(m.class_names) for m in chosen))
            image = decode_image(data, "image")
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        except (CifarError, ValueError) as exc:
            return error(400, str(exc))
        answers = []
        for model in chosen:
            begun = time.perf_counter()
            top = await run_in_threadpool(model.top_k, image, k)
            answers.append({"model": model.id, "engine": model.engine, "top_k": top,
                            "milliseconds": round((time.perf_counter() - begun) * 1000, 2)})
        return {"predictions": answers, "milliseconds": round((time.perf_counter() - started) * 1000, 2)}

    return app


# The multipart form, for /docs: the route reads the body itself (after the size check), so
# FastAPI cannot infer it.
PREDICT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, GIF or BMP, up to 8 MiB"},
        "model": {"type": "string", "description": "a model id from /v1/models (default: every model)"},
        "top_k": {"type": "integer", "minimum": 1, "description": "classes per model (default 3)"}}}}}}}


def _chosen_models(requested, by_id: dict, models: list[ServedModel]) -> list[ServedModel]:
    if requested is None or requested == "":
        return models
    if not isinstance(requested, str) or requested not in by_id:
        raise LookupError(f"no model {str(requested)[:80]!r}; GET /v1/models lists them: {', '.join(by_id)}")
    return [by_id[requested]]


def _top_k(value, most: int) -> int:
    if value is None or value == "":
        return min(DEFAULT_TOP_K, most)
    if not isinstance(value, str) or not value.strip().isdigit() or not 1 <= int(value) <= most:
        raise ValueError(f"top_k must be a whole number from 1 to {most}; received {str(value)[:20]!r}")
    return int(value)


def serve(run_dirs: list[Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, progress=print) -> None:
    import uvicorn

    if not run_dirs:
        raise CifarError("name at least one run to serve (--run RUN_DIR)")
    models = []
    for run_dir in run_dirs:
        model = load_served_model(run_dir)
        progress(f"{model.id}: {model.engine}")
        models.append(model)
    if len({model.id for model in models}) != len(models):
        raise CifarError("two runs share a folder name; serve each run once")
    progress(f"serving on http://{host}:{port} (docs at /docs)")
    uvicorn.run(create_app(models), host=host, port=port, log_level="warning", limit_concurrency=64,
                timeout_keep_alive=5)
