"""Bounded reading of files and JSON that may be hostile.

Every reader of a user's or a stranger's file goes through here, so that the
cost of reading is known before the expensive step: only regular files are
opened (a device never ends, a FIFO never answers), at most the byte cap plus
one is read whatever `stat` says, and parsed JSON is refused beyond a nesting
depth before any code walks it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CifarError, one_line

if TYPE_CHECKING:
    import numpy as np

# What reading a damaged zip archive can raise, for the readers that turn it into their one-line
# error: zlib.error is a damaged deflate stream, NotImplementedError an unknown compression method.
ZIP_READ_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile,
                   zlib.error)

# No file the studio writes nests deeper than a few levels; a hostile one may
# nest 200,000 deep and blow the stack of every recursive walker.
MAX_JSON_DEPTH = 32


def read_regular_file(path: Path | str, max_bytes: int, error: type[CifarError] = CifarError,
                      what: str = "file") -> bytes:
    """The bytes of a regular file no larger than max_bytes, or `error` with one line."""
    path = Path(path)
    fd, _ = _open_regular_file(path, max_bytes, error, what)
    try:
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew after fstat
        raise error(f"{path.name}: {what} is larger than the limit of {size_text(max_bytes)}")
    return data


def _open_regular_file(path: Path, max_bytes: int, error: type[CifarError], what: str) -> tuple[int, int]:
    """A read-only descriptor of the regular file at `path` and its size, no more than max_bytes;
    `error` with one line otherwise (nothing is left open)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of hanging.
        # (os.open's descriptors are never inherited by child processes: PEP 446.)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, EIO...
        raise error(f"{path}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{path}: is a folder; a {what} was expected")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is a device, pipe or socket; only regular files are read")
        if info.st_size > max_bytes:
            raise error(f"{path.name}: {what} is {size_text(info.st_size)}; the limit is {size_text(max_bytes)}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


class _FirstBytes(io.RawIOBase):
    """The first `size` bytes of an open file, seekable, and never a byte more: a reader of a file
    that grows while it is read sees the size that was checked when it was opened."""

    def __init__(self, handle, size: int):
        super().__init__()
        self._handle, self._size, self._position = handle, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if start + offset < 0:
            raise ValueError("negative seek position")
        self._position = start + offset
        return self._position

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._position))
        self._handle.seek(self._position)
        count = self._handle.readinto(memoryview(buffer)[:wanted]) or 0
        self._position += count
        return count


@contextlib.contextmanager
def _capped_stream(path: Path, max_bytes: int, error: type[CifarError]) -> Iterator[tuple[_FirstBytes, int]]:
    """An array file as a seekable stream capped at its size checked at open (at most max_bytes), and that
    size: readers unpack from the file, never from a copy of it in memory (a dataset cache took twice its size)."""
    fd, size = _open_regular_file(path, max_bytes, error, what="array file")
    with os.fdopen(fd, "rb") as handle:
        yield _FirstBytes(handle, size), size


def open_for_writing(path: Path | str, flags: int, error: type[CifarError], what: str) -> int:
    """os.open(path, flags) for a file written in place (a lock, an appended log), which must be a
    regular file in its own right: a link in its place is refused, not followed (a shared run
    folder could point it at any file of the user's), and a FIFO or device is refused instead of
    blocking or written to. A missing file is created (with O_CREAT in flags), honouring the umask."""
    path = Path(path)
    where = f"{path.name} in {path.parent}"
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise error(f"{where}: cannot look at it ({exc.strerror})") from None
    if found is not None and stat.S_ISLNK(found.st_mode):
        raise error(f"{where} is a link; the {what} is written only as a real file (remove the link)")
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:  # ELOOP: a link appeared since; ENXIO: a FIFO with no reader
        raise error(f"{where}: cannot open the {what} for writing ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{where} is a device, pipe or socket; the {what} is written only as a regular file")
    return fd


def regular_file_fd(path: Path | str) -> int | None:
    """A read-only descriptor of a regular file, or None where there is none, or a link, FIFO or
    device is in its place (opened without following or blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(1 << 20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def file_where(path: Path | str) -> str:
    """'NAME in FOLDER': how messages name a file (its folder is a run, a cache, an export)."""
    path = Path(path)
    return f"{path.name} in {path.parent.name}"


def size_text(n_bytes: int) -> str:
    """A byte count for a message: 101 bytes, 12 KiB, 50 MiB."""
    if n_bytes >= 1 << 20:
        return f"{n_bytes / (1 << 20):.0f} MiB"
    if n_bytes >= 1 << 10:
        return f"{n_bytes / (1 << 10):.0f} KiB"
    return f"{n_bytes} bytes"


def parse_json(text: bytes | str, name: str, error: type[CifarError] = CifarError,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with every parser failure and excessive nesting as `error`."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{name} is not valid JSON ({one_line(exc)})") from None
    except RecursionError:
        raise error(f"{name} nests deeper than {max_depth} levels") from None
    if nesting_depth(value, max_depth) > max_depth:
        raise error(f"{name} nests deeper than {max_depth} levels")
    return value


def read_json_file(path: Path | str, max_bytes: int, error: type[CifarError] = CifarError,
                   max_depth: int = MAX_JSON_DEPTH) -> Any:
    path = Path(path)
    data = read_regular_file(path, max_bytes, error, what="JSON file")
    return parse_json(data, file_where(path), error, max_depth)


def nesting_depth(value: Any, stop_after: int) -> int:
    """Depth of nested lists/dicts (a scalar is 0), counted without recursion;
    counting stops once it passes stop_after."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > stop_after:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_npz(path: Path | str, max_bytes: int, keys: tuple[str, ...], error: type[CifarError] = CifarError,
             where: str | None = None, optional: tuple[str, ...] = ()) -> dict:
    """The named arrays of a .npz (and those of `optional` it holds), bounded before numpy unpacks
    anything: the file's bytes, the members' declared sizes (a zip bomb is refused unread), no
    pickled objects. A missing array or a damaged file is `error`."""
    path = Path(path)
    where = where or file_where(path)
    with _capped_stream(path, max_bytes, error) as (stream, _):
        try:
            with zipfile.ZipFile(stream) as archive:
                return _arrays_in(archive, keys, optional, max_bytes)
        except ZIP_READ_ERRORS as exc:
            raise error(f"corrupt {where}: {one_line(exc)}") from None


def _arrays_in(archive: zipfile.ZipFile, keys: tuple[str, ...], optional: tuple[str, ...], max_bytes: int) -> dict:
    """read_npz's arrays from its open archive; ValueError for a missing array or more than max_bytes unpacked."""
    members = archive.infolist()
    if sum(info.file_size for info in members) > max_bytes:
        raise ValueError(f"more than {size_text(max_bytes)} once unpacked")
    stored = {info.filename.removesuffix(".npy"): info for info in members}
    wanted = (*keys, *(key for key in optional if key in stored))
    for key in wanted:
        if key not in stored:
            raise ValueError(f"no array {key!r} in it")
    # Each member unpacked once (bounded by the sum above) straight into its array, its header checked first.
    arrays = {}
    for key in wanted:
        with archive.open(stored[key]) as member:
            arrays[key] = _checked_npy(member, stored[key].file_size, max_bytes)
    return arrays


def read_cached_npz(path: Path | str, max_bytes: int, keys: tuple[str, ...]) -> dict | None:
    """A cache's arrays as read_npz reads them, or None (see _cached)."""
    return _cached(path, lambda: read_npz(path, max_bytes, keys))


def read_cached_npy(path: Path | str, max_array_bytes: int) -> np.ndarray | None:
    """A cache's one array as read_npy reads it, or None (see _cached)."""
    return _cached(path, lambda: read_npy(path, max_array_bytes))


def _cached(path: Path | str, read: Callable[[], Any]) -> Any:
    """What `read` reads from a cache file, or None where there is none, it is a link, or it is damaged:
    whatever a cache saves (a dataset's decoding, converted weights, a run's best epoch, frozen features,
    a teacher's labels) is computed again or started over, never trusted and never a crash."""
    if Path(path).is_symlink():  # caches are written by rename, never as links
        return None
    try:
        return read()
    except CifarError:
        return None


@contextlib.contextmanager
def private_path_beside(target: Path | str) -> Iterator[Path]:
    """A path named like `target` inside a fresh private folder beside it, for a writer that makes its
    file (or folder) there and renames it onto the target: no name anyone could have placed a link at
    beforehand is ever written, and whatever is left there goes with the folder."""
    import tempfile

    target = Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.stem}.writing-") as folder:
        yield Path(folder) / target.name


def write_cached_npz(path: Path | str, arrays: dict) -> None:
    """Arrays as an uncompressed .npz cache, whole or not at all (streamed to a fresh temporary file
    beside it, then renamed). A cache that cannot be written (a file where its folder belongs, a
    read-only or full disk) costs only the cache: the caller has its arrays either way."""
    import tempfile

    import numpy as np

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # uncompressed: reading raw arrays back is far faster than inflating
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, read a block at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


NPY_HEADER_BYTES = 4096  # numpy writes 128; a longer header is still within reason


def read_npy(path: Path | str, max_array_bytes: int, error: type[CifarError] = CifarError) -> np.ndarray:
    """One array of at most max_array_bytes from a regular .npy file whose header declares no more
    than the file holds."""
    path = Path(path)
    with _capped_stream(path, NPY_HEADER_BYTES + max_array_bytes, error) as (stream, size):
        try:
            return _checked_npy(stream, size, max_array_bytes)
        except (OSError, ValueError) as exc:
            raise error(f"corrupt {file_where(path)}: {one_line(exc)}") from None


def _checked_npy(stream, stored_bytes: int, max_array_bytes: int) -> np.ndarray:
    """The array of a whole .npy file (`stored_bytes` long, at the start of a seekable `stream`),
    once its header passed check_npy_header; numpy then reads the values into the array a block
    at a time, so a zip member is never held as bytes beside its array."""
    import numpy as np

    if check_npy_header(stream, stored_bytes) > max_array_bytes:
        raise ValueError(f"it holds more than {size_text(max_array_bytes)} of values")
    stream.seek(0)
    return np.load(stream, allow_pickle=False)


def check_npy_header(stream, stored_bytes: int) -> int:
    """The bytes of values the .npy at `stream` (`stored_bytes` long) declares, which must be plain
    values filling exactly the bytes after its header; ValueError otherwise. numpy allocates the
    declared shape before it reads, so a header claiming a terabyte in a small file would end in a
    MemoryError (or take the memory) instead."""
    import math

    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version} is not read here")
    shape, _, dtype = readers[version](stream)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects")
    declared, held = math.prod(shape) * dtype.itemsize, stored_bytes - stream.tell()
    if declared != held:
        raise ValueError(f"its header declares {shape} {dtype} values ({declared} bytes); it holds {held}")
    return declared
