"""data/sources.py, function by function: what each loader returns (arrays, labels, names, source,
description), what each refuses and with which line, and how sources are found, keyed and cached."""
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, png_bytes, write_official_batches

from cifar_core.data import sources
from cifar_core.data.sources import (
    CIFAR10_CLASSES,
    Dataset,
    load_dataset,
    looks_like_dataset,
    validate_dataset,
)
from cifar_core.errors import DataSourceError


def _dataset(**changes) -> Dataset:
    arrays = {"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0, 1, 2, 1]),
              "x_test": np.zeros((2, 8, 8, 3), np.uint8), "y_test": np.array([2, 0]),
              "class_names": ("a", "b", "c"), "source": "src", "description": "d"}
    return Dataset(**{**arrays, **changes})


# --- validate_dataset ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"x_train": np.zeros((4, 8, 8, 3), np.float32)},
     r"train images must be uint8 \(N, H, W, 3\); found float32 \(4, 8, 8, 3\)"),
    ({"x_test": np.zeros((2, 8, 8), np.uint8)}, r"test images must be uint8 \(N, H, W, 3\); found uint8 \(2, 8, 8\)"),
    ({"x_train": np.zeros((4, 8, 8, 4), np.uint8)},
     r"train images must be uint8 \(N, H, W, 3\); found uint8 \(4, 8, 8, 4\)"),
    ({"x_test": np.zeros((2, 8, 9, 3), np.uint8)}, r"test images are \(8, 9, 3\), training images \(8, 8, 3\)"),
    ({"y_train": np.array([[0], [1], [2], [1]])}, r"train split has 4 images and labels of shape \(4, 1\)"),
    ({"y_test": np.array([0, 1, 2])}, r"test split has 2 images and labels of shape \(3,\)"),
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, np.int64)},
     r"test split has 0 images and labels of shape \(0,\)"),
    ({"y_train": np.array([0.0, 1.0, 2.0, 1.0])}, "train labels must be integers; found float64"),
    ({"y_test": np.array([2, 3])}, r"test labels must be in \[0, 2\]"),
    ({"y_train": np.array([0, -1, 2, 1])}, r"train labels must be in \[0, 2\]"),
    ({"class_names": ("only",), "y_train": np.zeros(4, np.int64), "y_test": np.zeros(2, np.int64)},
     "a dataset needs at least 2 classes; found 1"),
])
def test_each_unsound_dataset_is_refused_by_name(changes, message):
    with pytest.raises(DataSourceError, match=f"^{message}$"):
        validate_dataset(_dataset(**changes))


def test_a_sound_dataset_passes_and_summarises():
    dataset = _dataset()
    validate_dataset(dataset)
    assert dataset.image_size == 8
    assert dataset.summary() == {"source": "src", "description": "d", "class_names": ["a", "b", "c"],
                                 "image_size": 8, "n_train": 4, "n_test": 2, "train_counts": [1, 2, 1],
                                 "test_counts": [1, 0, 1]}
    four = _dataset(class_names=("a", "b", "c", "d")).summary()  # a count for every class, seen or not
    assert four["train_counts"] == [1, 2, 1, 0] and four["test_counts"] == [1, 0, 1, 0]


# --- the Keras download (online users) ----------------------------------------------------------

@pytest.fixture
def keras_download(monkeypatch):
    """keras.datasets.cifar10.load_data as it answers online: (N, 32, 32, 3) uint8, labels (N, 1) uint8."""
    import keras

    rng = np.random.default_rng(5)
    data = ((rng.integers(0, 256, (6, 32, 32, 3), np.uint8), rng.integers(0, 10, (6, 1)).astype(np.uint8)),
            (rng.integers(0, 256, (3, 32, 32, 3), np.uint8), np.array([[9], [0], [4]], np.uint8)))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: data)
    return data


def test_the_keras_download_loads_as_cifar10(keras_download):
    (x_train, y_train), (x_test, y_test) = keras_download
    dataset = load_dataset("keras")
    np.testing.assert_array_equal(dataset.x_train, x_train)
    np.testing.assert_array_equal(dataset.x_test, x_test)
    assert dataset.y_train.dtype == np.int64 and dataset.y_train.tolist() == y_train[:, 0].tolist()
    assert dataset.y_test.tolist() == [9, 0, 4]
    assert dataset.class_names == CIFAR10_CLASSES and dataset.source == "keras"
    assert dataset.description == "CIFAR-10 (official, Keras download)"
    assert load_dataset("keras").from_cache  # cached like any other source
    assert load_dataset(None).source == "keras"  # the default source without CIFAR10_SOURCE


def test_the_keras_download_is_resized_when_asked(keras_download):
    dataset = load_dataset("keras", image_size=16)
    assert dataset.x_train.shape == (6, 16, 16, 3) and dataset.x_test.shape == (3, 16, 16, 3)


def test_an_offline_keras_download_says_what_to_do_instead(monkeypatch):
    import keras

    def offline():
        raise ConnectionError("no route")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataSourceError) as caught:
        load_dataset("keras", use_cache=False)
    assert str(caught.value) == ("could not download CIFAR-10 through Keras (ConnectionError); offline? pass "
                                 "--data PATH to cifar-10-python.tar.gz or an image-folder archive")


def test_the_default_source_is_the_environment_variable_else_keras(monkeypatch):
    monkeypatch.setenv("CIFAR10_SOURCE", "/data/cifar.tar.gz")
    assert sources.default_source() == "/data/cifar.tar.gz"
    monkeypatch.setenv("CIFAR10_SOURCE", "")
    assert sources.default_source() == "keras"
    monkeypatch.delenv("CIFAR10_SOURCE")
    assert sources.default_source() == "keras"


def test_the_cache_folder_is_the_environment_variable_else_in_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CIFAR_CORE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_dir() == tmp_path / "home" / ".cache" / "cifar_core"


# --- official batches ---------------------------------------------------------------------------

def _tar(folder: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return target


def test_official_batches_take_their_class_names_from_the_meta_file(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    names = [f"kind {i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}))
    dataset = load_dataset(folder)
    assert dataset.class_names == tuple(names) and dataset.source == str(folder)
    assert dataset.description == "CIFAR-10 (official python batches)"
    assert dataset.y_train.tolist() == [label for i in range(1, 6) for label in
                                        pickle.loads((folder / f"data_batch_{i}").read_bytes())[b"labels"]]


def test_a_meta_file_naming_another_number_of_classes_is_ignored(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    assert load_dataset(folder).class_names == CIFAR10_CLASSES
    (folder / "batches.meta").unlink()
    assert load_dataset(folder, use_cache=False).class_names == CIFAR10_CLASSES


def test_the_batches_folder_may_be_the_parent_of_cifar_10_batches_py(tmp_path):
    write_official_batches(tmp_path / "download" / "cifar-10-batches-py")
    assert load_dataset(tmp_path / "download").x_train.shape == (25, 32, 32, 3)
    assert looks_like_dataset(tmp_path / "download")


def test_a_folder_with_a_test_batch_but_no_first_training_batch_is_not_batches(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_1").unlink()
    assert sources._find_batch_folder(folder) is None
    (folder / "data_batch_1").write_bytes(b"")
    (folder / "test_batch").unlink()
    assert sources._find_batch_folder(folder) is None


def test_an_archive_missing_batches_names_them(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    for name in ("data_batch_3", "test_batch"):
        (folder / name).unlink()
    with pytest.raises(DataSourceError, match=r"^cifar-10-python.tar.gz: missing CIFAR batch files "
                                              r"\['data_batch_3', 'test_batch'\]$"):
        load_dataset(_tar(folder, tmp_path / "cifar-10-python.tar.gz"))


def test_an_archive_holding_a_batch_twice_is_refused(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    twice = {"other/data_batch_2": (folder / "data_batch_2").read_bytes()}
    with pytest.raises(DataSourceError, match=r"^cifar-10-python.tar.gz: holds data_batch_2 twice$"):
        load_dataset(_tar(folder, tmp_path / "cifar-10-python.tar.gz", twice))
    meta = {"other/batches.meta": (folder / "batches.meta").read_bytes()}
    with pytest.raises(DataSourceError, match=r"holds batches.meta twice$"):
        load_dataset(_tar(folder, tmp_path / "cifar-10-python-2.tar.gz", meta))


def test_a_batch_archive_reads_only_batch_files(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    extra = {"cifar-10-batches-py/readme.html": b"<html>" + b"x" * 1000, "notes/data.bin": b"\x80\x04junk"}
    assert load_dataset(_tar(folder, tmp_path / "cifar-10-python.tar.gz", extra)).x_test.shape == (5, 32, 32, 3)


def test_a_batch_member_over_the_pickle_cap_is_refused_unread(tmp_path, monkeypatch):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    size = (folder / "data_batch_1").stat().st_size
    monkeypatch.setattr(sources, "MAX_PICKLE_BYTES", size - 1)
    with pytest.raises(DataSourceError, match=r"data_batch_\d.*CIFAR batch is .*the limit is"):
        load_dataset(folder)
    with pytest.raises(DataSourceError, match="data_batch_"):
        load_dataset(_tar(folder, tmp_path / "cifar-10-python.tar.gz"))


def test_a_damaged_batch_is_named(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": 1, b"labels": []}, protocol=2))
    with pytest.raises(DataSourceError, match=r"^data_batch_2: "):
        load_dataset(folder)


def test_a_batch_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    folder = write_official_batches(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_4").unlink()
    os.mkfifo(folder / "data_batch_4")
    with pytest.raises(DataSourceError, match="data_batch_4: is a device, pipe or socket"):
        load_dataset(folder)


# --- image folders ------------------------------------------------------------------------------

@pytest.mark.parametrize("relative,key", [
    ("train/cat/1.png", ("train", "cat")),
    ("photos/Test/Dog/2.JPG", ("test", "Dog")),  # any prefix; split case-insensitive; class as written
    ("a/b/train/.cat/3.png", ("train", ".cat")),
    ("train/cat/.hidden.png", None),
    ("train/cat/Thumbs.db", None),
    ("train/cat/THUMBS.DB", None),
    ("__MACOSX/train/cat/._1.png", None),
    ("__MACOSX/train/cat/1.png", None),
    ("train/cat/notes.txt", None),
    ("valid/cat/1.png", None),
    ("cat/1.png", None),
    ("1.png", None),
])
def test_the_layout_is_split_class_image(relative, key):
    assert sources._layout_key(relative) == key


def test_an_image_folder_of_the_ten_cifar_classes_is_described_as_cifar10(tmp_path):
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            (tmp_path / "ten" / split / name).mkdir(parents=True)
            (tmp_path / "ten" / split / name / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    dataset = load_dataset(tmp_path / "ten")
    assert dataset.description == "CIFAR-10 (ten)" and dataset.class_names == CIFAR10_CLASSES


def test_an_image_folder_loads_with_int64_labels_and_its_source(image_folder):
    dataset = load_dataset(image_folder)
    assert dataset.description == "image folder (my-photos)" and dataset.source == str(image_folder)
    assert dataset.y_train.dtype == np.int64 and dataset.class_names == CLASSES
    assert np.bincount(dataset.y_test).tolist() == [2, 2, 2] and dataset.y_test.shape == (6,)


def test_an_image_folder_without_a_test_split_says_so(image_folder):
    import shutil

    shutil.rmtree(image_folder / "test")
    with pytest.raises(DataSourceError, match=r"^my-photos: has a train/ split but no test/<class>/<image> files$"):
        load_dataset(image_folder)


def test_an_unreadable_image_in_a_folder_is_named(image_folder, monkeypatch):
    (image_folder / "train" / "cat" / "9.png").write_bytes(b"x" * 64)
    monkeypatch.setattr(sources, "read_image_file", lambda path: (_ for _ in ()).throw(
        sources.ImageDecodeError(f"{path.name}: too large")))
    with pytest.raises(DataSourceError, match=r"^\d\.png: too large$"):
        load_dataset(image_folder)


def test_an_image_archive_refuses_a_member_over_the_image_cap(image_folder, tmp_path, monkeypatch):
    archive = _tar(image_folder, tmp_path / "photos.tar.gz")
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(DataSourceError, match=r"^archive member 'my-photos/.*\.png' is \d+ bytes; the limit is 100$"):
        load_dataset(archive)


def test_walking_skips_hidden_folders_and_links_and_counts_every_entry(tmp_path):
    root = tmp_path / "root"
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "a").write_text("x")
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "1.png").write_text("x")
    (root / "train" / "cat" / "link.png").symlink_to(root / "train" / "cat" / "1.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "2.png").write_text("x")
    (root / "train" / "dog").symlink_to(outside, target_is_directory=True)
    assert sorted(p.relative_to(root).as_posix() for p in sources._walk_files(root)) == ["train/cat/1.png"]
    # Counted: train (root's .git is skipped unwalked), cat and dog (a link, listed, not walked), two files.
    assert len(list(sources._walk_files(root, max_entries=5))) == 1
    with pytest.raises(DataSourceError, match=r"root: more than 4 files and folders; not a dataset folder$"):
        list(sources._walk_files(root, max_entries=4))


# --- finding, keying and caching sources --------------------------------------------------------

def test_what_looks_like_a_dataset(tmp_path, image_folder):
    write_official_batches(tmp_path / "batches")
    (tmp_path / "data.tar.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "half" / "train").mkdir(parents=True)
    assert looks_like_dataset(image_folder) and looks_like_dataset(tmp_path / "batches")
    assert looks_like_dataset(tmp_path / "data.tar.gz")
    assert not looks_like_dataset(tmp_path / "notes.txt")
    assert not looks_like_dataset(tmp_path / "half") and not looks_like_dataset(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert not looks_like_dataset(tmp_path / "loop")
    assert not looks_like_dataset(tmp_path / ("x" * 300))  # ENAMETOOLONG: not a dataset, no traceback


def test_a_source_that_is_neither_file_nor_folder_is_named(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataSourceError, match=f"^data source is neither a file nor a folder: {tmp_path / 'pipe'}$"):
        load_dataset(tmp_path / "pipe")


def test_identical_folders_at_two_paths_are_cached_apart(image_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy" / "my-photos"
    shutil.copytree(image_folder, copy)
    os.utime(copy, ns=(0, 0))
    assert sources._identify(str(image_folder))[1] != sources._identify(str(copy))[1]
    assert sources._identify("keras") == ("keras", "keras")
    load_dataset(image_folder)
    assert not load_dataset(copy).from_cache


def test_each_image_size_has_its_own_cache(image_folder):
    assert not load_dataset(image_folder, image_size=16).from_cache
    assert not load_dataset(image_folder, image_size=24).from_cache  # written into the existing cache folder
    assert load_dataset(image_folder, image_size=24).from_cache
    again = load_dataset(image_folder, image_size=16)
    assert again.from_cache and again.image_size == 16 and again.source == str(image_folder)
    assert 0 < again.load_seconds < 60
    assert again.description == "image folder (my-photos)" and again.class_names == CLASSES


def test_a_load_without_the_cache_neither_reads_nor_writes_it(image_folder):
    first = load_dataset(image_folder, use_cache=False)
    assert not first.from_cache and not sources.cache_dir().exists()
    load_dataset(image_folder)
    assert not load_dataset(image_folder, use_cache=False).from_cache
    assert 0 < first.load_seconds < 60


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_cache(image_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(tmp_path / "deep" / "er" / "cache"))
    assert not load_dataset(image_folder).from_cache
    assert load_dataset(image_folder).from_cache  # the nested cache folder was made
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(blocked / "cache"))
    assert load_dataset(image_folder).x_train.shape == (12, 32, 32, 3)
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(tmp_path / "readonly"))
    (tmp_path / "readonly").mkdir()
    monkeypatch.setattr(sources.os, "replace", lambda *args: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert load_dataset(image_folder).x_train.shape == (12, 32, 32, 3)
    assert list((tmp_path / "readonly").iterdir()) == []  # no temporary file left behind


def test_a_cache_holds_every_image_an_archive_may_hold_and_no_more():
    per_image = 32 * 32 * 3 + 8  # pixels and an int64 label
    assert sources.max_cache_bytes(32) >= sources.DEFAULT_LIMITS.max_members * per_image
    assert sources.max_cache_bytes(32) <= sources.DEFAULT_LIMITS.max_members * per_image + (1 << 20)
    assert sources.max_cache_bytes(64) > 3.9 * sources.max_cache_bytes(32)


def test_a_cache_has_room_for_its_names_beside_the_most_images_it_may_hold(tmp_path, monkeypatch):
    """Two images per split, as many as the (patched) archive limit allows, with long class names:
    the cache still fits its bound and is used."""
    from dataclasses import replace

    monkeypatch.setattr(sources, "DEFAULT_LIMITS", replace(sources.DEFAULT_LIMITS, max_members=4))
    names = [f"{'a very long class name ' * 8}{i}" for i in range(2)]
    for split in ("train", "test"):
        for name in names:
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            (tmp_path / "photos" / split / name / "1.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    assert not load_dataset(tmp_path / "photos").from_cache
    assert load_dataset(tmp_path / "photos").from_cache


def test_images_are_resized_only_when_their_size_differs():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    assert sources._resize_all(images, 32) is images
    assert sources._resize_all(images, 16).shape == (3, 16, 16, 3)
    wide = np.zeros((2, 32, 16, 3), np.uint8)
    assert sources._resize_all(wide, 32).shape == (2, 32, 32, 3)
    tall = np.zeros((2, 16, 32, 3), np.uint8)
    assert sources._resize_all(tall, 32).shape == (2, 32, 32, 3)
