"""Splits and tf.data pipelines: in-memory uint8, batch, augment, resize on the fly.

The dataset is never upscaled as a whole: resizing happens per batch, so a
224x224 transfer run holds one batch of large images at a time.
"""
from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError

# The "crop" augmentation: a random whole-pixel shift of up to this many pixels, reflected borders.
CROP_PIXELS = 2


def split_train_val(labels: np.ndarray, val_fraction: float, random_state: int,
                    limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train_indices, val_indices) drawn from the train split.

    `limit` first draws a stratified subset of that many images; the test
    split is never touched here, so it cannot leak into model selection.
    """
    rng = np.random.default_rng(random_state)
    indices = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        indices = _stratified_sample(labels, indices, limit, rng)
    if val_fraction <= 0:
        return rng.permutation(indices), np.array([], dtype=np.int64)
    n_val = max(1, int(round(len(indices) * val_fraction)))
    val = _stratified_sample(labels, indices, n_val, rng)
    train = np.setdiff1d(indices, val)
    return rng.permutation(train), np.sort(val)


def _stratified_sample(labels, indices, n, rng) -> np.ndarray:
    """n indices with each class in proportion to its share of `indices`."""
    order = rng.permutation(indices)
    # Round-robin over classes keeps proportions even for tiny n.
    by_class = [order[labels[order] == c] for c in np.unique(labels[order])]
    ranks = np.concatenate([np.arange(len(group)) / len(group) for group in by_class])
    members = np.concatenate(by_class)
    return np.sort(members[np.argsort(ranks, kind="stable")[:n]])


def build_augmenter(config: TrainConfig, image_size: int, seed: int | None = None):
    """The config's augmentations as a Keras preprocessing pipeline (None if none)."""
    import keras

    layers = []
    names = config.augmentations
    seed = config.random_state if seed is None else seed
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if "crop" in names:
        # airbench's reflect-pad-2 + random crop, as a whole-pixel shift.
        shift = CROP_PIXELS / image_size
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", interpolation="nearest",
                                                     seed=seed + 1, name="aug_crop"))
    if "translate" in names:
        layers.append(keras.layers.RandomTranslation(config.translate_fraction, config.translate_fraction,
                                                     fill_mode="reflect", seed=seed + 2, name="aug_translate"))
    if "rotate" in names:
        layers.append(keras.layers.RandomRotation(config.rotate_fraction, fill_mode="reflect", seed=seed + 3,
                                                  name="aug_rotate"))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(config.zoom_fraction, fill_mode="reflect", seed=seed + 4,
                                              name="aug_zoom"))
    if "contrast" in names:
        layers.append(keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5, name="aug_contrast"))
    if "cutout" in names:
        layers.append(_cutout_layer(config.cutout_size, image_size, seed + 6))
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def _cutout_layer(size: int, image_size: int, seed: int):
    """Cutout: one size x size square per image, inside the image, filled with
    the dataset mean (zero after the model's normalisation).

    Keras' RandomErasing with its area range pinned to one value is exactly
    that square; it is tf.data-safe under every backend, unlike a custom layer.
    """
    import keras

    from ..models.homebrew import CIFAR_MEAN  # the model's own normalisation constants

    if size >= image_size:
        raise ConfigError(f"cutout_size must be smaller than the {image_size}px training input; received {size}")
    area = (size / image_size) ** 2
    # factor=(1, 1): always erase (a single 1.0 would draw the probability from [0, 1]).
    return keras.layers.RandomErasing(factor=(1.0, 1.0), scale=(area, area),
                                      fill_value=[255 * m for m in CIFAR_MEAN], value_range=(0, 255),
                                      seed=seed, name="aug_cutout")


def augment_preview(images: np.ndarray, config: TrainConfig, seed: int) -> np.ndarray:
    """The config's exact augmentation applied to uint8 images (for the dashboard)."""
    import tensorflow as tf

    augmenter = build_augmenter(config, images.shape[1], seed=seed)
    if augmenter is None:
        return images.copy()
    tf.random.set_seed(seed)
    out = augmenter(tf.convert_to_tensor(images, tf.float32), training=True)
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def make_dataset(images: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int,
                 image_size: int | None = None, augmenter=None, shuffle: bool = False,
                 seed: int = 0, one_hot: bool = True):
    """A tf.data pipeline over in-memory uint8 images, yielding float32 0..255."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    needs_resize = image_size is not None and image_size != images.shape[1]

    def prepare(x, y):
        x = tf.cast(x, tf.float32)
        if augmenter is not None:
            x = augmenter(x, training=True)
        if needs_resize:
            x = tf.image.resize(x, (image_size, image_size), method="bilinear")
        if one_hot:
            y = tf.one_hot(y, n_classes)
        return x, y

    # Augmenting whole batches is vectorised; AUTOTUNE parallelism would only
    # steal the two cores from the convolutions, so one call at a time.
    dataset = dataset.map(prepare, num_parallel_calls=1, deterministic=True)
    return dataset.prefetch(2)
