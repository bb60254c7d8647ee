"""Every data source format loads to the same validated arrays; the cache works."""
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, write_official_batches

from cifar_core.config import TrainConfig
from cifar_core.data import CIFAR10_CLASSES, load_dataset
from cifar_core.data.pipeline import AlternatingFlip, build_augmenter, make_dataset, split_train_val
from cifar_core.errors import DataSourceError


def _zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return target


def _tar_folder(folder: Path, target: Path, mode: str) -> Path:
    with tarfile.open(target, mode) as archive:
        archive.add(folder, arcname=folder.name)
    return target


def _check_image_folder_dataset(dataset):
    assert dataset.class_names == CLASSES
    assert dataset.x_train.shape == (12, 32, 32, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (6, 32, 32, 3)
    assert np.bincount(dataset.y_train).tolist() == [4, 4, 4]
    # Class 2 was drawn brighter than class 0: labels follow their folders.
    assert dataset.x_train[dataset.y_train == 2].mean() > dataset.x_train[dataset.y_train == 0].mean() + 50


def test_image_folder(image_folder):
    _check_image_folder_dataset(load_dataset(image_folder))


@pytest.mark.parametrize("suffix,mode", [(".zip", None), (".tar", "w"), (".tar.gz", "w:gz")])
def test_image_folder_archives(image_folder, tmp_path, suffix, mode):
    target = tmp_path / f"photos{suffix}"
    archive = _zip_folder(image_folder, target) if mode is None else _tar_folder(image_folder, target, mode)
    dataset = load_dataset(archive)
    _check_image_folder_dataset(dataset)
    assert "photos" in dataset.description


def test_image_size_is_a_load_parameter(image_folder):
    assert load_dataset(image_folder, image_size=16).x_train.shape == (12, 16, 16, 3)


def test_second_load_comes_from_the_cache_and_a_change_invalidates_it(image_folder):
    first = load_dataset(image_folder)
    second = load_dataset(image_folder)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.x_train, second.x_train)
    shutil.rmtree(image_folder / "train" / "cat")
    with pytest.raises(DataSourceError, match=r"test classes \['cat'\]"):
        load_dataset(image_folder)


def test_undecodable_image_names_the_file(image_folder):
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataSourceError, match="broken.jpg"):
        load_dataset(image_folder)


def test_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataSourceError, match="not found"):
        load_dataset(tmp_path / "nope.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images in the image-folder layout"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataSourceError, match="not a supported archive"):
        load_dataset(tmp_path / "data.csv")
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataSourceError, match="corrupt"):
        load_dataset(tmp_path / "corrupt.zip")


@pytest.mark.parametrize("protocol", [2, 4])
def test_official_batches_folder_and_tarball(tmp_path, protocol):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    from_folder = load_dataset(folder)
    assert from_folder.x_train.shape == (25, 32, 32, 3) and from_folder.x_test.shape == (5, 32, 32, 3)
    assert from_folder.class_names == CIFAR10_CLASSES
    # Channel-first rows become channels-last pixels: row 0's first red value is pixel (0, 0, R).
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    assert from_folder.x_train[0, 0, 0, 0] == raw[0, 0] and from_folder.x_train[0, 0, 0, 1] == raw[0, 1024]
    tarball = _tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", "w:gz")
    from_tar = load_dataset(tarball)
    np.testing.assert_array_equal(from_tar.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_tar.y_test, from_folder.y_test)


def test_keras_source_offline_is_a_clear_error(monkeypatch):
    import keras

    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataSourceError, match="offline.*--data"):
        load_dataset("keras")


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    train, val = split_train_val(labels, 0.2, random_state=7)
    again_train, again_val = split_train_val(labels, 0.2, random_state=7)
    np.testing.assert_array_equal(val, again_val)
    assert not set(train) & set(val) and len(train) + len(val) == 500
    assert np.bincount(labels[val]).tolist() == [10] * 10
    other_train, other_val = split_train_val(labels, 0.2, random_state=8)
    assert set(other_val) != set(val)
    limited_train, limited_val = split_train_val(labels, 0.1, random_state=0, limit=100)
    assert len(limited_train) + len(limited_val) == 100
    assert np.bincount(labels[np.concatenate([limited_train, limited_val])]).tolist() == [10] * 10


def test_pipeline_resizes_per_batch_and_augments_only_when_asked():
    images = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(10) % 3
    plain = make_dataset(images, labels, 3, batch_size=4, input_size=64)
    x, y = next(iter(plain))
    assert x.shape == (4, 64, 64, 3) and y.shape == (4, 3)
    same = make_dataset(images, labels, 3, batch_size=10)
    np.testing.assert_array_equal(next(iter(same))[0].numpy(), images.astype(np.float32))
    augmenter = build_augmenter(TrainConfig(augmentations=("flip", "translate")), 32)
    augmented = make_dataset(images, labels, 3, batch_size=10, augmenter=augmenter)
    assert not np.array_equal(next(iter(augmented))[0].numpy(), images.astype(np.float32))
    assert build_augmenter(TrainConfig(augmentations=()), 32) is None


def test_the_repeated_training_data_gives_every_epoch_each_image_once_in_a_new_order_with_new_crops():
    # Training keeps one iterator over the repeated data (stages.fit_stage): the shuffle and the
    # augmentation must still draw afresh each epoch, as they did with an iterator per epoch.
    n, batch = 16, 4
    ids = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 10, 8, 1).repeat(8, 2).repeat(3, 3)
    shuffled = make_dataset(ids, np.zeros(n), 2, batch_size=batch, shuffle=True, random_state=0).repeat()
    seen = np.concatenate([x.numpy()[:, 0, 0, 0] / 10 for x, _ in shuffled.take(3 * n // batch)]).reshape(3, n)
    assert all(sorted(epoch) == list(range(n)) for epoch in seen)
    assert len({tuple(epoch) for epoch in seen}) == 3

    pattern = np.random.default_rng(1).integers(0, 255, (n, 8, 8, 3)).astype(np.uint8)
    augmenter = build_augmenter(TrainConfig(augmentations=("crop",)), 8)
    cropped = make_dataset(pattern, np.zeros(n), 2, batch_size=n, augmenter=augmenter).repeat()
    first, second = (x.numpy() for x, _ in cropped.take(2))
    assert not np.array_equal(first, pattern) and not np.array_equal(first, second)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3)).astype(np.uint8)
    flips = AlternatingFlip(len(images), random_state=3)
    dataset = make_dataset(images, np.zeros(40), 2, batch_size=16, alternating_flip=flips)
    mirrored_by_epoch = []
    for _ in range(3):  # each pass over the dataset is the next epoch
        seen = np.concatenate([x.numpy() for x, _ in dataset])
        mirrored = np.all(seen == images[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(mirrored | np.all(seen == images, axis=(1, 2, 3)))  # a flip, nothing else
        mirrored_by_epoch.append(mirrored)
    np.testing.assert_array_equal(mirrored_by_epoch[0], flips.first_flips)
    np.testing.assert_array_equal(mirrored_by_epoch[1], ~flips.first_flips)
    np.testing.assert_array_equal(mirrored_by_epoch[2], flips.first_flips)
    assert 10 <= flips.first_flips.sum() <= 30
    np.testing.assert_array_equal(AlternatingFlip(40, random_state=3).first_flips, flips.first_flips)  # seeded
    resumed = AlternatingFlip(40, random_state=3, first_epoch=1)  # a run resumed after one epoch
    seen = np.concatenate([x.numpy() for x, _ in make_dataset(images, np.zeros(40), 2, 16, alternating_flip=resumed)])
    np.testing.assert_array_equal(np.all(seen == images[:, :, ::-1], axis=(1, 2, 3)), ~flips.first_flips)


def test_cutout_erases_one_square_per_image_with_the_dataset_mean():
    from cifar_core.data.pipeline import augment_preview
    from cifar_core.models.homebrew import CIFAR_MEAN

    images = np.full((32, 32, 32, 3), 7, np.uint8)
    out = augment_preview(images, TrainConfig(augmentations=("cutout",), cutout_size=10), random_state=1)
    erased = (out != 7).any(-1)
    assert (erased.sum((1, 2)) == 100).all()  # a whole 10x10 square, inside the image, every time
    assert (erased.any(2).sum(1) == 10).all() and (erased.any(1).sum(1) == 10).all()
    np.testing.assert_array_equal(out[erased][0], np.rint(255 * np.array(CIFAR_MEAN)))
    tops = [np.nonzero(mask.any(1))[0][0] for mask in erased]
    assert len(set(tops)) > 5  # placed at random


def test_cutout_larger_than_the_image_is_a_clear_config_error():
    from cifar_core.errors import ConfigError

    with pytest.raises(ConfigError, match="cutout_size"):
        build_augmenter(TrainConfig(augmentations=("cutout",), cutout_size=32), 32)
    with pytest.raises(ConfigError, match="cutout_size"):
        TrainConfig(cutout_size=0)
