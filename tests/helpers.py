"""Helpers shared by tests: measuring a hostile input's cost in a fresh process,
and crafting the hostile files themselves."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("cat", "dog", "ship")
CIFAR10_CLASSES_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                         "truck")
# The promise in README: a hostile input is refused in under 2 s and under 500 MB
# above the process's baseline.
MAX_SECONDS = 2.0
MAX_EXTRA_MB = 500

_PROBE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
{setup}
def _vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
# A safety net so a regression fails this test instead of the machine: 1.5 GB more address space.
limit = _vm_bytes() + 1536 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
{action}
    outcome = {{"refused": False, "message": ""}}
except BaseException as exc:
    outcome = {{"refused": True, "type": type(exc).__name__, "message": str(exc)}}
outcome["seconds"] = time.perf_counter() - started
outcome["extra_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
print(json.dumps(outcome))
"""


def measure(setup: str, action: str, timeout: float = 60.0) -> dict:
    """Run `action` in a fresh Python after `setup` (imports happen there, before the
    baseline); returns refused/type/message, seconds and extra_mb (peak RSS growth)."""
    script = _PROBE.format(root=str(ROOT), setup=textwrap.dedent(setup),
                           action=textwrap.indent(textwrap.dedent(action), "    "))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_refused_within_bounds(outcome: dict, error_type: str, message: str) -> None:
    # `pytest -m measured -s` prints the figures the README's promise rests on.
    print(f"\n{error_type}: {outcome['seconds']:.3f} s, +{outcome['extra_mb']:.1f} MB peak: {outcome['message'][:90]}")
    assert outcome["refused"], "the hostile input was accepted"
    assert outcome["type"] == error_type, outcome
    assert message in outcome["message"], outcome["message"]
    assert "\n" not in outcome["message"]
    assert outcome["seconds"] < MAX_SECONDS, outcome
    assert outcome["extra_mb"] < MAX_EXTRA_MB, outcome


PAGE_TIMEOUT = 120


def open_page(path: str):
    """Run one dashboard page in Streamlit's AppTest; it must not raise."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / path), default_timeout=PAGE_TIMEOUT)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


# --- crafted files ----------------------------------------------------------------

def traced_peak(call) -> tuple[object, int]:
    """What `call` returns, and the most memory Python and numpy held at once during it (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def jpeg_with_scans(n_scans: int, size: int = 64) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has n_scans scans
    (libjpeg only warns about a repeated refinement scan and decodes on)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    present = data.count(b"\xff\xda")
    assert n_scans >= present
    return data[:end] + data[last_scan:end] * (n_scans - present) + data[end:]


def png_header_only(width: int, height: int, bit_depth: int = 16, color_type: int = 0) -> bytes:
    """A PNG that declares width x height pixels and carries no image data at all."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")


def tar_with_declared_member(path: Path, name: str, declared_size: int, kind: bytes = tarfile.REGTYPE,
                             mode: str = "w:gz") -> Path:
    """A tar whose one member's header declares declared_size bytes but holds only a few."""
    info = tarfile.TarInfo(name)
    info.size = declared_size
    info.type = kind
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    raw = header + b"\0" * 1024
    if mode == "w:gz":
        import gzip

        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def tensorflow_and_keras_imported_by(code: str) -> str:
    """Run `code` in a fresh interpreter at the project root; 'False False' when it imported
    neither TensorFlow nor Keras."""
    import subprocess
    import sys

    probe = f"import sys; {code}; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def damage_deflate(path: Path, where: str = "start") -> Path:
    """Damage the first member's deflate stream of a zip in place: at its start (zlib refuses the
    stream) or in the middle of the file (the stream decodes; its CRC-32 does not match)."""
    data = bytearray(path.read_bytes())
    name_length, extra_length = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
    start = 30 + name_length + extra_length if where == "start" else len(data) // 2
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return path


def set_zip_flag(data: bytes, flag: int) -> bytes:
    """Set a general-purpose flag bit (0x1: encrypted) in every central directory entry."""
    out = bytearray(data)
    start = 0
    while (start := out.find(b"PK\x01\x02", start)) >= 0:
        out[start + 8] |= flag
        start += 4
    return bytes(out)


def keras_file(path: Path, config: dict, weights: bytes = b"", compress_type: int = zipfile.ZIP_STORED) -> Path:
    """A .keras archive with the given config (and optional weights bytes)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr(zipfile.ZipInfo("config.json"), json.dumps(config), compress_type=compress_type)
        if weights:
            archive.writestr("model.weights.h5", weights)
    return path


def rewrite_keras_config(source: Path, target: Path, mutate) -> Path:
    """A copy of a .keras file with its config.json passed through `mutate` (every other member as it was)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for name in original.namelist():
            data = original.read(name)
            if name == "config.json":
                data = json.dumps(mutate(json.loads(data))).encode()
            copy.writestr(name, data)
    return Path(target)


def layer(class_name: str, config: dict, input_shape=None) -> dict:
    node = {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}
    if input_shape is not None:
        node["build_config"] = {"input_shape": input_shape}
    return node


def functional(*layers: dict) -> dict:
    return {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": "m", "layers": list(layers)}}


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_official_batches(folder: Path, per_batch: int = 5, protocol: int = 2) -> Path:
    """A miniature cifar-10-batches-py/ in the official pickle format."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES_NAMES]},
                                                       protocol=protocol))
    return folder


def stop_after_epoch(epoch: int):
    """A Keras callback that simulates Ctrl-C (or the dashboard's cancel) at the end of an epoch."""
    import keras

    class StopAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index + 1 == epoch:
                raise KeyboardInterrupt

    return StopAfterEpoch()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export_entry(content: bytes, **fields) -> dict:
    """A manifest entry as `export_run` writes one, for a file holding `content`; `fields` on top."""
    import hashlib

    return {"format": "onnx", "quantize": None, "file": "model.onnx", "runtime": "onnxruntime 1.0",
            "input": {"shape": [None, 32, 32, 3], "dtype": "float32", "pixels": "RGB 0-255"},
            "size_bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(), "accuracy": 0.5,
            "keras_accuracy": 0.5, "agreement": 1.0, "within_tolerance": True, "latency_ms_p50": 1.0,
            "latency_ms_p95": 2.0, "throughput_batch64": 100.0, "class_names": list(CLASSES), **fields}


# Each way an analysis file can be well-formed JSON or npz and still unlike what `analyze` writes,
# by file: what a page would otherwise index, format or plot. Each damage changes the content given
# the run's class and test-image counts (the edge just out of range) and names the refusal it expects.
def _run_counts(path: Path) -> tuple[int, int]:
    info = json.loads((path.parent.parent / "data.json").read_text())
    return len(info["class_names"]), info["n_test"]


def _json_damage(change, refusal: str):
    def damage(path):
        content = json.loads(path.read_text())
        change(content, *_run_counts(path))
        path.write_text(json.dumps(content))
    return damage, refusal


def _npz_damage(change, refusal: str):
    def damage(path):
        with np.load(path) as npz:
            arrays = dict(npz)
        change(arrays, *_run_counts(path))
        np.savez(path, **arrays)
    return damage, refusal


def _replace(path_text: str):
    def damage(path):
        path.write_text(path_text)
    return damage


def _set(array_name: str, index, value):
    return lambda arrays, n_classes, n_test: arrays[array_name].__setitem__(
        index, value(n_classes, n_test) if callable(value) else value)


ANALYSIS_DAMAGES = {
    "calibration": {
        "a field missing": _json_damage(lambda c, k, n: c.pop("temperature"), "has no temperature"),
        "a temperature outside the fit's bounds": _json_damage(lambda c, k, n: c.update(temperature=1e6),
                                                               "temperature has an unexpected value"),
        "a bin of the wrong kind": _json_damage(lambda c, k, n: c["bins"]["before"].__setitem__(0, {"count": "3"}),
                                                "bins has an unexpected value"),
        "not an object": _json_damage(lambda c, k, n: c.clear() or c.update(bins=[]), "has no temperature"),
        "not JSON": (_replace('{"temperature": '), "is not valid JSON"),
    },
    "robustness": {
        "a curve without one accuracy per severity": _json_damage(
            lambda c, k, n: next(iter(c["corruptions"].values())).pop(), "one accuracy per severity"),
        "an accuracy above 1": _json_damage(lambda c, k, n: c.update(clean_accuracy=1.01),
                                            "clean_accuracy has an unexpected value"),
        "no attack rows": _json_damage(lambda c, k, n: c.update(fgsm=[]), "fgsm has an unexpected value"),
    },
    "labels": {
        "an image index just past the test split": _json_damage(lambda c, k, n: c[0].update(index=n),
                                                                "distinct test images"),
        "an image listed twice": _json_damage(lambda c, k, n: c[1].update(index=c[0]["index"]),
                                              "distinct test images"),
        "a given class just past the run's": _json_damage(lambda c, k, n: c[0].update(given=k),
                                                         "beyond the run's"),
        "a suggested class just past the run's": _json_damage(lambda c, k, n: c[1].update(suggested=k),
                                                             "beyond the run's"),
        "an issue that is no record": _json_damage(lambda c, k, n: c.__setitem__(0, [1, 2]), "a list of label issues"),
    },
    "embedding": {
        "coordinates of the wrong shape": _npz_damage(
            lambda a, k, n: a.update(coords=np.zeros((len(a["coords"]), 3))), "coords must be finite"),
        "a class just past the run's": _npz_damage(_set("labels", 0, lambda k, n: k), "labels must be"),
        "a prediction just past the run's": _npz_damage(_set("predictions", 1, lambda k, n: k), "predictions must be"),
        "a negative image index": _npz_damage(_set("indices", 0, -1), "indices must be"),
        "an image index just past the test split": _npz_damage(_set("indices", 0, lambda k, n: n), "indices must be"),
        "NaN coordinates": _npz_damage(_set("coords", (0, 0), np.nan), "coords must be finite"),
        "arrays of different lengths": _npz_damage(lambda a, k, n: a.update(predictions=a["predictions"][:-1]),
                                                   "predictions must be"),
        "fractional classes": _npz_damage(lambda a, k, n: a.update(labels=a["labels"].astype(np.float32)),
                                          "labels must be"),
        "an array missing": _npz_damage(lambda a, k, n: a.pop("predictions"), "embedding.npz in"),
    },
    "neighbours.npz": {
        "components that do not match the mean": _npz_damage(lambda a, k, n: a.update(mean=np.zeros(3)),
                                                             "components must be finite"),
        "a NaN mean": _npz_damage(_set("mean", 0, np.nan), "mean must be a finite vector"),
        "a mean of the wrong shape": _npz_damage(lambda a, k, n: a.update(mean=a["mean"][None]),
                                                 "mean must be a finite vector"),
        "features that do not match the components": _npz_damage(
            lambda a, k, n: a.update(features=a["features"][:, :1]), "features must be finite"),
        "a class just past the run's": _npz_damage(_set("labels", 0, lambda k, n: k), "labels must be one class"),
        "NaN features": _npz_damage(lambda a, k, n: a.update(features=np.full_like(a["features"], np.nan)),
                                    "features must be finite"),
        "text components": _npz_damage(lambda a, k, n: a.update(components=a["components"].astype(str)),
                                       "components must be finite"),
        "whole-number features": _npz_damage(lambda a, k, n: a.update(features=a["features"].astype(np.int32)),
                                             "features must be finite"),
    },
}


def write_sound_analyses(run_dir: Path, n_test: int = 20) -> None:
    """A run folder's data.json (3 classes, `n_test` test images) and one small analysis file of each
    kind, as `analyze` writes them: what ANALYSIS_DAMAGES damages, without computing anything."""
    from cifar_core import runs
    from cifar_core.analysis import analysis_path

    runs.atomic_write_json(run_dir / runs.DATA_FILE, {"class_names": list(CLASSES), "n_test": n_test})
    (run_dir / "analysis").mkdir(parents=True, exist_ok=True)
    bins = [{"lower": 0.0, "upper": 0.5, "count": 3, "confidence": 0.4, "accuracy": 0.3},
            {"lower": 0.5, "upper": 1.0, "count": 0, "confidence": None, "accuracy": None}]
    documents = {
        "calibration": {"temperature": 1.5, "fitted_on": "the validation split", "n_fit": 10, "n_test": n_test,
                        "ece_before": 0.1, "ece_after": 0.05, "nll_before": 0.9, "nll_after": 0.8,
                        "brier_before": 0.4, "brier_after": 0.35, "bins": {"before": bins, "after": bins}},
        "robustness": {"subset_size": n_test, "subset_seed": 0, "clean_accuracy": 0.9, "severities": [1, 2],
                       "corruptions": {"noise": [0.8, 0.7], "blur": [0.85, 0.6]}, "mean_corruption_accuracy": 0.74,
                       "fgsm": [{"epsilon": 0.0, "accuracy": 0.9}, {"epsilon": 0.03, "accuracy": 0.2}]},
        "labels": [{"index": 3, "given": 0, "suggested": 1, "quality": 0.1, "flagged": True},
                   {"index": 5, "given": 2, "suggested": 2, "quality": 0.4, "flagged": False}],
    }
    for name, document in documents.items():
        analysis_path(run_dir, name).write_text(json.dumps(document))
    rng = np.random.default_rng(0)
    np.savez(analysis_path(run_dir, "embedding"), coords=rng.normal(size=(n_test, 2)).astype(np.float32),
             indices=np.arange(n_test), labels=rng.integers(0, 3, n_test), predictions=rng.integers(0, 3, n_test))
    np.savez(analysis_path(run_dir, "neighbours.npz"), mean=np.zeros(4, np.float32),
             components=rng.normal(size=(2, 4)).astype(np.float32), features=rng.normal(size=(6, 2)).astype(np.float16),
             labels=rng.integers(0, 3, 6).astype(np.uint8))  # unsigned, where the embedding's are signed
