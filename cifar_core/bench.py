"""`python -m cifar_core bench`: what this machine does with the studio's models.

Measures data load (cold and cached), training throughput of each homebrew
model with FLOP/s counted from the architecture, single-image latency from
image bytes to top-3 (p50/p95, warm), and batch inference throughput.
Run it on an otherwise idle machine: timings vary with load.
"""
from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from . import backend, runs


def forward_flops(model) -> int:
    """Multiply-adds x 2 of convolutions and dense layers, from the layer shapes."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            out_h, out_w, out_c = layer.output.shape[1:]
            in_c = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            per_output = kh * kw * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else in_c)
            total += 2 * out_h * out_w * out_c * per_output
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def time_data_load(source: str) -> dict:
    from .data import load_dataset

    with tempfile.TemporaryDirectory() as cache:
        import os

        previous = os.environ.get("CIFAR_CORE_CACHE")
        os.environ["CIFAR_CORE_CACHE"] = cache
        try:
            cold = load_dataset(source)
            cached = load_dataset(source)
        finally:
            if previous is None:
                os.environ.pop("CIFAR_CORE_CACHE", None)
            else:
                os.environ["CIFAR_CORE_CACHE"] = previous
    return {"source": cold.description, "n_images": int(len(cold.y_train) + len(cold.y_test)),
            "cold_seconds": round(cold.load_seconds, 2), "cached_seconds": round(cached.load_seconds, 3)}


def time_training(model_name: str, steps: int, warmup: int = 3, batch_size: int | None = None,
                  precision: str | None = None) -> dict:
    """Images/s of full training steps (augmentation pipeline included) on random images."""
    from .config import recipe_config
    from .data.pipeline import build_augmenter, make_dataset
    from .models import build_model
    from .training.optimizers import compile_model

    config = recipe_config(model_name, batch_size=batch_size, precision=precision)
    model = build_model(model_name, precision=config.precision)
    compile_model(model, config, config.learning_rate, 1000)
    n = config.batch_size * (steps + warmup)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    data = make_dataset(images, labels, 10, config.batch_size, augmenter=build_augmenter(config, 32))
    iterator = iter(data)
    for _ in range(warmup):
        model.train_on_batch(*next(iterator))
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*next(iterator))
    seconds = time.perf_counter() - started
    images_per_second = steps * config.batch_size / seconds
    flops = forward_flops(model)
    return {"model": model_name, "batch_size": config.batch_size, "precision": config.precision,
            "params": int(model.count_params()),
            "forward_mflops_per_image": round(flops / 1e6, 1), "train_images_per_second": round(images_per_second, 1),
            # Training costs about 3x the forward pass (forward, input gradients, weight gradients).
            "train_gflops_per_second": round(3 * flops * images_per_second / 1e9, 1),
            "epoch_minutes_50k": round(50_000 / images_per_second / 60, 2)}


def time_inference(run_dir: Path | None, model_name: str, repeats: int = 50) -> dict:
    from PIL import Image

    from .config import recipe_config
    from .evaluation import predict_proba
    from .inference import LoadedRun, classify_bytes, load_run_model
    from .models import build_model

    if run_dir is not None:
        run = load_run_model(run_dir)
    else:
        model = build_model(model_name)
        run = LoadedRun(Path("."), model, 32, 32, tuple(str(i) for i in range(10)), recipe_config(model_name))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(
        buffer, format="JPEG")
    photo = buffer.getvalue()
    for _ in range(3):
        classify_bytes(run, photo)
    latencies = []
    for _ in range(repeats):
        started = time.perf_counter()
        classify_bytes(run, photo)
        latencies.append((time.perf_counter() - started) * 1000)
    batch = np.random.default_rng(1).integers(0, 255, (2048, 32, 32, 3), dtype=np.uint8)
    predict_proba(run.model, batch[:256], input_size=run.input_size)
    started = time.perf_counter()
    predict_proba(run.model, batch, input_size=run.input_size)
    throughput = len(batch) / (time.perf_counter() - started)
    return {"model": run.config.model, "run": run_dir.name if run_dir else None,
            "single_image_ms_p50": round(float(np.percentile(latencies, 50)), 1),
            "single_image_ms_p95": round(float(np.percentile(latencies, 95)), 1),
            "batch_images_per_second": round(throughput, 1)}


def shipped_run_for(model_name: str) -> Path | None:
    found, _ = runs.list_runs()
    for run in found:
        if run.config.get("model") == model_name and run.has_model and run.status.get("state") == "completed":
            return run.path
    return None


def run_benchmarks(source: str | None, output: Path, models: list[str], steps: int,
                   batch_sizes: list[int] | None = None, precisions: list[str] | None = None) -> dict:
    backend.configure()
    from .data import default_source

    results = {"machine": backend.machine_description(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "data_load": None, "training": [], "inference": []}
    source = source or default_source()
    if source != "keras":
        results["data_load"] = time_data_load(source)
        print("data load:", results["data_load"])
    for name in models:
        results["training"].append(time_training(name, steps))
        print("training:", results["training"][-1])
        variants = [dict(batch_size=b) for b in batch_sizes or []] + [dict(precision=p) for p in precisions or []]
        for variant in variants:  # the batch-size and precision sweeps
            results["training"].append(time_training(name, steps, **variant))
            print("training:", results["training"][-1])
        results["inference"].append(time_inference(shipped_run_for(name), name))
        print("inference:", results["inference"][-1])
    runs.atomic_write_text(output, json.dumps(results, indent=2) + "\n")
    machine_file().parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(machine_file(), json.dumps(results, indent=2) + "\n")  # what the Train page reads
    return results


MAX_BENCH_BYTES = 1 << 20


def machine_file() -> Path:
    """The last bench of this machine, kept in the studio's cache folder (never in a repository)."""
    from .data.sources import cache_dir

    return cache_dir() / "bench.json"


def this_machine_speeds() -> dict[tuple[str, int, str], float]:
    """(model, batch size, precision) -> training images/s, from the last bench of *this* CPU;
    {} if there is none, or if it was measured on another CPU (a laptop's cache moved between machines)."""
    from .errors import CifarError
    from .safeio import read_json_file

    try:
        results = read_json_file(machine_file(), MAX_BENCH_BYTES)
        if (results.get("machine") or {}).get("cpu") != backend.cpu_name():
            return {}
        return {(row["model"], int(row["batch_size"]), row["precision"]): float(row["train_images_per_second"])
                for row in results.get("training") or [] if float(row["train_images_per_second"]) > 0}
    except (CifarError, OSError, AttributeError, KeyError, TypeError, ValueError):
        return {}
