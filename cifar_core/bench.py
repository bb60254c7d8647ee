"""`python -m cifar_core bench`: what this machine does with the studio's models.

Measures what the hardware offers (the CPU's instruction sets, the matrix-multiply
and convolution peaks through TensorFlow in float32 and bfloat16, and which oneDNN
kernels really run), data load (cold and cached), training throughput of each
homebrew model with FLOP/s counted from the architecture and as a share of the
measured peak, the input pipeline alone, single-image latency from image bytes to
top-3 (p50/p95, warm), and batch inference throughput.
Run it on an otherwise idle machine: timings vary with load.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import backend, runs

CIFAR10_TRAIN_IMAGES = 50_000  # what an epoch's minutes are projected over


def forward_flops(model, layers=None) -> int:
    """Multiply-adds x 2 of convolutions and dense layers, from the layer shapes (of `layers` only,
    when given: a part of the model)."""
    import keras

    total = 0
    for layer in model.layers if layers is None else layers:
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
            peak_bytes = _traced_peak_bytes(lambda: load_dataset(source))  # apart: tracing slows it
        finally:
            if previous is None:
                os.environ.pop("CIFAR_CORE_CACHE", None)
            else:
                os.environ["CIFAR_CORE_CACHE"] = previous
    arrays = (cached.x_train, cached.y_train, cached.x_test, cached.y_test)
    return {"source": cold.description, "n_images": int(len(cold.y_train) + len(cold.y_test)),
            "cold_seconds": round(cold.load_seconds, 2), "cached_seconds": round(cached.load_seconds, 3),
            # What loading from the cache allocates at its peak, against the arrays it returns.
            "cached_peak_mib": round(peak_bytes / 2**20, 2),
            "arrays_mib": round(sum(a.nbytes for a in arrays) / 2**20, 2)}


def _traced_peak_bytes(call) -> int:
    """The most memory Python and numpy held at once during `call` (tracemalloc), above what was held before."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


# The probes that set this machine's peaks: a square matmul, and a 3x3 convolution the
# size of a CIFAR net's middle layers (batch, side, channels in -> out), through TensorFlow.
PEAK_MATMUL_SIDE = 2048
PEAK_CONV = (256, 32, 64, 128)
# Compute dtype of each training precision (the peaks are keyed by training precision).
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def best_seconds(call, repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one untimed call that traces, loads and warms."""
    call()  # trace and warm
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure_peaks(repeats: int = 5) -> dict:
    """GFLOP/s of the matmul and convolution probes per training precision: the best of
    `repeats` calls of one compiled op, so the figure is what the kernels can do here."""
    return {precision: _peaks_in(dtype, repeats) for precision, dtype in COMPUTE_DTYPES.items()}


def _peaks_in(dtype: str, repeats: int) -> dict:
    import tensorflow as tf

    batch, side, c_in, c_out = PEAK_CONV
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.standard_normal((PEAK_MATMUL_SIDE, PEAK_MATMUL_SIDE)), dtype) for _ in range(2))
    x = tf.constant(rng.standard_normal((batch, side, side, c_in)), dtype)
    k = tf.constant(rng.standard_normal((3, 3, c_in, c_out)), dtype)
    matmul = tf.function(lambda: tf.matmul(a, b)[0, 0])
    conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME")[0, 0, 0, 0])
    matmul_flops = 2 * PEAK_MATMUL_SIDE ** 3
    conv_flops = 2 * batch * side * side * c_out * c_in * 9
    return {"matmul_gflops": round(matmul_flops / best_seconds(lambda: matmul().numpy(), repeats) / 1e9, 1),
            "conv_gflops": round(conv_flops / best_seconds(lambda: conv().numpy(), repeats) / 1e9, 1)}


# Run in a child process: oneDNN reads ONEDNN_VERBOSE once, when TensorFlow loads.
_ONEDNN_PROBE = """
import tensorflow as tf
x = tf.random.normal((16, 16, 16, 64)); k = tf.random.normal((3, 3, 64, 64))
for dtype in (tf.float32, tf.bfloat16):
    tf.nn.conv2d(tf.cast(x, dtype), tf.cast(k, dtype), 1, "SAME").numpy()
    tf.matmul(tf.cast(x[0, 0], dtype), tf.cast(k[0, 0], dtype)).numpy()
"""
_SOURCE_DTYPE = re.compile(r"src[_:](?P<dtype>[a-z0-9]+)")
_ONEDNN_DTYPES = {"f32": "float32", "bf16": "bfloat16"}


def parse_onednn_verbose(text: str) -> dict:
    """What oneDNN's verbose log says ran: {"isa": "...", "kernels": {"convolution": {"bfloat16":
    ["brg_conv_fwd:avx512_core_bf16"]}, ...}}. Lines look like
    `onednn_verbose,v1,primitive,exec,cpu,<kind>,<implementation>,<prop>,<memory descriptors>,...`."""
    isa, kernels = None, {}
    for line in text.splitlines():
        parts = line.strip().split(",")
        if not parts or parts[0] != "onednn_verbose":
            continue
        if "info" in parts[:4] and any(part.startswith("isa:") for part in parts):
            isa = next(part for part in parts if part.startswith("isa:")).removeprefix("isa:")
        if "exec" not in parts[:4] or len(parts) < parts.index("exec") + 6:
            continue
        at = parts.index("exec")
        kind, implementation, descriptors = parts[at + 2], parts[at + 3] or "(default)", parts[at + 5]
        dtype = _SOURCE_DTYPE.search(descriptors)
        if parts[at + 1] == "cpu" and dtype:
            name = _ONEDNN_DTYPES.get(dtype["dtype"], dtype["dtype"])
            kernels.setdefault(kind, {}).setdefault(name, set()).add(implementation)
    return {"isa": isa, "kernels": {kind: {dtype: sorted(found) for dtype, found in by_dtype.items()}
                                    for kind, by_dtype in kernels.items()}}


def expected_bf16_isa(flags: set[str]) -> str | None:
    """The oneDNN kernel family a CPU with these /proc/cpuinfo flags should use for bf16."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_core_bf16"
    return None


def onednn_verdict(kernels: dict, expected: str | None) -> str:
    conv = kernels.get("convolution", {})
    if not kernels:
        return "oneDNN is not running (TF_ENABLE_ONEDNN_OPTS=0, or a TensorFlow built without it)"
    bf16 = conv.get("bfloat16", [])
    if expected is None:
        return ("this CPU has no bfloat16 instructions: bf16 convolutions run on "
                f"{', '.join(bf16) or 'no oneDNN kernel'}; train in float32")
    if any(expected in impl for impl in bf16):
        return f"bfloat16 convolutions run on oneDNN's {expected} kernels ({', '.join(bf16)}), as this CPU allows"
    return (f"bfloat16 convolutions run on {', '.join(bf16) or 'no oneDNN kernel'}, not on this CPU's {expected} "
            "kernels: mixed precision will not pay off")


def onednn_kernels(timeout: float = 180) -> dict:
    """Which oneDNN kernels run a float32 and a bfloat16 convolution and matmul here, and whether
    they are the fast ones the CPU's instruction sets allow."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        log = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"isa": None, "kernels": {}, "expected_bf16": None,
                "verdict": f"oneDNN probe failed: {type(exc).__name__}"}
    seen = parse_onednn_verbose(log)
    expected = expected_bf16_isa(backend.cpu_flags())
    return {**seen, "expected_bf16": expected, "verdict": onednn_verdict(seen["kernels"], expected)}


def time_training(model_name: str, steps: int, warmup: int = 3, batch_size: int | None = None,
                  precision: str | None = None, peaks: dict | None = None, config=None,
                  stock: tuple[str, ...] = (), ns_dtype: str | None = None) -> dict:
    """Images/s of full training steps (augmentation pipeline included) on random images,
    and of the input pipeline alone. `model_name` names a recipe: a preset ("stage") or a
    model's own; the row's "model" is that name. `config` replaces the recipe, and the last two
    arguments rebuild the previous recipe's kernels (`compare_with_previous`): `stock` names the
    training kernels (models/layers.py) built as Keras' own layers."""
    from .config import named_recipe
    from .training.precision import resolve_precision

    config = resolve_precision(config or named_recipe(model_name, batch_size=batch_size, precision=precision))
    model = compiled_training_model(config, stock, ns_dtype)
    images_per_second, data = time_steps(model, config, steps, warmup)
    flops = forward_flops(model)
    gflops = training_step_flops(model) * images_per_second / 1e9  # every layer trains: 3x the forward pass
    return {"model": model_name, "batch_size": config.batch_size, "precision": config.precision,
            "params": int(model.count_params()),
            "forward_mflops_per_image": round(flops / 1e6, 1), "train_images_per_second": round(images_per_second, 1),
            "train_gflops_per_second": round(gflops, 1),
            "percent_of_conv_peak": _share_of_peak(gflops, peaks, config.precision),
            "pipeline_images_per_second": round(time_pipeline(data, steps, config.batch_size), 1),
            "epoch_minutes_50k": round(CIFAR10_TRAIN_IMAGES / images_per_second / 60, 2)}


def compiled_training_model(config, stock: tuple[str, ...] = (), ns_dtype: str | None = None):
    """The config's model as its training builds it (`stock`: training kernels built as Keras' own),
    compiled with its optimizer; the config's precision must be resolved."""
    from .models import build_model
    from .models.layers import stock_kernels
    from .training.optimizers import compile_model

    with stock_kernels(*stock) if stock else contextlib.nullcontext():
        model = build_model(config.model, precision=config.precision, **config.model_options)
    compile_model(model, config, config.learning_rate, 1000, ns_dtype=ns_dtype)
    return model


def time_steps(model, config, steps: int, warmup: int, input_size: int | None = None):
    """(images/s of `steps` training steps after `warmup` ones, the pipeline): random 32 px images through
    the config's augmentation, resized to `input_size` where given, as training feeds them."""
    from .data.pipeline import build_augmenter, make_dataset

    n = config.batch_size * (steps + warmup)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    data = make_dataset(images, labels, 10, config.batch_size, input_size, augmenter=build_augmenter(config, 32))
    iterator = iter(data)
    for _ in range(warmup):
        model.train_on_batch(*next(iterator))
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*next(iterator))
    return steps * config.batch_size / (time.perf_counter() - started), data


def time_pipeline(data, batches: int, batch_size: int) -> float:
    """Images/s of the input pipeline alone (decode-free: images are in memory; augmentation included)."""
    iterator = iter(data)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches - 1):
        next(iterator)
    return (batches - 1) * batch_size / max(time.perf_counter() - started, 1e-9)


def recipe_steps(model_name: str) -> list[tuple[str, dict]]:
    """From the previous recipe to today's, one change at a time: (name, time_training arguments).
    A preset on another model's recipe ("stage") changed only its own settings: one step."""
    from .config import PRESETS, PREVIOUS_RECIPES, preset_config, recipe_config
    from .models.layers import TRAINING_KERNELS

    if model_name in PRESETS and PRESETS[model_name].model != model_name:
        current = preset_config(model_name)
        return [("previous recipe", dict(config=current.replace(**PREVIOUS_RECIPES[model_name]))),
                ("today's recipe", dict(config=current))]
    previous = recipe_config(model_name, **PREVIOUS_RECIPES[model_name])
    current = recipe_config(model_name)
    later = _later_kernels(current)  # off until their own step
    steps = [("previous recipe", dict(config=previous, stock=TRAINING_KERNELS, ns_dtype="float32")),
             ("+ fused batch norm", dict(config=previous, stock=later, ns_dtype="float32"))]
    if current.model_options != previous.model_options:
        changed = ", ".join(f"{k} {v}" for k, v in current.model_options.items()
                            if previous.model_options.get(k) != v)
        steps.append((f"+ {changed}", dict(config=current.replace(precision=previous.precision), stock=later,
                                           ns_dtype="float32")))
    if current.optimizer == "muon":
        steps.append(("+ bf16 Newton-Schulz", dict(config=current, stock=later)))
    for i, kernel in enumerate(later):
        steps.append((f"+ {KERNEL_STEP_NAMES[kernel]}", dict(config=current, stock=later[i + 1:])))
    steps[-1] = (steps[-1][0] + " (today's recipe)", steps[-1][1])
    return steps


KERNEL_STEP_NAMES = {"shifted_kernel_gradients": "shifted kernel gradients on small maps",
                     "compiled_gelu": "compiled GELU"}


def _later_kernels(config) -> tuple[str, ...]:
    """The training kernels after fused batch norm that take time off the recipe's step (the shifted
    gradients only in bf16: fastnet's and g3's recipes)."""
    shifted = ("shifted_kernel_gradients",) if config.model in ("fastnet", "g3") else ()
    gelu = ("compiled_gelu",) if config.model_options.get("activation") == "gelu_tanh" else ()
    return (*shifted, *gelu)


def compare_with_previous(model_name: str, steps: int, peaks: dict | None, rounds: int = 2) -> dict:
    """The recipe its shipped run had before this release against today's, one change at a time,
    alternated over `rounds` in one call on one machine (best of each): where a speed-up comes from."""
    plan = recipe_steps(model_name)
    timed: dict[str, list[dict]] = {name: [] for name, _ in plan}
    for _ in range(rounds):
        for name, arguments in plan:
            timed[name].append(time_training(model_name, steps, peaks=peaks, **arguments))
    best = [{"step": name, **max(timed[name], key=lambda row: row["train_images_per_second"])} for name, _ in plan]
    return {"model": model_name, "steps": best,
            "speedup": round(best[-1]["train_images_per_second"] / best[0]["train_images_per_second"], 2)}


def training_step_flops(model) -> int:
    """FLOPs per image of a training step: the forward pass through every layer, and the backward
    pass (gradients of weights and of inputs, twice the forward's work) through the trainable ones only;
    frozen layers (a fine-tune's lower backbone) need no gradient."""
    trainable = [layer for layer in model.layers if layer.trainable and layer.weights]
    return forward_flops(model) + 2 * forward_flops(model, trainable)


def _fine_tune_model(config, size: int):
    """A transfer config's model at `size` px with its top `fine_tune_layers` trainable (random weights:
    the cost is the same)."""
    from .models import build_model
    from .models.transfer import unfreeze_top

    model = build_model(config.model, size, weights=None)
    unfreeze_top(model, config.fine_tune_layers)
    return model


def fine_tune_flops(config, size: int) -> int:
    """training_step_flops of a transfer config's fine-tuning step at `size` px."""
    return training_step_flops(_fine_tune_model(config, size))


def _share_of_peak(gflops: float, peaks: dict | None, precision: str) -> float | None:
    """Percent of the measured convolution peak of the precision a step uses (None: not measured)."""
    conv_peak = ((peaks or {}).get(precision) or {}).get("conv_gflops")
    return round(100 * gflops / conv_peak, 1) if conv_peak else None


def time_fine_tune(config, size: int, steps: int, warmup: int = 2, jit: bool = False) -> float:
    """Images/s of a transfer config's fine-tuning steps at `size` px: its top `fine_tune_layers`
    trainable, through the augmentation pipeline (random weights and images: the cost is the same)."""
    from .training.optimizers import compile_model

    model = _fine_tune_model(config, size)
    compile_model(model, config, config.fine_tune_learning_rate, 1000, schedule="cosine")
    model.jit_compile = jit
    return time_steps(model, config, steps, warmup, input_size=size)[0]


def compare_transfer_preset(preset: str, steps: int, rounds: int = 2, peaks: dict | None = None) -> dict:
    """A transfer preset's previous recipe against today's: each fine-tuning stretch's step timed
    (alternated over `rounds` in one call, best of each), its GFLOP/s and share of the measured
    convolution peak, and projected over the stretch's epochs of the training split. The head's few
    seconds per epoch on cached features are left out."""
    from .config import PREVIOUS_RECIPES, fine_tune_stretches, preset_config

    today = preset_config(preset)
    plans = {"previous recipe": today.replace(**PREVIOUS_RECIPES[preset]), "today's recipe": today}
    stretches = {name: fine_tune_stretches(config) for name, config in plans.items()}
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for name, config in plans.items():
            for size, _epochs in stretches[name]:
                rates.setdefault((name, size), []).append(time_fine_tune(config, size, steps))
    n_train = round(CIFAR10_TRAIN_IMAGES * (1 - today.val_fraction))
    rows = []
    for name, config in plans.items():
        timed = []
        for size, epochs in stretches[name]:
            rate = max(rates[(name, size)])
            gflops = fine_tune_flops(config, size) * rate / 1e9
            timed.append({"size": size, "epochs": epochs, "images_per_second": round(rate, 1),
                          "train_gflops_per_second": round(gflops, 1),
                          "percent_of_conv_peak": _share_of_peak(gflops, peaks, config.precision)})
        minutes = sum(t["epochs"] * n_train / t["images_per_second"] / 60 for t in timed)
        rows.append({"step": name, "fine_tune_layers": config.fine_tune_layers, "stretches": timed,
                     "fine_tune_minutes": round(minutes, 1)})
    return {"model": preset, "kind": "transfer", "n_train": n_train, "steps": rows,
            "speedup": round(rows[0]["fine_tune_minutes"] / rows[-1]["fine_tune_minutes"], 2)}


def time_inference(run_dir: Path | None, model_name: str, repeats: int = 50) -> dict:
    from PIL import Image

    from .config import named_recipe
    from .evaluation import predict_proba
    from .inference import LoadedRun, classify_bytes, load_run_model
    from .models import build_model

    if run_dir is not None:
        run = load_run_model(run_dir)
    else:  # the recipe's network with its initial weights: the same arithmetic as a trained one
        config = named_recipe(model_name)
        model = build_model(config.model, **config.model_options)
        run = LoadedRun(Path("."), model, 32, 32, tuple(str(i) for i in range(10)), config)
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
    return {"model": model_name, "run": run_dir.name if run_dir else None,
            "single_image_ms_p50": round(float(np.percentile(latencies, 50)), 1),
            "single_image_ms_p95": round(float(np.percentile(latencies, 95)), 1),
            "batch_images_per_second": round(throughput, 1)}


def shipped_run_for(model_name: str) -> Path | None:
    """The completed run whose inference stands for recipe `model_name` (a preset or a model's own):
    the run that name's preset ships, else any completed run of the same network (model and options);
    None where there is none (`time_inference` then builds the network)."""
    from .config import PRESETS, builds_network_of, named_recipe

    config = named_recipe(model_name)
    found, _ = runs.list_runs()
    usable = {run.path.name: run.path for run in found
              if run.has_model and run.status.get("state") == "completed"
              and builds_network_of(run.config.get("model"), run.config.get("model_options"), config)}
    preset = PRESETS.get(model_name)
    if preset is not None and preset.shipped_run in usable:
        return usable[preset.shipped_run]
    return next(iter(sorted(usable.items())), (None, None))[1]


def run_benchmarks(source: str | None, output: Path, models: list[str], steps: int,
                   batch_sizes: list[int] | None = None, precisions: list[str] | None = None,
                   compare: list[str] | None = None) -> dict:
    backend.configure()
    from .data import default_source

    results = {"machine": backend.machine_description(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "peaks": measure_peaks(), "onednn": onednn_kernels(),
               "data_load": None, "training": [], "comparison": [], "inference": []}
    print("peaks (GFLOP/s):", results["peaks"])
    print("oneDNN:", results["onednn"]["verdict"])
    source = source or default_source()
    if source != "keras":
        results["data_load"] = time_data_load(source)
        print("data load:", results["data_load"])
    peaks = results["peaks"]
    for name in models:
        results["training"].append(time_training(name, steps, peaks=peaks))
        print("training:", results["training"][-1])
        variants = [dict(batch_size=b) for b in batch_sizes or []] + [dict(precision=p) for p in precisions or []]
        for variant in variants:  # the batch-size and precision sweeps
            results["training"].append(time_training(name, steps, peaks=peaks, **variant))
            print("training:", results["training"][-1])
        results["inference"].append(time_inference(shipped_run_for(name), name))
        print("inference:", results["inference"][-1])
    for name in compare or []:
        results["comparison"].append(compare_transfer_preset(name, steps, peaks=peaks) if _is_transfer_preset(name)
                                     else compare_with_previous(name, steps, peaks))
        print("previous vs current:", results["comparison"][-1])
    results["peaks_after"] = measure_peaks()
    results["peaks_held"] = peaks_held(peaks, results["peaks_after"])
    if not results["peaks_held"]:
        print(f"the machine's peaks moved during the call (before {peaks}, after {results['peaks_after']}): "
              "its rows are not comparable with each other; run it again", file=sys.stderr)
    runs.atomic_write_text(output, json.dumps(results, indent=2) + "\n")
    machine_file().parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(machine_file(), json.dumps(results, indent=2) + "\n")  # what the Train page reads
    return results


MAX_BENCH_BYTES = 1 << 20
# A shared host's throughput can move within minutes (2 cores of one Intel Xeon measured a bf16
# convolution peak of 886, 2,257 and 922 GFLOP/s in one afternoon): a call whose peaks moved by more
# than this between its start and its end says so, as its side-by-side rows may straddle the move.
PEAK_DRIFT = 0.2


def peaks_held(before: dict, after: dict) -> bool:
    """Whether every peak measured at the end is within PEAK_DRIFT of the same peak at the start."""
    pairs = [(before[dtype][kind], after.get(dtype, {}).get(kind)) for dtype in before for kind in before[dtype]]
    return all(isinstance(end, (int, float)) and abs(end - start) <= PEAK_DRIFT * start for start, end in pairs)


def _is_transfer_preset(name: str) -> bool:
    from .config import PRESETS
    from .models.registry import is_transfer_model

    return name in PRESETS and is_transfer_model(PRESETS[name].model)


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
