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


def _tar(path, members, mode="w:gz"):
    """members: list of (TarInfo-configuring callable, bytes or None)."""
    with tarfile.open(path, mode) as archive:
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


# --- every boundary and message ---------------------------------------------------------------

@pytest.mark.parametrize("name,message", [
    ("../evil.png", "archive member escapes the destination: '../evil.png'"),
    ("a\\..\\b.png", "archive member escapes the destination"),  # Windows separators count
    ("/etc/evil.png", "archive member has an absolute path: '/etc/evil.png'"),
    ("C:evil.png", "archive member has an absolute path"),
    ("C:", "archive member has an absolute path: 'C:'"),
    ("a\x00b.png", "archive member name contains a NUL byte: 'a\\x00b.png'"),
])
def test_unsafe_names_are_refused_with_the_reason(name, message):
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_member_name(name)
    assert str(caught.value) == message or str(caught.value).startswith(message)


@pytest.mark.parametrize("name,clean", [("a", "a"), ("./train/cat/x.png", "train/cat/x.png"),
                                        ("train//cat/./x.png", "train/cat/x.png"), ("dir\\x.png", "dir/x.png"),
                                        ("a.b/c", "a.b/c")])
def test_safe_names_are_normalised(name, clean):
    assert safe_member_name(name) == clean


def test_every_cap_is_exact():
    from cifar_core.data.archive import _Budget

    budget = _Budget(ArchiveLimits(max_members=2, max_member_bytes=10, max_total_bytes=15))
    budget.charge("a", 10)  # at the member cap
    budget.charge("b", 5)  # at the total cap, at the member count
    assert (budget.members, budget.total) == (2, 15)
    with pytest.raises(UnsafeArchiveError, match="^archive has more than 2 members$"):
        budget.charge("c", 0)
    budget = _Budget(ArchiveLimits(max_members=10, max_member_bytes=10, max_total_bytes=15))
    with pytest.raises(UnsafeArchiveError, match="^archive member 'big' is 11 bytes; the limit is 10$"):
        budget.charge("big", 11)
    budget = _Budget(ArchiveLimits(max_members=10, max_member_bytes=10, max_total_bytes=15))
    budget.charge("a", 10)
    budget.charge("negative", -5)  # a negative size never buys room
    budget.charge("empty", 0)
    assert budget.total == 10
    with pytest.raises(UnsafeArchiveError, match="^archive unpacks to more than 15 bytes$"):
        budget.charge("b", 6)


def _pax_tar(path, name_length=300):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("d/" + "x" * name_length + ".png")
        info.size = len(PIXEL)
        archive.addfile(info, io.BytesIO(PIXEL))
    header_size = int(path.read_bytes()[124:136].rstrip(b"\0 ").decode(), 8)  # the pax header's own size
    return path, header_size


def test_extended_headers_are_capped_exactly(tmp_path):
    path, header_size = _pax_tar(tmp_path / "pax.tar")
    assert [len(c) for _, c in iter_archive_files(path, ArchiveLimits(max_header_bytes=header_size))] == [len(PIXEL)]
    with pytest.raises(UnsafeArchiveError, match=f"archive has a {header_size}-byte extended header; "
                                                 f"the limit is {header_size - 1}"):
        list(iter_archive_files(path, ArchiveLimits(max_header_bytes=header_size - 1)))
    # The cap is for headers only: a regular member far larger than it is read.
    plain = _tar(tmp_path / "plain.tar.gz", [(_regular("d/train/cat/0.png"), PIXEL)])
    assert len(list(iter_archive_files(plain, ArchiveLimits(max_header_bytes=1)))) == 1


def test_folders_and_skipped_members_do_not_end_the_walk(tmp_path):
    members = [(_special("d", tarfile.DIRTYPE), None), (_regular("d/notes.txt"), b"skip me"),
               (_special("d/train", tarfile.DIRTYPE), None), (_regular("d/train/cat/0.png"), PIXEL),
               (_regular("d/train/cat/1.png"), PIXEL)]
    archive = _tar(tmp_path / "mixed.tar.gz", members)
    found = list(iter_archive_files(archive, wanted=lambda name: name.endswith(".png")))
    assert found == [("d/train/cat/0.png", PIXEL), ("d/train/cat/1.png", PIXEL)]
    assert [name for name, _ in iter_archive_files(archive)] == ["d/notes.txt", "d/train/cat/0.png",
                                                                   "d/train/cat/1.png"]
    zipped = tmp_path / "mixed.zip"
    with zipfile.ZipFile(zipped, "w") as handle:
        handle.writestr("d/", b"")
        handle.writestr("d/notes.txt", b"skip me")
        handle.writestr("d/train/cat/0.png", PIXEL)
    assert list(iter_archive_files(zipped, wanted=lambda name: name.endswith(".png"))) == [
        ("d/train/cat/0.png", PIXEL)]


@pytest.mark.parametrize("kind,message", [(tarfile.SYMTYPE, "is a link; links are not allowed"),
                                          (tarfile.LNKTYPE, "is a link; links are not allowed"),
                                          (tarfile.CHRTYPE, "is a device or special file"),
                                          (tarfile.FIFOTYPE, "is a device or special file")])
def test_each_special_tar_member_is_named(tmp_path, kind, message):
    archive = _tar(tmp_path / "special.tar.gz", [(_special("d/x.png", kind, "target"), None)])
    with pytest.raises(UnsafeArchiveError, match=f"^archive member 'd/x.png' {message}$"):
        list(iter_archive_files(archive))


def test_zip_flags_ratio_and_messages(tmp_path):
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("train/cat/zeros.png", b"\0" * 100_000)
    [info] = zipfile.ZipFile(path).infolist()
    ratio = info.file_size / info.compress_size
    assert len(list(iter_archive_files(path, ArchiveLimits(max_compression_ratio=ratio)))) == 1  # at the limit
    with pytest.raises(UnsafeArchiveError, match=f"^archive member 'train/cat/zeros.png' compresses {ratio:.0f}:1 "
                                                 r"\(limit \d+:1\); refusing a possible zip bomb$"):
        list(iter_archive_files(path, ArchiveLimits(max_compression_ratio=ratio - 0.5)))
    from helpers import set_zip_flag

    described = tmp_path / "descriptor.zip"  # bit 3: sizes in a data descriptor, an ordinary zip
    described.write_bytes(set_zip_flag(path.read_bytes(), 0x8))
    assert len(list(iter_archive_files(described, ArchiveLimits(max_compression_ratio=ratio)))) == 1
    locked = tmp_path / "locked.zip"
    locked.write_bytes(set_zip_flag(path.read_bytes(), 0x1))
    with pytest.raises(UnsafeArchiveError, match="^archive member 'train/cat/zeros.png' is encrypted; use an "
                                                 "unencrypted archive$"):
        list(iter_archive_files(locked))


def test_unreadable_archives_name_the_file(tmp_path):
    from cifar_core.errors import DataSourceError

    for name in ("broken.tar.gz", "broken.zip"):
        (tmp_path / name).write_bytes(b"\x1f\x8b\x08\x00 not really an archive")
        with pytest.raises(DataSourceError, match=f"^{name}: corrupt or unreadable archive \\(.+\\)$"):
            list(iter_archive_files(tmp_path / name))
    with pytest.raises(DataSourceError, match="^archive not found: "):
        list(iter_archive_files(tmp_path / "missing.zip"))


@pytest.mark.parametrize("where", ["start", "middle"])
def test_a_damaged_member_of_a_dataset_zip_is_the_archive_s_one_line_error(tmp_path, where):
    from helpers import damage_deflate

    from cifar_core.errors import DataSourceError

    path = tmp_path / "data.zip"
    noise = np.random.default_rng(0).integers(0, 9, 50_000, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/cat/0.png", noise)
    damage_deflate(path, where)
    with pytest.raises(DataSourceError, match=r"^data.zip: corrupt or unreadable archive \(.+\)$"):
        list(iter_archive_files(path))


def _noise_tar_gz(path, trailing: bytes = b""):
    import gzip

    noise = np.random.default_rng(0).integers(0, 9, 50_000, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = len(noise)
        tar.addfile(info, io.BytesIO(noise))
    path.write_bytes(gzip.compress(buffer.getvalue() + trailing))
    return path, noise


@pytest.mark.parametrize("where", ["the deflate stream's start", "its middle", "the CRC-32 in the trailer"])
def test_a_damaged_tar_gz_is_refused_not_unpacked_into_damaged_images(tmp_path, where):
    from cifar_core.errors import DataSourceError

    path, noise = _noise_tar_gz(tmp_path / "data.tar.gz")
    assert list(iter_archive_files(path)) == [("train/cat/0.png", noise)]
    data = bytearray(path.read_bytes())
    start = {"the deflate stream's start": 10, "its middle": len(data) // 2, "the CRC-32 in the trailer": -8}[where]
    data[start:start + 4 or None] = bytes(b ^ 0xFF for b in data[start:start + 4 or None])
    path.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match=r"^data.tar.gz: corrupt or unreadable archive \((?!None\)).+\)$"):
        list(iter_archive_files(path))


def test_what_follows_a_tar_gz_s_end_is_read_within_the_unpacking_budget(tmp_path):
    from cifar_core.data.archive import _read_to_the_end

    path, noise = _noise_tar_gz(tmp_path / "data.tar.gz", trailing=bytes(120_000))
    assert list(iter_archive_files(path)) == [("train/cat/0.png", noise)]  # read to the end, trailer checked
    # 50,000 bytes of member leave 100,000 of a 150,000 budget for the 120,000 after the tar's end.
    with pytest.raises(UnsafeArchiveError, match="^archive unpacks to more than its limit after the tar's end$"):
        list(iter_archive_files(path, ArchiveLimits(max_total_bytes=150_000)))
    _read_to_the_end(io.BytesIO(bytes(3 << 20)), 3 << 20)  # exactly the budget: read

    class Endless:
        """Zeros without end: every read must ask for a bounded block, never 'all of it'."""

        def read(self, size):
            assert isinstance(size, int) and 0 < size <= 4 << 20, size
            return bytes(size)

    with pytest.raises(UnsafeArchiveError):
        _read_to_the_end(Endless(), 4 << 20)
    with pytest.raises(UnsafeArchiveError):
        _read_to_the_end(io.BytesIO(bytes((3 << 20) + 1)), 3 << 20)


@pytest.mark.parametrize("compression", ["", "bz2", "xz"])
def test_tars_compressed_otherwise_or_not_at_all_read_too(tmp_path, compression):
    path = _tar(tmp_path / f"data.tar.{compression or 'plain'}", [(_regular("train/cat/0.png"), PIXEL)],
                mode=f"w:{compression}" if compression else "w")
    assert list(iter_archive_files(path)) == [("train/cat/0.png", PIXEL)]


def test_safe_extract_into_an_existing_folder_and_never_through_a_symlink(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [(_regular("d/train/cat/0.png"), PIXEL), (_regular("top.png"), PIXEL)])
    destination = tmp_path / "out"
    (destination / "d").mkdir(parents=True)  # already there: fine
    written = safe_extract(archive, destination, ArchiveLimits(max_members=2))
    assert sorted(p.relative_to(destination.resolve()).as_posix() for p in written) == ["d/train/cat/0.png",
                                                                                        "top.png"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "d").symlink_to(outside)  # a link planted inside the destination
    with pytest.raises(UnsafeArchiveError, match="^archive member 'd/train/cat/0.png' would be written outside "):
        safe_extract(archive, trap)
    assert not any(outside.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match="more than 1 members"):
        safe_extract(archive, tmp_path / "capped", ArchiveLimits(max_members=1))


def test_size_refusals_name_the_member_and_zip_devices_are_refused(tmp_path):
    archive = _tar(tmp_path / "big.tar.gz", [(_regular("d/train/cat/big.png"), b"x" * 20)])
    with pytest.raises(UnsafeArchiveError, match="^archive member 'd/train/cat/big.png' is 20 bytes; the limit is 10$"):
        list(iter_archive_files(archive, ArchiveLimits(max_member_bytes=10)))
    zipped = tmp_path / "big.zip"
    with zipfile.ZipFile(zipped, "w") as handle:
        handle.writestr("d/train/cat/big.png", b"x" * 20)
    with pytest.raises(UnsafeArchiveError, match="^archive member 'd/train/cat/big.png' is 20 bytes"):
        list(iter_archive_files(zipped, ArchiveLimits(max_member_bytes=10)))
    device = tmp_path / "device.zip"
    with zipfile.ZipFile(device, "w") as handle:
        info = zipfile.ZipInfo("d/train/cat/dev")
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        handle.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match="^archive member 'd/train/cat/dev' is a device or special file$"):
        list(iter_archive_files(device))
    (tmp_path / "not.zip").write_bytes(b"plain text")
    from cifar_core.errors import DataSourceError

    with pytest.raises(DataSourceError, match=r"^not.zip: corrupt or unreadable archive \(File is not a zip file\)$"):
        list(iter_archive_files(tmp_path / "not.zip"))
