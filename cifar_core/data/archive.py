"""Reading and extracting untrusted dataset archives (.zip, .tar, .tar.gz).

Every member is checked before a byte of it is used: no absolute paths or
`..`, no links or special files, no encryption, and caps on member count,
member size, total size, (zip) compression ratio and (tar) extended-header
size. Members stream past one at a time: a caller names the members it wants
and the rest are skipped unread, so memory holds one member, not the archive.
Extracting writes only inside the destination.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DataSourceError, UnsafeArchiveError, one_line
from ..safeio import ZIP_READ_ERRORS


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 250_000
    max_member_bytes: int = 256 * 1024 * 1024
    # Decompressing is the cost even of skipped members: 1 GiB of zeros is about a second.
    max_total_bytes: int = 1024 * 1024 * 1024
    max_compression_ratio: float = 200.0  # zip bombs compress far beyond this
    # A pax or GNU long-name header holds a few paths and numbers; tarfile reads
    # the whole declared size into memory before we ever see the member.
    max_header_bytes: int = 1024 * 1024


DEFAULT_LIMITS = ArchiveLimits()
# What reading a damaged tar or zip raises (a gzip stream's zlib.error and CRC included), turned
# into the one-line "corrupt or unreadable archive" by both readers.
ARCHIVE_READ_ERRORS = (*ZIP_READ_ERRORS, tarfile.TarError, RuntimeError, MemoryError)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def unreadable_archive(path: Path, exc: BaseException) -> DataSourceError:
    """The one line both readers give for a damaged archive, with what the reader found."""
    return DataSourceError(f"{path.name}: corrupt or unreadable archive ({one_line(exc)})")


def is_archive(path: Path | str) -> bool:
    name = str(path).lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def safe_member_name(name: str) -> str:
    """The member's relative POSIX path, or UnsafeArchiveError."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive member name contains a NUL byte: {name!r}")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArchiveError(f"archive member has an absolute path: {name!r}")
    parts = PurePosixPath(normalized).parts  # "a//b" and "./a" normalise away
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member escapes the destination: {name!r}")
    return "/".join(parts)


class _Budget:
    """Counts members and bytes against the limits as they stream past."""

    def __init__(self, limits: ArchiveLimits):
        self.limits = limits
        self.members = 0
        self.total = 0

    def charge(self, name: str, size: int) -> None:
        self.members += 1
        self.total += max(size, 0)
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(f"archive has more than {self.limits.max_members} members")
        if size > self.limits.max_member_bytes:
            raise UnsafeArchiveError(
                f"archive member {name!r} is {size} bytes; the limit is {self.limits.max_member_bytes}")
        if self.total > self.limits.max_total_bytes:
            raise UnsafeArchiveError(f"archive unpacks to more than {self.limits.max_total_bytes} bytes")


Wanted = Callable[[str], bool]


def _everything(name: str) -> bool:
    return True


def iter_archive_files(path: Path | str, limits: ArchiveLimits = DEFAULT_LIMITS,
                       wanted: Wanted = _everything) -> Iterator[tuple[str, bytes]]:
    """Yield (relative name, content) for each regular file in the archive that
    `wanted(name)` accepts; other members are checked but never read."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"archive not found: {path}")
    if path.name.lower().endswith(".zip"):
        yield from _iter_zip(path, limits, wanted)
    else:
        yield from _iter_tar(path, limits, wanted)


_TAR_HEADER_EXTENSIONS = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})


def _guarded_tarinfo(limits: ArchiveLimits) -> type[tarfile.TarInfo]:
    class GuardedTarInfo(tarfile.TarInfo):
        """Checks an extended header's declared size before tarfile reads it into memory."""

        def _proc_member(self, tarfile_):
            if self.type in _TAR_HEADER_EXTENSIONS and self.size > limits.max_header_bytes:
                raise UnsafeArchiveError(f"archive has a {self.size}-byte extended header; "
                                         f"the limit is {limits.max_header_bytes}")
            return super()._proc_member(tarfile_)

    return GuardedTarInfo


GZIP_MAGIC = b"\x1f\x8b"


def _iter_tar(path: Path, limits: ArchiveLimits, wanted: Wanted) -> Iterator[tuple[str, bytes]]:
    budget = _Budget(limits)
    try:
        with contextlib.ExitStack() as stack:
            # tarfile's own gzip reading never checks the gzip trailer's CRC-32, so a damaged
            # .tar.gz would unpack damaged images without a word; GzipFile checks it at the end.
            gzipped = _starts_with(path, GZIP_MAGIC)
            source = stack.enter_context(gzip.open(path, "rb")) if gzipped else None
            # Stream mode: one forward pass, no seeking in the compressed stream;
            # a member not read is skipped block by block, never held.
            tar = stack.enter_context(tarfile.open(None if gzipped else path, mode="r|" if gzipped else "r|*",
                                                   fileobj=source, tarinfo=_guarded_tarinfo(limits)))
            for member in tar:
                name = safe_member_name(member.name)
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(f"archive member {member.name!r} is a link; links are not allowed")
                if not member.isreg():
                    raise UnsafeArchiveError(f"archive member {member.name!r} is a device or special file")
                # Skipped members count too: the stream decompresses through them.
                budget.charge(name, member.size)
                if not wanted(name):
                    continue
                yield name, tar.extractfile(member).read()
            if source is not None:
                _read_to_the_end(source, limits.max_total_bytes - budget.total)
    except ARCHIVE_READ_ERRORS as exc:
        raise unreadable_archive(path, exc) from None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as file:
        return file.read(len(magic)) == magic


def _read_to_the_end(stream, budget: int) -> None:
    """Read what follows the tar's end (its padding) so that the gzip trailer is checked, within
    what is left of the unpacking budget."""
    while block := stream.read(1 << 20):
        budget -= len(block)
        if budget < 0:
            raise UnsafeArchiveError("archive unpacks to more than its limit after the tar's end")


def _check_zip_member(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    mode = (info.external_attr >> 16) & 0xFFFF
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive member {info.filename!r} is a link; links are not allowed")
    # Many zip writers leave the type bits empty: that means a regular file.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise UnsafeArchiveError(f"archive member {info.filename!r} is a device or special file")
    if info.flag_bits & 0x1:
        raise UnsafeArchiveError(f"archive member {info.filename!r} is encrypted; use an unencrypted archive")
    if info.compress_size and info.file_size / info.compress_size > limits.max_compression_ratio:
        raise UnsafeArchiveError(
            f"archive member {info.filename!r} compresses {info.file_size / info.compress_size:.0f}:1 "
            f"(limit {limits.max_compression_ratio:.0f}:1); refusing a possible zip bomb")


def _iter_zip(path: Path, limits: ArchiveLimits, wanted: Wanted) -> Iterator[tuple[str, bytes]]:
    budget = _Budget(limits)
    try:
        with zipfile.ZipFile(path) as archive:
            chosen = []
            for info in archive.infolist():  # check every member before reading any
                name = safe_member_name(info.filename)
                if info.is_dir():
                    continue
                _check_zip_member(info, limits)
                budget.charge(name, info.file_size)
                if wanted(name):
                    chosen.append((name, info))
            for name, info in chosen:
                # zipfile stops at the declared size (checked against the cap above) and
                # checks the CRC, so a header that lies cannot make this read more.
                with archive.open(info) as handle:
                    yield name, handle.read()
    except ARCHIVE_READ_ERRORS as exc:
        raise unreadable_archive(path, exc) from None



def safe_extract(path: Path | str, destination: Path | str, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[Path]:
    """Extract regular files under destination; nothing is written outside it."""
    destination = Path(destination).resolve()
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in iter_archive_files(path, limits):
        target = (destination / name).resolve()
        # Belt and braces: safe_member_name already refused escaping names, and
        # a pre-existing symlink inside destination must not redirect us either.
        if os.path.commonpath([destination, target]) != str(destination):
            raise UnsafeArchiveError(f"archive member {name!r} would be written outside {destination}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as handle:
            handle.write(content)
        written.append(target)
    return written
