"""`python -m cifar_core export RUN_DIR --format {saved_model,tflite,onnx} [--quantize int8] [--out DIR]`.

Keras 3's own export paths write the file (`model.export`: SavedModel, LiteRT, ONNX); INT8 is
post-training quantization calibrated on images drawn from the training split (LiteRT's converter
through the same `model.export`; onnxruntime's static quantizer for ONNX, which tries a few settings
and keeps the one that agrees best with the float model on a held-out slice of the training split,
since no one setting suits every network and choosing by the test split would leak it). Nothing is called done
before the runtime a user would run it with (TensorFlow, LiteRT with XNNPACK, onnxruntime) has read
all 10,000 test images: its accuracy must be within 0.1 point of the Keras model's (1.0 for INT8),
and the result, top-1 agreement, size, sha256, latency and versions go into DIR/manifest.json.

The exported model takes what the studio's own reader takes: raw 0-255 RGB pixels at the dataset's
resolution (32x32 for CIFAR-10), float32, NHWC. Resizing to a transfer model's input and every
normalisation are inside the file, so a user's code is: load, resize to 32x32, run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from . import backend, runs, safeio, schema
from .errors import CifarError, ConfigError, RunFolderError

FORMATS = ("saved_model", "tflite", "onnx")
KERAS_FORMAT = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
FILE_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
QUANTIZATIONS = (None, "int8")
# Parity with the Keras model on the test split, in accuracy points.
TOLERANCE_POINTS = {None: 0.1, "int8": 1.0}
CALIBRATION_IMAGES = 256
HELD_OUT_IMAGES = 1000  # training images, disjoint from the calibration ones, that choose an ONNX INT8 setting
TRAINING_SLICE_SEED = 0
LATENCY_REPEATS = 200
THROUGHPUT_BATCH = 64
EVAL_BATCH = 256
MANIFEST = "manifest.json"
EXPORT_DIR = "export"  # RUN_DIR/export: the default home of a run's exports
MAX_MANIFEST_BYTES = 1 << 20
MAX_ARTEFACT_BYTES = 512 << 20  # an export read whole (a download, a hash at serve start); models are tens of MB
MAX_SAVED_MODEL_FILES = 1000
VERSIONED = ("tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert", "numpy")
# The distributions a package may be installed as (the studio pins tensorflow-cpu).
DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu")}


class ExportError(CifarError):
    """An export that could not be written, or that failed its parity check."""


@dataclass
class Runner:
    """An exported model loaded in its own runtime: predict(batch of float32 0..255 NHWC) -> probabilities."""
    predict: object
    runtime: str


def export_run(run_dir: Path | str, fmt: str, quantize: str | None = None, out_dir: Path | str | None = None,
               source: str | None = None, progress=print) -> dict:
    """Export, verify on the test split and record in the manifest; returns the manifest entry."""
    check_request(fmt, quantize)
    run_dir = Path(run_dir)
    if not (run_dir / runs.MODEL_FILE).is_file():  # before the lock, which would create the folder
        raise RunFolderError(f"{run_dir.name}: no trained model ({runs.MODEL_FILE}) in this run folder")
    out_dir = Path(out_dir) if out_dir else runs.ensure_subfolder(run_dir / EXPORT_DIR)
    if out_dir.resolve().is_relative_to(run_dir.resolve()):
        with runs.RunWriter(run_dir):  # one writer per run folder (a training resume, an analysis)
            return _export(run_dir, fmt, quantize, out_dir, source, progress)
    return _export(run_dir, fmt, quantize, out_dir, source, progress)


def check_request(fmt: str, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; received {fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be int8 or absent; received {quantize!r}")
    if quantize and fmt == "saved_model":
        raise ConfigError("INT8 quantization is for tflite and onnx; a SavedModel stays float32")


def _export(run_dir: Path, fmt: str, quantize: str | None, out_dir: Path, source: str | None, progress) -> dict:
    from .data import load_dataset
    from .inference import load_run_model

    backend.configure()
    run = load_run_model(run_dir)
    dataset = load_dataset(source or run.config.data)
    if dataset.x_test.shape[1] != run.data_image_size:
        raise ExportError(f"the data is {dataset.x_test.shape[1]} px; {run_dir.name} was trained from "
                          f"{run.data_image_size} px images")
    model = portable_model(run.model, run.data_image_size, run.input_size)
    name = f"{fmt}{'-int8' if quantize else ''}"
    target = out_dir / (FILE_NAMES[fmt] if not quantize else FILE_NAMES[fmt].replace(".", "-int8."))
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"exporting {run_dir.name} as {name} -> {target}")
    calibration, held_out = training_slices(dataset.x_train)
    quantization = write_export(model, fmt, quantize, target, calibration, held_out)
    progress("reading the 10,000 test images with the exported model")
    try:
        runner = load_runner(fmt, target)
    except Exception as exc:  # noqa: BLE001 - each runtime has its own error types
        _remove(target)  # never leave a file behind that its own runtime cannot read
        raise ExportError(f"{name}: the exported file does not load in its runtime ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    reference = keras_probabilities(model, dataset.x_test)
    exported = predict_in_batches(runner.predict, dataset.x_test, EVAL_BATCH)
    entry = {
        "format": fmt, "quantize": quantize, "file": target.name, "runtime": runner.runtime,
        "input": {"shape": [None, run.data_image_size, run.data_image_size, 3], "dtype": "float32",
                  "pixels": "RGB 0-255"},
        "size_bytes": artefact_size(target), "sha256": artefact_sha256(target),
        **({"quantization": quantization} if quantization else {}),
        **parity(reference, exported, dataset.y_test, TOLERANCE_POINTS[quantize]),
        **timing(runner.predict, dataset.x_test),
        # The run's own figure (its compute precision); the parity check is against the float32 copy.
        "run_test_accuracy": (runs.read_metrics(run_dir) or {}).get("test_accuracy"),
        "class_names": list(run.class_names), "run": run_dir.name, "machine": backend.cpu_name(),
        "cores": os.cpu_count(), "versions": versions(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record(out_dir, name, entry)
    if not entry["within_tolerance"]:
        raise ExportError(f"{name}: accuracy {entry['accuracy']:.2%} against the Keras model's "
                          f"{entry['keras_accuracy']:.2%} is outside the {TOLERANCE_POINTS[quantize]} point "
                          f"tolerance (recorded in {out_dir / MANIFEST})")
    return entry


def portable_model(model, image_size: int, input_size: int):
    """A float32 copy of `model` that takes raw pixels at the dataset's resolution: mixed-precision
    layers are computed in float32 (bf16 is not a portable type) and the resize to a transfer model's
    input happens inside, exactly as the studio's pipeline does it (bilinear)."""
    import keras

    from .models.layers import TanhGelu

    def in_float32(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        if isinstance(layer, keras.layers.Normalization) and config.get("mean") is not None:
            return _as_rescaling(config)
        if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D)):
            # Identity at inference; kept, its random ops survive tf2onnx's freezing into the graph.
            return keras.layers.Identity(name=config["name"], dtype="float32")
        if isinstance(layer, keras.layers.Activation) and config.get("activation") == "gelu":
            # Exact GELU lowers to Erfc, which neither ONNX nor LiteRT has: export the tanh form,
            # within 1e-3 of it (and the form fastnet trains with).
            return TanhGelu(name=config["name"], dtype="float32")
        return type(layer).from_config(config)

    plain = keras.models.clone_model(model, clone_function=in_float32)
    plain.set_weights(model.get_weights())
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs if input_size == image_size else keras.layers.Resizing(
        input_size, input_size, interpolation="bilinear", name="to_model_input")(inputs)
    return keras.Model(inputs, plain(x), name=f"{model.name}_portable")


def _as_rescaling(config: dict):
    """A fixed Normalization as the Rescaling it equals, (x - mean) / std = x / std - mean / std:
    Keras keeps a Normalization's given statistics as eager tensors, which tf2onnx turns into
    extra graph inputs; a Rescaling's lists become constants of the graph."""
    import keras

    mean = np.asarray(config["mean"], np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(config["variance"], np.float64).reshape(-1)), keras.config.epsilon())
    return keras.layers.Rescaling(scale=(1 / std).tolist(), offset=(-mean / std).tolist(), name=config["name"],
                                  dtype="float32")


def training_slices(x_train: np.ndarray, calibration: int = CALIBRATION_IMAGES,
                    held_out: int = HELD_OUT_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded samples of the training split (never the test split), as float32: the
    INT8 calibration images and the held-out images that choose between quantization settings.
    A small training split is shared half and half; a one-image split has no image to hold out, so
    its image does both jobs (the choice is then a check on the calibration image, not a held-out one)."""
    order = np.random.default_rng(TRAINING_SLICE_SEED).permutation(len(x_train))
    n_calibration = min(calibration, -(-len(x_train) // 2))
    chosen = np.sort(order[:n_calibration]), np.sort(order[n_calibration:n_calibration + held_out])
    if not len(chosen[1]):
        chosen = chosen[0], chosen[0]
    return tuple(x_train[indices].astype(np.float32) for indices in chosen)


def write_export(model, fmt: str, quantize: str | None, target: Path, calibration: np.ndarray,
                 held_out: np.ndarray) -> dict | None:
    """Keras' own export to a temporary name, then a rename: a failed export leaves nothing behind.
    Returns how an ONNX INT8 file's setting was chosen (None for the others)."""
    import keras

    signature = [keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")]
    # The target's own name (Keras' LiteRT export insists on ".tflite"), in a fresh private folder.
    with safeio.private_path_beside(target) as temporary:
        try:
            quantization = _export_to(model, fmt, quantize, temporary, signature, calibration, held_out)
            _remove(target)
            os.replace(temporary, target)
            return quantization
        except CifarError:
            raise
        except Exception as exc:  # noqa: BLE001 - converters raise anything; the user gets one clear line
            raise ExportError(f"{fmt}{' int8' if quantize else ''} export failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None


def _export_to(model, fmt: str, quantize: str | None, path: Path, signature, calibration: np.ndarray,
               held_out: np.ndarray) -> dict | None:
    if fmt == "tflite" and quantize == "int8":
        import tensorflow as tf

        def representative():
            for image in calibration:
                yield [image[None]]

        model.export(str(path), format="litert", verbose=False, optimizations=[tf.lite.Optimize.DEFAULT],
                     representative_dataset=representative)
        return None
    if fmt == "onnx" and quantize == "int8":
        float_file = path.with_name(path.stem + ".float.onnx")
        model.export(str(float_file), format="onnx", verbose=False, input_signature=signature)
        return quantize_onnx(float_file, path, calibration, held_out)
    extra = {} if fmt == "tflite" else {"input_signature": signature}
    model.export(str(path), format=KERAS_FORMAT[fmt], verbose=False, **extra)
    return None


def onnx_int8_settings() -> dict[str, dict]:
    """onnxruntime static-quantization settings tried, most quantized first (the first wins a tie).
    Measured on the shipped runs: min-max ranges over every op suit EfficientNet-Lite0 and cost fastnet
    about 2 points (its activations have rare large values); fastnet keeps its accuracy with the
    1st-99.999th percentile range or with only Conv/MatMul/Gemm quantized, which costs Lite0 4 points."""
    from onnxruntime.quantization import CalibrationMethod

    return {"all ops, min-max ranges": {},
            "all ops, percentile ranges": {"calibrate_method": CalibrationMethod.Percentile},
            "conv and matmul only, min-max ranges": {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"]}}


def quantize_onnx(float_file: Path, target: Path, calibration: np.ndarray, held_out: np.ndarray) -> dict:
    """onnxruntime's static INT8 quantization (QDQ, per-channel weights) calibrated on `calibration`,
    in the setting whose top-1 answers agree most with the float model's on `held_out`."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = float_file.with_name(float_file.name + ".prepared.onnx")
    quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=True)  # ONNX's own inference suffices
    input_name = onnxruntime.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    def quantized(setting: dict, path: Path) -> np.ndarray:
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **setting)
        return held_out_answers(path)

    def held_out_answers(path: Path) -> np.ndarray:
        return predict_in_batches(load_runner("onnx", path).predict, held_out, EVAL_BATCH).argmax(1)

    candidates = {name: target.with_name(f"{target.stem}.{index}{target.suffix}")
                  for index, name in enumerate(onnx_int8_settings())}
    try:
        reference = held_out_answers(float_file)
        agreement = {name: round(float(np.mean(quantized(setting, candidates[name]) == reference)), 4)
                     for name, setting in onnx_int8_settings().items()}
        chosen = choose_setting(agreement)
        os.replace(candidates[chosen], target)
    finally:
        for path in (prepared, *candidates.values()):
            _remove(path)
    return {"setting": chosen, "held_out_agreement": agreement, "held_out_images": len(held_out),
            "calibration_images": len(calibration)}


def choose_setting(agreement: dict[str, float]) -> str:
    """The setting that agrees most with the float model; the earliest listed among equals."""
    return max(agreement, key=lambda name: (agreement[name], -list(agreement).index(name)))


def load_runner(fmt: str, path: Path) -> Runner:
    """The exported file in the runtime a user would run it with, on this machine's cores."""
    threads = os.cpu_count() or 1
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return Runner(lambda batch: session.run(None, {name: batch})[0], f"onnxruntime {_version('onnxruntime')}")
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        shape = {"current": None}
        input_index = interpreter.get_input_details()[0]["index"]
        output_index = interpreter.get_output_details()[0]["index"]

        def predict(batch):
            if shape["current"] != batch.shape:
                interpreter.resize_tensor_input(input_index, batch.shape)
                interpreter.allocate_tensors()
                shape["current"] = batch.shape
            interpreter.set_tensor(input_index, batch)
            interpreter.invoke()
            return interpreter.get_tensor(output_index).copy()

        return Runner(predict, f"ai-edge-litert {_version('ai-edge-litert')} (XNNPACK, {threads} threads)")
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return Runner(lambda batch: loaded.serve(tf.constant(batch)).numpy(), f"tensorflow {tf.__version__}")


def keras_probabilities(model, images: np.ndarray) -> np.ndarray:
    return model.predict(images.astype(np.float32), batch_size=EVAL_BATCH, verbose=0)


def predict_in_batches(predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(predict(images[i:i + batch_size].astype(np.float32)))
                           for i in range(0, len(images), batch_size)])


def parity(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray, tolerance_points: float) -> dict:
    """Accuracy of both on the labels, top-1 agreement, and whether the gap is within tolerance."""
    keras_accuracy = float(np.mean(reference.argmax(1) == labels))
    accuracy = float(np.mean(exported.argmax(1) == labels))
    return {"accuracy": round(accuracy, 4), "keras_accuracy": round(keras_accuracy, 4),
            "agreement": round(float(np.mean(reference.argmax(1) == exported.argmax(1))), 4),
            "max_probability_difference": round(float(np.max(np.abs(reference - exported))), 4),
            "tolerance_points": tolerance_points,
            "within_tolerance": bool(abs(accuracy - keras_accuracy) * 100 <= tolerance_points + 1e-9)}


def timing(predict, images: np.ndarray, repeats: int = LATENCY_REPEATS) -> dict:
    """Batch-1 latency p50/p95 (ms) and batch-64 throughput (images/s), warm."""
    singles = images[:repeats].astype(np.float32)
    for image in singles[:5]:
        predict(image[None])
    latencies = []
    for image in singles:
        started = time.perf_counter()
        predict(image[None])
        latencies.append((time.perf_counter() - started) * 1000)
    batch = images[:THROUGHPUT_BATCH].astype(np.float32)
    predict(batch)
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        predict(batch)
    throughput = rounds * len(batch) / (time.perf_counter() - started)
    return {"latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "throughput_batch64": round(throughput, 1)}


def artefact_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def artefact_size(path: Path) -> int:
    return sum(p.stat().st_size for p in artefact_files(path))


def artefact_sha256(path: Path) -> str:
    """The file's SHA-256; for a SavedModel folder, of its files' relative names and contents in order."""
    def blocks(file: Path):
        with open(file, "rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")

    return _sha256((str(file.relative_to(path)) if path.is_dir() else None, blocks(file))
                    for file in artefact_files(path))


def _sha256(parts) -> str:
    """SHA-256 over (relative name or None for a lone file, content blocks) in order: one scheme for
    the digest recorded at export and the one a download is checked against."""
    digest = hashlib.sha256()
    for relative, blocks in parts:
        if relative is not None:
            digest.update(relative.encode() + b"\0")
        for block in blocks:
            digest.update(block)
    return digest.hexdigest()


def checked_download(out_dir: Path | str, entry: dict) -> tuple[str, bytes]:
    """(download name, bytes) of a manifest entry's artefact exactly as its check read it: the file,
    or a SavedModel folder zipped. ExportError, one line, where the entry names no file of the
    folder, the artefact is missing, holds a link, device or pipe, is over MAX_ARTEFACT_BYTES, or
    has changed since it was checked (its SHA-256 is not the manifest's)."""
    import zipfile

    from .safeio import read_regular_file

    out_dir = Path(out_dir)
    name = entry.get("file")
    if not schema.plain_name(name):
        raise ExportError(f"{out_dir / MANIFEST}: {name!r} is not the name of a file in {out_dir}")
    path = out_dir / name
    if runs.absent(path):
        raise ExportError(f"{name} is listed in {MANIFEST} but missing from {out_dir}; export it again")
    contents, budget = [], MAX_ARTEFACT_BYTES
    for relative, file in _artefact_walk(path):
        data = read_regular_file(file, budget, ExportError, what=f"export {name}")
        budget -= len(data)
        contents.append((relative, data))
    if _sha256((relative, [data]) for relative, data in contents) != entry.get("sha256"):
        raise ExportError(f"{name} has changed since its check (its SHA-256 is not the one in {MANIFEST}); "
                          "export it again")
    if not path.is_dir():
        return name, contents[0][1]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, data in contents:
            archive.writestr(f"{name}/{relative}", data)
    return f"{name}.zip", buffer.getvalue()


def artefact_signature(out_dir: Path | str, file: str) -> tuple:
    """(relative name, mtime, size) of each of an artefact's files: what a cached download is keyed
    by, so a changed, replaced or removed file is read and checked again (checked_download)."""
    path = Path(out_dir) / file
    try:
        stats = [(relative, found.lstat()) for relative, found in _artefact_walk(path)]
    except (OSError, ExportError):
        return ()  # checked_download says what is wrong
    return tuple((relative, stat.st_mtime_ns, stat.st_size) for relative, stat in stats)


def _artefact_walk(path: Path) -> list[tuple[str | None, Path]]:
    """(relative name, path) of an artefact's files in artefact_files' order; links are refused
    (an export writes none), so nothing outside the folder is read."""
    if path.is_symlink():
        raise ExportError(f"{path.name} is a link; an export is a file or folder of its own")
    if not path.is_dir():
        return [(None, path)]
    files = []
    for folder, folders, names in os.walk(path):
        for entry in folders + names:
            if (Path(folder) / entry).is_symlink():
                raise ExportError(f"{path.name} holds a link ({Path(folder, entry).relative_to(path)}); "
                                  "an export writes none")
        files += [Path(folder) / n for n in names]
        if len(files) > MAX_SAVED_MODEL_FILES:
            raise ExportError(f"{path.name} holds more than {MAX_SAVED_MODEL_FILES:,} files; an export writes a few")
    return [(str(file.relative_to(path)), file) for file in sorted(files)]


def versions() -> dict[str, str]:
    return {name: _version(name) for name in VERSIONED}


def _version(name: str) -> str:
    for distribution in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def read_manifest(out_dir: Path | str) -> dict:
    """{name: entry} of an export folder's manifest's sound entries ({} if there is none)."""
    return read_manifest_entries(out_dir).entries


@dataclass(frozen=True)
class ManifestRead:
    entries: dict  # {name: entry} of the sound entries
    left_out: list[str]  # one line per entry left out, and why
    raw: bytes  # the file as read (what the Deploy page offers for download): read once, parsed from this


def read_manifest_entries(out_dir: Path | str) -> ManifestRead:
    """An export folder's manifest, its sound entries and the ones left out; ExportError if the
    file itself is unreadable or no manifest; nothing in it if there is no manifest."""
    from .safeio import file_where, parse_json, read_regular_file

    path = Path(out_dir) / MANIFEST
    if runs.absent(path):  # a dangling link is not "no manifest": the read below refuses it with its reason
        return ManifestRead({}, [], b"")
    raw = read_regular_file(path, MAX_MANIFEST_BYTES, ExportError, what="JSON file")
    found = parse_json(raw, file_where(path), ExportError)
    if not isinstance(found, dict) or not isinstance(found.get("exports"), dict):
        raise ExportError(f"{path}: not an export manifest")
    entries, problems = {}, []
    for name, entry in found["exports"].items():
        problem = entry_problem(entry)
        if problem is None:
            entries[name] = entry
        else:
            problems.append(f"{MANIFEST}: left out {name[:80]!r}: {problem}")
    return ManifestRead(entries, problems, raw)


def _input_shape(value) -> bool:
    """(batch, side, side, 3): every export takes square RGB images, and the server sizes photos by one side."""
    shape = value.get("shape") if isinstance(value, dict) else None
    return isinstance(shape, list) and len(shape) == 4 and all(
        schema.count(n) and 0 < n <= 4096 for n in shape[1:]) and shape[1] == shape[2] and shape[3] == 3


# What each field of an entry must be, as `export_run` writes it; readers rely on nothing else.
ENTRY_SCHEMA: dict[str, schema.Check] = {
    "format": lambda v: v in FORMATS, "quantize": lambda v: v in QUANTIZATIONS, "file": schema.plain_name,
    "input": _input_shape, "size_bytes": schema.count,
    "sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    "accuracy": schema.fraction, "keras_accuracy": schema.fraction, "agreement": schema.fraction,
    "within_tolerance": schema.flag, "latency_ms_p50": schema.non_negative, "latency_ms_p95": schema.non_negative,
    "throughput_batch64": schema.non_negative, "class_names": schema.texts, "runtime": schema.text,
    "quantization": schema.json_object, "machine": schema.text, "run_test_accuracy": schema.fraction,
}
ENTRY_REQUIRED = ("format", "file", "input", "size_bytes", "sha256", "accuracy", "keras_accuracy", "agreement",
                  "within_tolerance", "latency_ms_p50", "latency_ms_p95", "throughput_batch64", "class_names",
                  "runtime")


def entry_problem(entry) -> str | None:
    """Why a manifest entry is not one `export_run` writes (the first field found wrong), or None."""
    try:
        schema.validate(entry, ENTRY_SCHEMA, ENTRY_REQUIRED, "the entry", ExportError)
    except ExportError as exc:
        return str(exc)
    return None


def record(out_dir: Path, name: str, entry: dict) -> None:
    try:
        exports = read_manifest(out_dir)
    except ExportError:
        exports = {}  # a damaged manifest is rewritten from the exports made now
    exports[name] = entry
    runs.atomic_write_text(out_dir / MANIFEST, json.dumps({"exports": exports}, indent=2, sort_keys=True) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
