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


def build_augmenter(config: TrainConfig, image_size: int, random_state: int | None = None):
    """The config's augmentations as a Keras preprocessing pipeline (None if none)."""
    import keras

    layers = []
    names = config.augmentations
    seed = config.random_state if random_state is None else random_state
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


class AlternatingFlip:
    """Mirror image i in epoch e when its seeded first-epoch coin XOR (e odd) is set.

    The pipeline counts its own passes (one per epoch, from `first_epoch`), so
    the parity needs no callback: Keras opens the next epoch's iterator before
    that epoch's callbacks run (tests/test_training.py pins the result through fit).
    """

    def __init__(self, n_images: int, random_state: int, first_epoch: int = 0):
        import tensorflow as tf

        self.first_flips = np.random.default_rng(random_state).random(n_images) < 0.5
        # Held here: the dataset's pass counter must live as long as its pipeline.
        self.passes = tf.Variable(first_epoch - 1, dtype=tf.int64, trainable=False, name="flip_passes")

    def each_pass(self, one_pass):
        """A dataset that runs one_pass(epoch) afresh every time it is iterated."""
        import tensorflow as tf

        counter = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
        return counter.map(lambda _: self.passes.assign_add(1)).flat_map(one_pass)


def augment_preview(images: np.ndarray, config: TrainConfig, random_state: int) -> np.ndarray:
    """The config's exact augmentation applied to uint8 images (for the dashboard);
    an alternating flip shows as the random flip it is for any one epoch."""
    import tensorflow as tf

    if "altflip" in config.augmentations:
        config = config.replace(augmentations=tuple("flip" if a == "altflip" else a for a in config.augmentations))
    augmenter = build_augmenter(config, images.shape[1], random_state=random_state)
    if augmenter is None:
        return images.copy()
    tf.random.set_seed(random_state)
    out = augmenter(tf.convert_to_tensor(images, tf.float32), training=True)
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def _alternating_flip_batches(images, labels, batch_size: int, shuffle: bool, seed: int,
                              alternating_flip: AlternatingFlip):
    """(images, labels, flip) batches, each pass over the data one epoch with its own flips.

    Shuffled by a stateless per-epoch draw: tf.data's own shuffle cannot take the
    epoch as its seed once a global seed is set.
    """
    import tensorflow as tf

    columns = [tf.constant(images), tf.constant(label_column(labels)), tf.constant(alternating_flip.first_flips)]

    def one_pass(epoch):
        order = tf.range(len(images))
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([len(images)], seed=tf.stack([seed, epoch])))

        def gather(indices):
            x, y, first = (tf.gather(column, indices) for column in columns)
            return x, y, tf.math.logical_xor(first, epoch % 2 == 1)

        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(gather)

    # flat_map hides the length; Keras needs it to end each epoch on time.
    n_batches = -(-len(images) // batch_size)
    return alternating_flip.each_pass(one_pass).apply(tf.data.experimental.assert_cardinality(n_batches))


def resize_for_model(x, input_size: int):
    """Float NHWC images to the model's input size: the one resize training, evaluation and
    the dashboard's photo reader share, so a photo is seen exactly as the test images were."""
    import tensorflow as tf

    return tf.image.resize(x, (input_size, input_size), method="bilinear")


def make_inference_dataset(images: np.ndarray, batch_size: int, input_size: int | None = None):
    """Images only, in order, batched and resized exactly as training and evaluation see them."""
    labels = np.zeros(len(images), np.int32)
    return make_dataset(images, labels, 1, batch_size, input_size, one_hot=False).map(lambda x, y: x)


def label_column(labels: np.ndarray) -> np.ndarray:
    """Class indices as int32; a (images, classes) array of targets (distillation's) as float32."""
    return labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int32)


def make_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 input_size: int | None = None, augmenter=None, shuffle: bool = False,
                 random_state: int = 0, one_hot: bool = True, alternating_flip: AlternatingFlip | None = None):
    """A tf.data pipeline over in-memory uint8 images, yielding float32 0..255. `labels` are class
    indices, or already targets of shape (images, classes), which pass through as they are."""
    import tensorflow as tf

    one_hot = one_hot and labels.ndim == 1
    if alternating_flip:
        dataset = _alternating_flip_batches(images, labels, batch_size, shuffle, random_state, alternating_flip)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, label_column(labels)))
        if shuffle:
            dataset = dataset.shuffle(len(images), seed=random_state, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size)
    needs_resize = input_size is not None and input_size != images.shape[1]

    def prepare(x, y, flips=None):
        x = tf.cast(x, tf.float32)
        if flips is not None:
            x = tf.where(flips[:, None, None, None], tf.reverse(x, axis=[2]), x)
        if augmenter is not None:
            x = augmenter(x, training=True)
        if needs_resize:
            x = resize_for_model(x, input_size)
        if one_hot:
            y = tf.one_hot(y, num_classes)
        return x, y

    # Augmenting whole batches is vectorised; AUTOTUNE parallelism would only
    # steal the two cores from the convolutions, so one call at a time.
    dataset = dataset.map(prepare, num_parallel_calls=1, deterministic=True)
    return dataset.prefetch(2)
