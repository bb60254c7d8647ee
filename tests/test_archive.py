"""Hostile archives are refused before anything escapes the destination."""
import io
import stat
import tarfile
import zipfile

import numpy as np
import pytest
from helpers import png_bytes

from cifar_core.data import load_dataset
from cifar_core.data.archive import ArchiveLimits, iter_archive_files, safe_extract, safe_member_name
from cifar_core.errors import UnsafeArchiveError

PIXEL = png_bytes(np.zeros((4, 4, 3), np.uint8))


def _tar(path, members):
    """members: list of (TarInfo-configuring callable, bytes or None)."""
    with tarfile.open(path, "w:gz") as archive:
        for configure, data in members:
            info = tarfile.TarInfo()
            configure(info)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _regular(name):
    def configure(info):
        info.name = name
    return configure


def _special(name, kind, linkname=""):
    def configure(info):
        info.name, info.type, info.linkname = name, kind, linkname
    return configure


@pytest.mark.parametrize("name", ["../evil.png", "data/../../evil.png", "/etc/evil.png", "C:\\evil.png",
                                  "a\x00b.png"])
def test_escaping_names_are_refused(name):
    with pytest.raises(UnsafeArchiveError):
        safe_member_name(name)


@pytest.mark.parametrize("member", [
    (_special("d/train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), None),
    (_special("d/train/cat/hard.png", tarfile.LNKTYPE, "d/train/cat/0.png"), None),
    (_special("d/train/cat/dev", tarfile.CHRTYPE), None),
    (_special("d/train/cat/fifo", tarfile.FIFOTYPE), None),
    (_regular("../outside.png"), PIXEL),
    (_regular("/tmp/absolute.png"), PIXEL),
], ids=["symlink", "hardlink", "device", "fifo", "dotdot", "absolute"])
def test_hostile_tar_members_are_refused_and_nothing_escapes(tmp_path, member):
    archive = _tar(tmp_path / "evil.tar.gz", [(_regular("d/train/cat/0.png"), PIXEL), member])
    destination = tmp_path / "out" / "inside"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, destination)
    with pytest.raises(UnsafeArchiveError):
        load_dataset(archive)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"evil.tar.gz", "out/inside/d/train/cat/0.png"}


def test_zip_traversal_symlink_and_bomb_are_refused(tmp_path):
    traversal = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("../../evil.png", PIXEL)
    with pytest.raises(UnsafeArchiveError, match="escapes"):
        safe_extract(traversal, tmp_path / "out")

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link"):
        list(iter_archive_files(link))

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/cat/zeros.png", b"\0" * 5_000_000)
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        list(iter_archive_files(bomb))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
    assert not (tmp_path.parent / "evil.png").exists()


def test_member_count_and_size_caps(tmp_path):
    many = _tar(tmp_path / "many.tar.gz", [(_regular(f"d/train/cat/{i}.png"), PIXEL) for i in range(6)])
    with pytest.raises(UnsafeArchiveError, match="more than 5 members"):
        list(iter_archive_files(many, ArchiveLimits(max_members=5)))
    with pytest.raises(UnsafeArchiveError, match="unpacks to more than"):
        list(iter_archive_files(many, ArchiveLimits(max_total_bytes=len(PIXEL) * 3)))
    with pytest.raises(UnsafeArchiveError, match="limit is 10"):
        list(iter_archive_files(many, ArchiveLimits(max_member_bytes=10)))


def test_safe_extract_writes_regular_files_inside(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [(_regular("d/train/cat/0.png"), PIXEL)])
    written = safe_extract(archive, tmp_path / "out")
    assert [p.read_bytes() for p in written] == [PIXEL]
    assert written[0].is_relative_to((tmp_path / "out").resolve())
