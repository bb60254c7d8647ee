"""Recipe sweep for fastnet on a GPU: which change buys accuracy at the same CPU cost.

    KERAS_BACKEND=jax python -m tools.research.fastnet_sweep ../shared/datasets/cifar10-jpg.tar.gz [NAME,NAME...]

A full fastnet run takes most of an hour on the 2-core build machine and about a
minute on an H100 with Keras on JAX, so recipe choices are screened here and
only the winner is trained on the CPU (the figures that count). It runs
without TensorFlow (the GPU machine has none): recipe, model, whitening,
optimizer and schedule are the package's own, while the flips (random or
alternating) and the reflect-pad-2 crop are redone in NumPy per epoch in place of
the tf.data pipeline. Each variant prints one JSON line and all are written to
$OUT/sweep.json (or /tmp). One seed per variant unless it names one: differences
under ~0.3 points are noise.
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

from cifar_core import backend
from cifar_core.config import PRESETS, recipe_config
from cifar_core.data import load_dataset
from cifar_core.data.pipeline import CROP_PIXELS
from cifar_core.evaluation import compute_metrics
from cifar_core.models.homebrew import build_fastnet, init_whitening
from cifar_core.training.optimizers import compile_model
from cifar_core.training.precision import resolve_precision

# Stop starting new variants after this many seconds (a GPU lease is short).
BUDGET_S = float(os.environ.get("SWEEP_BUDGET_S", "420"))

# name -> TrainConfig overrides of the fastnet recipe as it is now (docs/fastnet-sweep-*.json
# record the recipe each measured sweep started from, and the names it used). Width variants
# cut epochs so that FLOPs x epochs stay near 25 epochs of the base width, as measured.
VARIANTS = {
    "base": {},
    # The stage preset (fastnet, SiLU, 3 epochs), as the Train page trains it.
    "stage": dict(PRESETS["stage"].settings),
    "seed1": dict(random_state=1),
    "seed2": dict(random_state=2),
    # Toward 91.5% with flip TTA in an hour of 2-core CPU (about 43 epochs of the recipe's width).
    "ep40": dict(n_epochs=40),
    "ep40_seed1": dict(n_epochs=40, random_state=1),
    "w64-256-512_ep28": dict(model_options={"widths": [64, 256, 512]}, n_epochs=28),
    "randflip": dict(augmentations=("flip", "crop")),
    "ep35": dict(n_epochs=35),
    "bs128": dict(batch_size=128, learning_rate=0.1),
    "w64-256-512_ep18": dict(model_options={"widths": [64, 256, 512]}, n_epochs=18),
    "w96-384-384_ep12": dict(model_options={"widths": [96, 384, 384]}, n_epochs=12),
    "w128-384-384_ep10": dict(model_options={"widths": [128, 384, 384]}, n_epochs=10),
    "wd1e-2": dict(weight_decay=1e-2),
    "wd2.5e-3": dict(weight_decay=2.5e-3),
    "lr0.4": dict(learning_rate=0.4),
    "ls0.2": dict(label_smoothing=0.2),
    "sgd25": dict(optimizer="sgd", n_epochs=25),
    # Progressive resolution: the first epochs train on random low-res crops (cheaper steps,
    # in proportion to pixels), the rest at 32x32. 20 x (24/32)^2 + 14 = 25.25 full-size
    # epochs of pixels, near the recipe's 25.
    "lowres24_34": dict(n_epochs=34, low_res=(24, 20)),
    "lowres24_30": dict(n_epochs=30, low_res=(24, 20)),
    "lowres20_40": dict(n_epochs=40, low_res=(20, 24)),
}


def random_crop(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random size x size window of every image."""
    slack = images.shape[1] - size
    dy, dx = rng.integers(0, slack + 1, (2, len(images)))
    out = np.empty((len(images), size, size, images.shape[3]), images.dtype)
    for oy in range(slack + 1):  # one slice per offset: 25 slices instead of 50,000
        for ox in range(slack + 1):
            chosen = np.flatnonzero((dy == oy) & (dx == ox))
            out[chosen] = images[chosen, oy:oy + size, ox:ox + size]
    return out


def flip_and_crop(images: np.ndarray, rng: np.random.Generator, pad: int = CROP_PIXELS,
                  flipped: np.ndarray | None = None) -> np.ndarray:
    """Horizontal flip (random, or the given mask), then a random whole-pixel shift of up to
    `pad` with reflected borders."""
    if flipped is None:
        flipped = rng.random(len(images)) < 0.5
    images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return random_crop(padded, images.shape[1], rng)


def run(name: str, dataset, low_res: tuple[int, int] | None = None, **overrides) -> dict:
    """Train one variant of the fastnet recipe on `dataset`; its test accuracy, plain and flip TTA.

    low_res=(size, epochs): the first `epochs` train on random size x size crops. The
    recipe's "altflip" mirrors each image in every other epoch, as the package does."""
    started = time.time()
    # A variant's model_options add to the recipe's (its activation stays unless a variant names one).
    options = {**recipe_config("fastnet").model_options, **overrides.get("model_options", {})}
    config = resolve_precision(recipe_config("fastnet", **{**overrides, "model_options": options}), report=print)
    alternate = "altflip" in config.augmentations
    keras.utils.set_random_seed(config.random_state)
    with backend.dtype_policy(config.precision):  # spatial size open, so low-res epochs can share it
        model = build_fastnet(input_shape=(None, None, 3), num_classes=len(dataset.class_names),
                              **config.model_options)
    init_whitening(model, dataset.x_train)
    steps_per_epoch = -(-len(dataset.x_train) // config.batch_size)
    compile_model(model, config, config.learning_rate, config.n_epochs * steps_per_epoch)
    rng = np.random.default_rng(config.random_state)
    targets = keras.utils.to_categorical(dataset.y_train, len(dataset.class_names))
    first_flips = rng.random(len(dataset.x_train)) < 0.5
    for epoch in range(config.n_epochs):
        flips = first_flips ^ bool(epoch % 2) if alternate else None
        images = flip_and_crop(dataset.x_train, rng, flipped=flips)
        if low_res and epoch < low_res[1]:
            images = random_crop(images, low_res[0], rng)
        history = model.fit(images, targets, batch_size=config.batch_size,
                            epochs=1, shuffle=True, verbose=0)
    # model.predict, not evaluation.predict_proba: that one feeds tf.data, absent on the GPU machine.
    probs = model.predict(dataset.x_test, batch_size=1000, verbose=0)
    mirrored = model.predict(dataset.x_test[:, :, ::-1], batch_size=1000, verbose=0)
    metrics = compute_metrics(dataset.y_test, probs, dataset.class_names, (probs + mirrored) / 2)
    return dict(name=name, overrides=dict(overrides, low_res=low_res) if low_res else overrides,
                precision=config.precision, epochs=config.n_epochs, model_options=config.model_options,
                train_accuracy=round(float(history.history["accuracy"][-1]), 4),
                test_accuracy=metrics["test_accuracy"], test_accuracy_flip_tta=metrics["test_accuracy_tta"],
                seconds=round(time.time() - started, 1))


def main(argv: list[str]) -> None:
    started = time.time()
    names = argv[1].split(",") if len(argv) > 1 else list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    dataset = load_dataset(argv[0])
    output = Path(os.environ.get("OUT", "/tmp")) / "sweep.json"
    results = []
    for name in names:
        if time.time() - started > BUDGET_S:
            print(f"time budget spent; skipped {name}", flush=True)
            continue
        results.append(run(name, dataset, **VARIANTS[name]))
        print(json.dumps(results[-1]), flush=True)
        output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
