"""Stage 1 of transfer learning on a CPU: frozen features computed once, head trained on them.

The backbone is frozen (and its BatchNorm in inference mode), so its output
for an image never changes: computing it once per image (and once for the
mirror image, the only augmentation) makes the head's epochs nearly free.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from .. import runs
from ..config import TrainConfig
from ..safeio import read_cached_npy
from .callbacks import PredictHeartbeat

MAX_FEATURE_BYTES_PER_IMAGE = 4 * 4096  # float32 features; the Lite backbones give 1,280
VERSION_LENGTH = 16  # hex digits of the images' digest in a cache file's name


def extract_features(model, images: np.ndarray, input_size: int, flip: bool = False,
                     run_dir: Path | None = None) -> np.ndarray:
    from ..evaluation import inference_batch_size, mirror, model_predictor
    from ..models.transfer import feature_model

    # Minutes of predicting: keep the heartbeat fresh so the job registry
    # does not take a busy worker for a dead one.
    callbacks = [PredictHeartbeat(run_dir, "features")] if run_dir else []
    predict = model_predictor(feature_model(model), inference_batch_size(input_size), input_size, callbacks)
    return predict(mirror(images) if flip else images)


def cached_features(model, run_dir: Path, name: str, images: np.ndarray, input_size: int,
                    flip: bool = False) -> np.ndarray:
    """Features for `images`, kept in the run's checkpoint folder so a resume reuses them. The file is
    named by what it was computed from (the images' digest and the input size): a resume whose data
    changed, or a run folder holding someone else's features of the same shape, computes them again."""
    path = runs.feature_cache_file(run_dir, f"{name}-{_version(images, input_size)}", flip)
    features = read_cached_npy(path, len(images) * MAX_FEATURE_BYTES_PER_IMAGE)
    if _fits(features, len(images), model.get_layer("predictions").kernel.shape[0]):
        return features
    features = extract_features(model, images, input_size, flip, run_dir=run_dir)
    runs.atomic_write_npy(path, features)
    _remove_other_versions(run_dir, path, name, flip)
    return features


def _version(images: np.ndarray, input_size: int) -> str:
    """What features are of: the images' bytes and shape, and the size the backbone saw them at."""
    digest = hashlib.sha256(np.ascontiguousarray(images).data)  # 150 MB of CIFAR-10 in about 0.3 s
    digest.update(f"{images.shape}|{images.dtype}|{input_size}".encode())
    return digest.hexdigest()[:VERSION_LENGTH]


def _remove_other_versions(run_dir: Path, kept: Path, name: str, flip: bool) -> None:
    """Features of this split computed from other images (hundreds of MB each) go once new ones are written:
    every version by feature_cache_file's own naming (16 characters of digest), and the unversioned file of old."""
    versions = runs.feature_cache_file(run_dir, f"{name}-{'?' * VERSION_LENGTH}", flip)
    for found in [*versions.parent.glob(versions.name), runs.feature_cache_file(run_dir, name, flip)]:
        if found != kept:
            found.unlink(missing_ok=True)


def _fits(features: np.ndarray | None, n_images: int, width: int) -> bool:
    """A cache of the features asked for: one finite float row of the head's input width per image.
    Anything else (another backbone's, a damaged file) is computed again, never fed to the head."""
    return features is not None and features.shape == (n_images, width) and features.dtype.kind == "f" \
        and bool(np.isfinite(features).all())


def train_head(model, config: TrainConfig, run_dir: Path, split, num_classes: int, input_size: int,
               history: list[dict]) -> dict:
    """Fit the model's 'predictions' layer on cached features; returns stage timings."""
    import keras

    started = time.perf_counter()
    # Unaugmented: one forward pass per image. Mirrored copies would double the
    # most expensive part of the stage for a head that fine-tuning retrains anyway.
    x_train = cached_features(model, run_dir, "train", split.x_train, input_size)
    y_train = split.y_train
    validation = None
    if len(split.y_val):
        x_val = cached_features(model, run_dir, "val", split.x_val, input_size)
        validation = (x_val, keras.ops.one_hot(split.y_val, num_classes))
    feature_seconds = time.perf_counter() - started

    dropout = model.get_layer("head_dropout").rate
    inputs = keras.Input((x_train.shape[1],), name="features")
    hidden = keras.layers.Dropout(dropout, name="head_dropout")(inputs)
    head = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(hidden)
    head_model = keras.Model(inputs, head)
    steps = int(np.ceil(len(y_train) / config.batch_size)) * config.n_epochs
    from .optimizers import compile_model

    compile_model(head_model, config, config.learning_rate, steps)
    recorder = _head_recorder(history, feature_seconds)
    head_model.fit(x_train, keras.ops.one_hot(y_train, num_classes), batch_size=config.batch_size,
                   epochs=config.n_epochs, validation_data=validation, callbacks=[recorder], verbose=0,
                   shuffle=True)
    model.get_layer("predictions").set_weights(head_model.get_layer("predictions").get_weights())
    return {"features": round(feature_seconds, 2), "head": round(time.perf_counter() - started - feature_seconds, 2)}


def _head_recorder(history: list[dict], feature_seconds: float):
    """One history row per head epoch (the feature extraction time counts in epoch 1)."""
    import keras

    class HeadRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            seconds = time.perf_counter() - self.started + (feature_seconds if epoch == 0 else 0.0)
            row = {"epoch": len(history) + 1, "stage": "head", "seconds": seconds,
                   "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
            row.update({k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs})
            history.append(row)

    return HeadRecorder()
