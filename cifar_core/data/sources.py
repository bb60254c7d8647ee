"""Dataset sources -> validated uint8 arrays, cached once as npz.

A source is one of:
  "keras"                        the official download through Keras (online)
  path to cifar-10-python.tar.gz or its unpacked cifar-10-batches-py/ folder
  path to an image folder (train/<class>/*, test/<class>/*) or a .zip/.tar/.tar.gz of one
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataSourceError, ImageDecodeError
from ..imaging import MAX_BYTES as MAX_IMAGE_BYTES
from ..imaging import decode_image, read_image_file, resize_image
from ..safeio import read_cached_npz, read_regular_file, write_cached_npz
from .archive import DEFAULT_LIMITS, is_archive, iter_archive_files
from .pickles import MAX_PICKLE_BYTES, parse_batch, parse_label_names

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR_IMAGE_SIZE = 32
SOURCE_ENV_VAR = "CIFAR10_SOURCE"
CACHE_ENV_VAR = "CIFAR_CORE_CACHE"
# Bump when decoding changes, so stale caches are not reused.
LOADER_VERSION = 1
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
OFFICIAL_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
# 10 test images per class, committed so the dashboard works with no dataset at hand
# (written by tools/make_sample.py).
SAMPLE_FILE = Path(__file__).resolve().parents[2] / "artifacts" / "samples" / "cifar10-test-sample.npz"
MAX_SAMPLE_BYTES = 4 << 20  # 100 images of 32 px are 300 KiB


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    description: str
    load_seconds: float = 0.0
    from_cache: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    def summary(self) -> dict:
        return {
            "source": self.source,
            "description": self.description,
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "train_counts": np.bincount(self.y_train, minlength=len(self.class_names)).tolist(),
            "test_counts": np.bincount(self.y_test, minlength=len(self.class_names)).tolist(),
        }


def default_source() -> str:
    return os.environ.get(SOURCE_ENV_VAR) or "keras"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "cifar_core")


def load_dataset(source: str | os.PathLike | None = None, image_size: int = CIFAR_IMAGE_SIZE,
                 use_cache: bool = True) -> Dataset:
    """Load a source as validated arrays; a cached copy is reused when fresh."""
    source = str(source) if source else default_source()
    started = time.perf_counter()
    kind, fingerprint = _identify(source)
    cache_file = cache_dir() / f"{kind}-{_cache_key(fingerprint, image_size)}.npz"
    if use_cache and cache_file.is_file():
        dataset = _read_cache(cache_file, source, image_size)
        if dataset is not None:
            dataset.load_seconds = time.perf_counter() - started
            return dataset
    loader = {"keras": _load_keras, "batches": _load_official_batches, "images": _load_image_folder}[kind]
    dataset = loader(source, image_size)
    validate_dataset(dataset)
    if use_cache:
        write_cached_npz(cache_file, {"x_train": dataset.x_train, "y_train": dataset.y_train,
                                      "x_test": dataset.x_test, "y_test": dataset.y_test,
                                      "class_names": np.array(dataset.class_names),
                                      "description": np.array(dataset.description)})
    dataset.load_seconds = time.perf_counter() - started
    return dataset


# --- identification and caching --------------------------------------------------

def _identify(source: str) -> tuple[str, str]:
    """(loader kind, fingerprint that changes whenever the content may have)."""
    if source == "keras":
        return "keras", "keras"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(f"data source not found: {source} (expected 'keras', an archive or a folder)")
    path = path.resolve()
    if path.is_file():
        if not is_archive(path):
            raise DataSourceError(f"{path.name}: not a supported archive (use .zip, .tar or .tar.gz)")
        stat = path.stat()
        kind = "batches" if "cifar-10-python" in path.name else "images"
        return kind, f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if path.is_dir():
        kind = "batches" if _find_batch_folder(path) else "images"
        digest = hashlib.sha256(str(path).encode())
        for file in sorted(_walk_files(path)):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return kind, digest.hexdigest()
    raise DataSourceError(f"data source is neither a file nor a folder: {source}")


def looks_like_dataset(path: Path) -> bool:
    """A cheap check that reads no file and walks no folder: an archive file, or a folder
    with CIFAR batches or train/ and test/ subfolders."""
    try:
        if path.is_file():
            return is_archive(path)
        return path.is_dir() and (_find_batch_folder(path) is not None
                                  or ((path / "train").is_dir() and (path / "test").is_dir()))
    except OSError:
        return False


def _cache_key(fingerprint: str, image_size: int) -> str:
    text = f"{fingerprint}|size={image_size}|v={LOADER_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names", "description")


def max_cache_bytes(image_size: int) -> int:
    """The most a cache of any dataset the loaders accept can hold: every image an archive may
    have, at the requested size, with its label, plus room for the names."""
    return DEFAULT_LIMITS.max_members * (image_size * image_size * 3 + 8) + (1 << 20)


def _read_cache(cache_file: Path, source: str, image_size: int) -> Dataset | None:
    """The cached dataset, or None where it is missing, damaged or not what the loaders write
    (rebuilt then, never trusted)."""
    arrays = read_cached_npz(cache_file, max_cache_bytes(image_size), CACHE_KEYS)
    if arrays is None:
        return None
    try:
        dataset = Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                          tuple(str(n) for n in arrays["class_names"]), source,  # 0-d: TypeError
                          str(arrays["description"]), from_cache=True)
        validate_dataset(dataset)
    except (DataSourceError, TypeError, ValueError):
        return None
    return dataset if dataset.image_size == image_size else None


def validate_dataset(dataset: Dataset) -> None:
    num_classes = len(dataset.class_names)
    for split, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DataSourceError(f"{split} images must be uint8 (N, H, W, 3); found {x.dtype} {x.shape}")
        if x.shape[1:] != dataset.x_train.shape[1:]:
            raise DataSourceError(f"test images are {x.shape[1:]}, training images {dataset.x_train.shape[1:]}")
        if y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise DataSourceError(f"{split} split has {len(x)} images and labels of shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataSourceError(f"{split} labels must be integers; found {y.dtype}")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataSourceError(f"{split} labels must be in [0, {num_classes - 1}]")
    if num_classes < 2:
        raise DataSourceError(f"a dataset needs at least 2 classes; found {num_classes}")


# --- keras download ---------------------------------------------------------------

def _load_keras(source: str, image_size: int) -> Dataset:
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # noqa: BLE001 - offline shows up as many exception types
        raise DataSourceError(
            f"could not download CIFAR-10 through Keras ({type(exc).__name__}); offline? "
            "pass --data PATH to cifar-10-python.tar.gz or an image-folder archive") from None
    x_train, x_test = (_resize_all(x, image_size) for x in (x_train, x_test))
    return Dataset(x_train, y_train.reshape(-1).astype(np.int64), x_test, y_test.reshape(-1).astype(np.int64),
                   CIFAR10_CLASSES, source, "CIFAR-10 (official, Keras download)")


# --- official python batches ------------------------------------------------------

def _find_batch_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file() and (candidate / OFFICIAL_BATCHES[0]).is_file():
            return candidate
    return None


BATCH_MEMBERS = frozenset({*OFFICIAL_BATCHES, "test_batch", "batches.meta"})


def _batch_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of the CIFAR batch files only, one at a time, each bounded."""
    if path.is_dir():
        folder = _find_batch_folder(path)
        for name in sorted(BATCH_MEMBERS):
            if (folder / name).exists():
                yield name, read_regular_file(folder / name, MAX_PICKLE_BYTES, DataSourceError, "CIFAR batch")
        return
    limits = replace(DEFAULT_LIMITS, max_member_bytes=MAX_PICKLE_BYTES)
    for name, content in iter_archive_files(path, limits, wanted=lambda n: PurePosixPath(n).name in BATCH_MEMBERS):
        yield PurePosixPath(name).name, content


def _load_official_batches(source: str, image_size: int) -> Dataset:
    path = Path(source).expanduser().resolve()
    # Each batch is parsed as it streams past, so memory holds arrays, never the archive.
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    label_names: list[str] | None = None
    for name, content in _batch_members(path):
        if name in parsed or (name == "batches.meta" and label_names is not None):
            raise DataSourceError(f"{path.name}: holds {name} twice")
        if name == "batches.meta":
            label_names = parse_label_names(content)
        else:
            parsed[name] = parse_batch(content, name)
        del content
    missing = [name for name in (*OFFICIAL_BATCHES, "test_batch") if name not in parsed]
    if missing:
        raise DataSourceError(f"{path.name}: missing CIFAR batch files {missing}")
    class_names = CIFAR10_CLASSES
    if label_names is not None and len(label_names) == len(CIFAR10_CLASSES):
        class_names = tuple(label_names)
    x_train = np.concatenate([parsed[name][0] for name in OFFICIAL_BATCHES])
    y_train = np.concatenate([parsed[name][1] for name in OFFICIAL_BATCHES])
    x_test, y_test = parsed["test_batch"]
    return Dataset(_resize_all(x_train, image_size), y_train, _resize_all(x_test, image_size), y_test,
                   class_names, source, "CIFAR-10 (official python batches)")


# --- image folders and archives of them ---------------------------------------------

def _walk_files(root: Path, max_entries: int = DEFAULT_LIMITS.max_members) -> Iterator[Path]:
    """Regular files under root; a folder with more entries than a dataset archive may
    hold (a home folder, '/') is refused instead of walked for minutes."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        seen += len(dirnames) + len(filenames)
        if seen > max_entries:
            raise DataSourceError(f"{root}: more than {max_entries} files and folders; "
                                  "not a dataset folder")
        for filename in filenames:
            path = Path(dirpath) / filename
            if not path.is_symlink() and path.is_file():
                yield path


def _layout_key(relative: str) -> tuple[str, str] | None:
    """(split, class) for '<any prefix>/<split>/<class>/<file>', else None."""
    parts = PurePosixPath(relative).parts
    # Hidden files are left out: AppleDouble "._x.jpg" files carry an image suffix. (.DS_Store,
    # Thumbs.db and desktop.ini fall to the suffix test below.)
    if len(parts) < 3 or parts[-1].startswith("."):
        return None
    if "__MACOSX" in parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    split, class_name = parts[-3].lower(), parts[-2]
    return (split, class_name) if split in SPLITS else None


def _in_layout(relative: str) -> bool:
    return _layout_key(relative) is not None


def _iter_folder_members(root: Path) -> Iterator[tuple[str, bytes]]:
    # Chosen by name before a byte is read; each image bounded like an upload.
    for path in _walk_files(root):
        relative = path.relative_to(root).as_posix()
        if _in_layout(relative):
            try:
                yield relative, read_image_file(path)
            except ImageDecodeError as exc:
                raise DataSourceError(str(exc)) from None


def _image_members(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        return _iter_folder_members(path)
    return iter_archive_files(path, replace(DEFAULT_LIMITS, max_member_bytes=MAX_IMAGE_BYTES), wanted=_in_layout)


def _load_image_folder(source: str, image_size: int) -> Dataset:
    path = Path(source).expanduser().resolve()
    members = _image_members(path)
    images: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for relative, content in members:
        split, class_name = _layout_key(relative)
        try:
            array = decode_image(content, name=relative)
        except ImageDecodeError as exc:
            raise DataSourceError(f"{path.name}: {exc}") from None
        images[split].append(resize_image(array, image_size))
        names[split].append(class_name)
    class_names = tuple(sorted(set(names["train"])))
    if not class_names:
        raise DataSourceError(
            f"{path.name}: no images in the image-folder layout train/<class>/<image> (and test/<class>/<image>)")
    if not names["test"]:
        raise DataSourceError(f"{path.name}: has a train/ split but no test/<class>/<image> files")
    unknown = sorted(set(names["test"]) - set(class_names))
    if unknown:
        raise DataSourceError(f"{path.name}: test classes {unknown} do not appear in train/")
    index = {name: i for i, name in enumerate(class_names)}
    arrays = {split: (np.stack(images[split]), np.array([index[n] for n in names[split]], dtype=np.int64))
              for split in SPLITS}
    is_cifar = class_names == CIFAR10_CLASSES
    description = f"{'CIFAR-10' if is_cifar else 'image folder'} ({path.name})"
    return Dataset(*arrays["train"], *arrays["test"], class_names, source, description)


def _resize_all(images: np.ndarray, image_size: int) -> np.ndarray:
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images
    return np.stack([resize_image(image, image_size) for image in images])
