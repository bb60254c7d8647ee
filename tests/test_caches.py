"""Every .npz the studio keeps to save work (the decoded dataset, the converted ImageNet weights, a
run's best epoch, the shipped sample): damaged in any way, it is computed again or done without,
never trusted and never a crash. Each reader meets every kind of damage."""
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cifar_core.safeio import read_cached_npz


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bytes_changed(path: Path) -> None:
    """Eight bytes in the middle of the largest array: the zip still opens, its CRC-32 fails."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def _not_a_zip(path: Path) -> None:
    path.write_bytes(b"not an npz at all\n" * 10)


def _other_arrays(path: Path) -> None:
    """A sound .npz that is not the cache: names and shapes the reader does not expect."""
    path.unlink()
    with open(path, "wb") as handle:
        np.savez(handle, arr_0=np.zeros((2, 2), np.float64), x_train=np.zeros(3, np.float32),
                 images=np.zeros((1, 3), np.float64), epoch=np.float64(0.5))


def _a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _a_link(path: Path) -> None:
    """A link to a sound copy: caches are written by rename, so a link is not one of ours."""
    copy = path.with_name(f"elsewhere-{path.name}")
    path.rename(copy)
    path.symlink_to(copy)


DAMAGE = {"truncated": _truncated, "bytes changed": _bytes_changed, "not a zip": _not_a_zip,
          "other arrays": _other_arrays, "a folder": _a_folder, "a FIFO": _a_fifo, "a link": _a_link}


@dataclass
class Cache:
    """make(tmp_path) writes the cache as the studio does and returns (its path, what reading it
    gives); check(tmp_path, expected) reads it again and asserts the fallback."""
    make: Callable
    check: Callable


def _dataset_cache(tmp_path):
    from cifar_core.data import load_dataset
    from cifar_core.data.sources import cache_dir

    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                from PIL import Image

                Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(folder / split / name / f"{i}.png")
    first = load_dataset(folder)
    assert load_dataset(folder).from_cache  # the cache works before it is damaged
    (path,) = cache_dir().glob("images-*.npz")
    return path, (folder, first)


def _dataset_check(tmp_path, expected):
    from cifar_core.data import load_dataset

    folder, first = expected
    again = load_dataset(folder)
    assert not again.from_cache
    np.testing.assert_array_equal(again.x_train, first.x_train)
    np.testing.assert_array_equal(again.y_test, first.y_test)
    assert again.class_names == first.class_names


def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _best_weights(tmp_path):
    from cifar_core.training.callbacks import ResumableEarlyStopping, read_best_weights

    model = _tiny_model()
    first = ResumableEarlyStopping(tmp_path / "run", [], monitor="val_loss", patience=5)
    first.set_model(model)
    first.on_train_begin()
    first.on_epoch_end(0, {"val_loss": 1.0})
    assert read_best_weights(first.path, model)[0] == 0  # sound, it is read
    return first.path, None


def _best_weights_check(tmp_path, expected):
    from cifar_core.training.callbacks import ResumableEarlyStopping

    model = _tiny_model()
    resumed = ResumableEarlyStopping(tmp_path / "run", [{"epoch": 1, "stage": "train", "val_loss": 1.0}],
                                     monitor="val_loss", patience=5)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.best == 1.0 and resumed.best_weights is None  # goes on without them


def _sample(tmp_path):
    """A sample written as tools/make_sample.py writes the shipped one: 2 images of each of 10 classes."""
    path = tmp_path / "sample.npz"
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), np.uint8)
    np.savez_compressed(path, images=images, labels=np.repeat(np.arange(10), 2),
                        class_names=np.array([f"class {i}" for i in range(10)]))
    return path, None


def _sample_check(tmp_path, expected):
    from cifar_core import ui

    ui.sample_dataset.clear()
    assert ui.sample_dataset() is None


READERS = {"dataset cache": Cache(_dataset_cache, _dataset_check),
           "best weights": Cache(_best_weights, _best_weights_check),
           "shipped sample": Cache(_sample, _sample_check)}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_cache_is_computed_again_or_done_without(reader, damage, tmp_path, monkeypatch):
    from cifar_core import ui

    cache = READERS[reader]
    path, expected = cache.make(tmp_path)
    monkeypatch.setattr(ui, "SAMPLE_FILE", path if reader == "shipped sample" else ui.SAMPLE_FILE)
    DAMAGE[damage](path)
    cache.check(tmp_path, expected)


def test_a_sound_sample_is_read(tmp_path, monkeypatch):
    from cifar_core import ui

    path, _ = _sample(tmp_path)
    monkeypatch.setattr(ui, "SAMPLE_FILE", path)
    ui.sample_dataset.clear()
    sample = ui.sample_dataset()
    assert sample.x_test.shape == (20, 32, 32, 3) and sample.class_names[9] == "class 9"
    assert np.bincount(sample.y_test).tolist() == [2] * 10 and "20 test images" in sample.description


def test_a_cached_dataset_of_another_size_is_not_used(tmp_path):
    """A cache holding images of another size than asked for (a key collision, a hand-made file)
    is decoded again rather than handed on."""
    from cifar_core.data.sources import CACHE_KEYS, _read_cache, max_cache_bytes

    path = tmp_path / "images-x.npz"
    arrays = {"x_train": np.zeros((4, 16, 16, 3), np.uint8), "y_train": np.array([0, 1, 0, 1]),
              "x_test": np.zeros((2, 16, 16, 3), np.uint8), "y_test": np.array([0, 1]),
              "class_names": np.array(["a", "b"]), "description": np.array("d")}
    np.savez(path, **arrays)
    assert set(read_cached_npz(path, max_cache_bytes(16), CACHE_KEYS)) == set(CACHE_KEYS)
    assert _read_cache(path, "src", 16).image_size == 16
    assert _read_cache(path, "src", 32) is None
    np.savez(path, **{**arrays, "y_test": np.array([0.0, 1.0])})  # labels must be integers
    assert _read_cache(path, "src", 16) is None
    np.savez(path, **{**arrays, "x_test": np.zeros((2, 8, 8, 3), np.uint8)})  # the splits must agree
    assert _read_cache(path, "src", 16) is None
    np.savez(path, **{**arrays, "y_train": np.array([[0], [1], [0], [1]])})  # one label per image
    assert _read_cache(path, "src", 16) is None


def test_a_cache_over_its_bound_is_refused_unread(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, a=np.zeros(1000, np.uint8))
    assert read_cached_npz(path, 2000, ("a",))["a"].shape == (1000,)
    assert read_cached_npz(path, 999, ("a",)) is None
    assert read_cached_npz(tmp_path / "missing.npz", 2000, ("a",)) is None


def test_a_one_array_cache_is_read_or_none_never_an_error(tmp_path):
    from cifar_core.safeio import read_cached_npy

    path = tmp_path / "features.npy"
    np.save(path, np.arange(250, dtype=np.float32))  # 1000 bytes of values
    assert read_cached_npy(path, 1000).shape == (250,)
    assert read_cached_npy(path, 999) is None  # over its bound: computed again
    assert read_cached_npy(tmp_path / "missing.npy", 1000) is None
    (tmp_path / "link.npy").symlink_to(path)
    assert read_cached_npy(tmp_path / "link.npy", 1000) is None  # caches are renamed into place, never linked
    path.write_bytes(path.read_bytes()[:-4])  # truncated
    assert read_cached_npy(path, 1000) is None


@pytest.mark.parametrize("damage", ["truncated", "other arrays", "a folder"])
def test_damaged_imagenet_weights_are_converted_again(damage, tmp_path):
    """The converted Lite0 weights (a cache of the installed PyTorch package's): damaged, the model
    still gets the ImageNet weights, converted again."""
    from cifar_core.models.transfer import build_lite, lite_weights_path

    first = build_lite("lite0", (32, 32, 3), 10, weights="imagenet")
    path = lite_weights_path("lite0")
    assert path.is_file()
    DAMAGE[damage](path)
    again = build_lite("lite0", (32, 32, 3), 10, weights="imagenet")
    for layer in ("stem_conv", "block3_dwconv", "top_bn"):
        for mine, theirs in zip(again.get_layer(layer).get_weights(), first.get_layer(layer).get_weights(),
                                strict=True):
            np.testing.assert_array_equal(mine, theirs)
    assert np.abs(first.get_layer("stem_conv").get_weights()[0]).sum() > 0  # ImageNet's, not zeros


def test_imagenet_weights_load_where_no_cache_can_be_written(tmp_path, monkeypatch):
    from cifar_core.models.transfer import build_lite

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CIFAR_CORE_CACHE", str(blocked / "cache"))
    model = build_lite("lite0", (32, 32, 3), 10, weights="imagenet")
    assert np.abs(model.get_layer("stem_conv").get_weights()[0]).sum() > 0


def test_a_cache_is_written_beside_itself_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from cifar_core import safeio

    target = tmp_path / "cache" / "images.npz"
    seen = []
    real_savez = np.savez

    def recording_savez(handle, **arrays):
        seen.append(Path(os.readlink(f"/proc/self/fd/{handle.fileno()}")))
        real_savez(handle, **arrays)

    monkeypatch.setattr(np, "savez", recording_savez)
    safeio.write_cached_npz(target, {"a": np.arange(3)})
    # Streamed to a temporary in the cache's own folder (a rename never crosses file systems), hidden,
    # named after the cache, then renamed: nothing else is left.
    assert seen[0].parent == target.parent and seen[0].name.startswith(".images.npz.") and seen[0].suffix == ".tmp"
    assert [p.name for p in target.parent.iterdir()] == ["images.npz"]
    np.testing.assert_array_equal(read_cached_npz(target, 10_000, ("a",))["a"], np.arange(3))

    def failing_savez(handle, **arrays):
        handle.write(b"half a cache")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    safeio.write_cached_npz(tmp_path / "cache" / "other.npz", {"a": np.arange(3)})  # costs only the cache
    assert [p.name for p in target.parent.iterdir()] == ["images.npz"]

    def vanishing_savez(handle, **arrays):  # the temporary is gone before the clean-up reaches it
        os.unlink(os.readlink(f"/proc/self/fd/{handle.fileno()}"))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(np, "savez", vanishing_savez)
    safeio.write_cached_npz(tmp_path / "cache" / "third.npz", {"a": np.arange(3)})
    assert [p.name for p in target.parent.iterdir()] == ["images.npz"]


@pytest.mark.parametrize("cached", [
    np.ones((4, 3), np.float32),  # sound: used
    np.ones((4, 5), np.float32),  # another backbone's width
    np.ones((3, 3), np.float32),  # another number of images
    np.ones((4, 3, 1), np.float32),  # not one row per image
    np.ones((4, 3), np.int32),  # not features
    np.array([[1, 1, np.nan]] * 4, np.float32),  # a damaged value
    np.array([[1, 1, np.inf]] * 4, np.float32),
])
def test_cached_features_are_used_only_when_they_fit_the_head(cached, tmp_path, monkeypatch):
    import keras

    from cifar_core import runs
    from cifar_core.training import features

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="predictions")])
    images = np.zeros((4, 8, 8, 3), np.uint8)
    path = runs.feature_cache_file(tmp_path, f"train-{features._version(images, 8)}")
    path.parent.mkdir(parents=True)
    np.save(path, cached)
    fresh = np.full((4, 3), 2.0, np.float32)
    monkeypatch.setattr(features, "extract_features", lambda *args, **kwargs: fresh)
    found = features.cached_features(model, tmp_path, "train", images, 8)
    fits = cached.shape == (4, 3) and cached.dtype == np.float32 and np.isfinite(cached).all()
    assert np.array_equal(found, cached if fits else fresh)
    assert np.array_equal(np.load(path), cached if fits else fresh)  # a misfit is replaced on disk


def test_cached_features_are_those_of_the_same_images_at_the_same_size(tmp_path, monkeypatch):
    # The cache was named by its split alone: features of other images of the same count and width (a
    # data source changed before a resume, a run folder from someone else) trained the head on garbage.
    import keras

    from cifar_core import runs
    from cifar_core.training import features

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="predictions")])
    computed = []

    def extract(model, images, input_size, flip=False, run_dir=None):
        computed.append((int(images[0, 0, 0, 0]), input_size, flip))
        return np.full((len(images), 3), len(computed), np.float32)

    monkeypatch.setattr(features, "extract_features", extract)
    first, second = np.zeros((4, 8, 8, 3), np.uint8), np.ones((4, 8, 8, 3), np.uint8)
    folder = runs.checkpoint_file(tmp_path, "")
    folder.mkdir(parents=True)
    np.save(runs.feature_cache_file(tmp_path, "train"), np.ones((4, 3), np.float32))  # an unversioned one
    features.cached_features(model, tmp_path, "train", first, 8, flip=True)
    features.cached_features(model, tmp_path, "train", first, 8)
    features.cached_features(model, tmp_path, "test", first, 8)
    assert features.cached_features(model, tmp_path, "train", first, 8)[0, 0] == 2  # the same: from the cache
    assert features.cached_features(model, tmp_path, "train", second, 8)[0, 0] == 4  # other images: computed
    assert features.cached_features(model, tmp_path, "train", second, 16)[0, 0] == 5  # another size: computed
    assert computed == [(0, 8, True), (0, 8, False), (0, 8, False), (1, 8, False), (1, 16, False)]
    version = features._version
    assert {path.name for path in folder.iterdir()} == {  # the latest of each split and flip, no other
        f"features-test-{version(first, 8)}.npy", f"features-train-{version(second, 16)}.npy",
        f"features-train-{version(first, 8)}-flip.npy"}
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    assert version(pixels, 8) != version(pixels[:, :, :, ::-1], 8)  # the pixels count
    assert version(first, 8) != version(first.reshape(4, 8, 24, 1), 8)  # and the shape
