"""Bounded reading: regular files only, at most the cap plus one byte, JSON depth capped."""
import os

import pytest

from cifar_core import safeio
from cifar_core.errors import CifarError, RunFolderError
from cifar_core.safeio import nesting_depth, parse_json, read_json_file, read_regular_file, size_text


def test_a_file_at_the_cap_is_read_and_one_byte_more_is_refused(tmp_path):
    (tmp_path / "at").write_bytes(b"x" * 10)
    (tmp_path / "over").write_bytes(b"x" * 11)
    assert read_regular_file(tmp_path / "at", 10) == b"x" * 10
    with pytest.raises(CifarError) as caught:
        read_regular_file(tmp_path / "over", 10)
    assert str(caught.value) == "over: file is 11 bytes; the limit is 10 bytes"
    with pytest.raises(RunFolderError, match="^over: history is 11 bytes"):
        read_regular_file(tmp_path / "over", 10, RunFolderError, "history")


def test_a_file_that_grows_after_stat_is_still_capped(tmp_path, monkeypatch):
    real_fstat = os.fstat

    def fstat_says_empty(fd):
        info = real_fstat(fd)
        return os.stat_result((info.st_mode,) + (0,) * 5 + (0,) + tuple(info)[7:])  # st_size 0

    monkeypatch.setattr(safeio.os, "fstat", fstat_says_empty)
    (tmp_path / "at").write_bytes(b"y" * 10)
    (tmp_path / "over").write_bytes(b"y" * 11)
    assert read_regular_file(tmp_path / "at", 10) == b"y" * 10
    with pytest.raises(CifarError, match="^over: file is larger than the limit of 10 bytes$"):
        read_regular_file(tmp_path / "over", 10)


def test_large_files_are_read_whole_in_chunks(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "big").write_bytes(data)
    assert read_regular_file(tmp_path / "big", len(data)) == data
    fd = os.open(tmp_path / "big", os.O_RDONLY)
    try:
        assert safeio._read_at_most(fd, (1 << 20) + 5) == data[: (1 << 20) + 5]
    finally:
        os.close(fd)


def test_everything_but_a_regular_file_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    locked = tmp_path / "locked"
    locked.write_bytes(b"x")
    cases = [(fifo, f"{fifo}: is a device, pipe or socket; only regular files are read"),
             ("/dev/zero", "/dev/zero: is a device, pipe or socket; only regular files are read"),
             (tmp_path, f"{tmp_path}: is a folder; a photo was expected"),
             (tmp_path / "missing", f"{tmp_path / 'missing'}: no such file"),
             (loop, f"{loop}: cannot open (Too many levels of symbolic links)")]
    if os.geteuid() != 0:  # root reads anything
        locked.chmod(0)
        cases.append((locked, f"{locked}: permission denied"))
    for path, message in cases:
        with pytest.raises(CifarError) as caught:
            read_regular_file(path, 100, what="photo")
        assert str(caught.value) == message


@pytest.mark.parametrize("n_bytes,text", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1 KiB"), (5000, "5 KiB"),
                                          ((1 << 20) - 1, "1024 KiB"), (1 << 20, "1 MiB"),
                                          (50 * (1 << 20) + 1, "50 MiB")])
def test_sizes_read_as_people_read_them(n_bytes, text):
    assert size_text(n_bytes) == text


@pytest.mark.parametrize("value,depth", [(3, 0), ("x", 0), ({}, 1), ([], 1), ([[]], 2), ({"a": [1, {"b": []}]}, 4),
                                         ([[1], [[2]]], 3)])
def test_nesting_depth(value, depth):
    assert nesting_depth(value, 10) == depth


def test_nesting_depth_stops_counting_once_past_the_limit():
    deep = []
    for _ in range(50):
        deep = [deep]
    assert nesting_depth(deep, 3) == 4


def test_json_depth_is_capped_exactly():
    assert parse_json("[" * 32 + "]" * 32, "ok.json") is not None
    with pytest.raises(CifarError, match="^deep.json nests deeper than 32 levels$"):
        parse_json("[" * 33 + "]" * 33, "deep.json")
    with pytest.raises(CifarError, match="^deeper.json nests deeper than 5 levels$"):
        parse_json("[" * 6 + "]" * 6, "deeper.json", max_depth=5)
    with pytest.raises(RunFolderError, match="^huge.json nests deeper than 32 levels$"):
        parse_json("[" * 200_000 + "]" * 200_000, "huge.json", RunFolderError)  # the parser's own recursion


def test_json_errors_are_one_line_with_the_name():
    with pytest.raises(CifarError) as caught:
        parse_json("{half", "cfg.json")
    assert str(caught.value).startswith("cfg.json is not valid JSON (Expecting property name")
    with pytest.raises(CifarError, match="is not valid JSON"):
        parse_json(b"\xff\xfe", "bytes.json")


def test_json_files_are_bounded_and_named_by_their_folder(tmp_path):
    (tmp_path / "m.json").write_text('{"a": 1}')
    assert read_json_file(tmp_path / "m.json", 100) == {"a": 1}
    with pytest.raises(CifarError, match=f"^m.json in {tmp_path.name} is not valid JSON"):
        (tmp_path / "m.json").write_text("[")
        read_json_file(tmp_path / "m.json", 100)
    with pytest.raises(CifarError, match="^m.json: JSON file is 1 bytes; the limit is 0 bytes$"):
        read_json_file(tmp_path / "m.json", 0)


def test_open_and_read_failures_are_named(tmp_path, monkeypatch):
    import errno

    (tmp_path / "f").write_bytes(b"data")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safeio.os, "open", denied)
    with pytest.raises(CifarError, match=f"^{tmp_path / 'f'}: permission denied$"):
        read_regular_file(tmp_path / "f", 10)
    monkeypatch.undo()

    def broken_disk(fd, n):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safeio.os, "read", broken_disk)
    with pytest.raises(CifarError, match=f"^{tmp_path / 'f'}: cannot read \\(Input/output error\\)$"):
        read_regular_file(tmp_path / "f", 10)


def test_json_files_keep_the_callers_error_and_depth(tmp_path):
    (tmp_path / "d.json").write_text("[[[]]]")
    with pytest.raises(RunFolderError, match="nests deeper than 2 levels"):
        read_json_file(tmp_path / "d.json", 100, RunFolderError, max_depth=2)
    with pytest.raises(RunFolderError, match="JSON file is 6 bytes"):
        read_json_file(tmp_path / "d.json", 5, RunFolderError)


def _npy(shape, dtype="<f4", data=b"", version=(1, 0)) -> bytes:
    """An .npy file whose header says `shape` and `dtype`, followed by `data` as it is."""
    import io

    from numpy.lib import format as npy

    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    (npy.write_array_header_1_0 if version == (1, 0) else npy.write_array_header_2_0)(buffer, header)
    return buffer.getvalue() + data


def _npz(tmp_path, member: bytes):
    import zipfile

    path = tmp_path / "arrays.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member)
    return path


# Declared sizes numpy would allocate before reading: each must be refused with a reason, never
# a MemoryError (nor, for a lie that fits in memory, the memory taken).
LYING_HEADERS = {
    "a terabyte in 16 bytes": (_npy((250_000_000_000,), data=bytes(16)), "declares"),
    "one value too many": (_npy((5,), data=bytes(16)), "declares"),
    "wide dtype": (_npy((4,), dtype="<f8", data=bytes(16)), "declares"),
    "python objects": (_npy((2,), dtype="|O", data=bytes(16)), "objects"),
    "an unknown format version": (b"\x93NUMPY\x09\x00" + bytes(64), "version"),
    "no header": (b"PK not numpy", "corrupt"),
}


@pytest.mark.parametrize("content,message", LYING_HEADERS.values(), ids=LYING_HEADERS.keys())
def test_an_array_file_declaring_more_than_it_holds_is_refused_before_numpy_allocates(tmp_path, content, message):
    path = tmp_path / "array.npy"
    path.write_bytes(content)
    with pytest.raises(RunFolderError, match=message):
        safeio.read_npy(path, 1 << 20, RunFolderError)
    with pytest.raises(RunFolderError, match=message):
        safeio.read_npz(_npz(tmp_path, content), 1 << 20, ("x",), RunFolderError)


def test_an_array_file_that_holds_what_it_declares_is_read_in_either_version(tmp_path):
    import numpy as np

    values = np.arange(4, dtype="<f4")
    for version in ((1, 0), (2, 0)):
        path = tmp_path / "array.npy"
        path.write_bytes(_npy((4,), data=values.tobytes(), version=version))
        assert np.array_equal(safeio.read_npy(path, 16), values)
        assert np.array_equal(safeio.read_npz(_npz(tmp_path, path.read_bytes()), 1 << 20, ("x",))["x"], values)
    with pytest.raises(CifarError, match="more than 15 bytes"):  # the bound is on the values, header aside
        safeio.read_npy(path, 15)
    path.write_bytes(_npy((4,), data=values.tobytes() + b"x"))
    with pytest.raises(CifarError, match="declares"):  # bytes nobody declared are refused too
        safeio.read_npy(path, 1 << 20)


@pytest.mark.parametrize("where", ["start", "middle"])
def test_a_damaged_npz_member_or_a_missing_array_is_one_clear_error(tmp_path, where):
    import numpy as np
    from helpers import damage_deflate

    damaged = tmp_path / "damaged.npz"
    np.savez_compressed(damaged, x=np.random.default_rng(0).integers(0, 9, 50_000))
    with pytest.raises(RunFolderError, match="corrupt damaged.npz"):
        safeio.read_npz(damage_deflate(damaged, where), 1 << 20, ("x",), RunFolderError)
    path = tmp_path / "sound.npz"
    np.savez_compressed(path, x=np.arange(3), y=np.arange(2))
    with pytest.raises(RunFolderError, match="no array 'z'"):
        safeio.read_npz(path, 1 << 20, ("x", "z"), RunFolderError)
    read = safeio.read_npz(path, 1 << 20, ("y",), RunFolderError, optional=("x", "z"))
    assert sorted(read) == ["x", "y"] and read["x"].tolist() == [0, 1, 2]


def test_array_files_over_their_cap_are_the_callers_error_naming_an_array_file(tmp_path):
    import numpy as np

    npy = tmp_path / "big.npy"
    np.save(npy, np.zeros(8192, np.uint8))  # past the header allowance too
    with pytest.raises(RunFolderError, match=r"^big.npy: array file is [^;]+; the limit is"):
        safeio.read_npy(npy, 8, RunFolderError)
    npz = tmp_path / "big.npz"
    np.savez(npz, x=np.zeros(64, np.uint8))
    with pytest.raises(RunFolderError, match=r"^big.npz: array file is [^;]+; the limit is"):
        safeio.read_npz(npz, 64, ("x",), RunFolderError)


def test_a_npz_unpacking_to_exactly_its_cap_is_read(tmp_path):
    import zipfile

    import numpy as np

    path = tmp_path / "exact.npz"
    np.savez_compressed(path, x=np.zeros(4096, np.uint8))
    unpacked = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    assert safeio.read_npz(path, unpacked, ("x",))["x"].shape == (4096,)
    with pytest.raises(CifarError, match="once unpacked"):
        safeio.read_npz(path, unpacked - 1, ("x",))


def test_a_file_written_in_place_is_opened_only_as_itself(tmp_path):
    """open_for_writing: a regular file is opened (made if missing, with the umask's mode); a link is
    refused by name before any open, a FIFO or device refused without blocking, a path it cannot
    look at is one line."""
    import stat as stat_module

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    fd = safeio.open_for_writing(tmp_path / "log", flags, RunFolderError, "job log")
    os.write(fd, b"one\n")
    os.close(fd)
    assert (tmp_path / "log").read_bytes() == b"one\n"
    assert stat_module.S_IMODE((tmp_path / "log").stat().st_mode) == 0o666 & ~_umask()
    (tmp_path / "elsewhere").write_text("theirs")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match=r"^link in .* is a link; the job log is written only as a real file"):
        safeio.open_for_writing(tmp_path / "link", flags, RunFolderError, "job log")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(RunFolderError, match=r"^fifo in .*: cannot open the job log for writing"):
        safeio.open_for_writing(tmp_path / "fifo", flags, RunFolderError, "job log")  # no reader: ENXIO
    with pytest.raises(RunFolderError, match=r"^fifo in .* is a device, pipe or socket; the lock is written"):
        safeio.open_for_writing(tmp_path / "fifo", os.O_RDWR, RunFolderError, "lock")  # opens; then refused
    with pytest.raises(RunFolderError, match=r"^null in /dev is a device, pipe or socket"):
        safeio.open_for_writing("/dev/null", os.O_WRONLY, RunFolderError, "log")
    with pytest.raises(RunFolderError, match=r"^x in .*/elsewhere: cannot look at it \(Not a directory\)$"):
        safeio.open_for_writing(tmp_path / "elsewhere" / "x", flags, RunFolderError, "log")
    assert (tmp_path / "elsewhere").read_text() == "theirs"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_regular_file_is_opened_for_reading_and_anything_else_is_none(tmp_path):
    (tmp_path / "file").write_text("x")
    fd = safeio.regular_file_fd(tmp_path / "file")
    assert os.read(fd, 5) == b"x"
    os.close(fd)
    (tmp_path / "link").symlink_to(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")
    assert safeio.regular_file_fd(tmp_path / "link") is None  # not followed, though its target is sound
    assert safeio.regular_file_fd(tmp_path / "fifo") is None  # and no wait for a writer
    assert safeio.regular_file_fd(tmp_path / "missing") is None
    assert safeio.regular_file_fd(tmp_path) is None


def test_an_array_of_python_objects_is_refused_by_name(tmp_path):
    import numpy as np

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(RunFolderError, match=r"^corrupt objects.npy in .*: the array holds Python objects$"):
        safeio.read_npy(tmp_path / "objects.npy", 1 << 20, RunFolderError)


def test_a_private_path_beside_is_fresh_named_like_its_target_and_goes_with_its_folder(tmp_path):
    target = tmp_path / "model.keras"
    planted = tmp_path / f".model.{os.getpid()}.tmp.keras"
    planted.symlink_to(tmp_path / "victim")
    with safeio.private_path_beside(target) as first, safeio.private_path_beside(target) as second:
        assert first.name == second.name == "model.keras" and first.parent != second.parent
        assert first.parent.parent == tmp_path and first.parent.name.startswith(".model.writing-")
        assert not first.exists() and (first.parent.stat().st_mode & 0o777) == 0o700
        first.write_text("made here")
        second.mkdir()  # a writer may make a folder (a SavedModel) as well as a file
        (second / "inside").write_text("x")
    with pytest.raises(KeyError), safeio.private_path_beside(target) as third:
        third.write_text("left behind by a failed writer")
        raise KeyError("the writer failed")
    # Nothing is left beside the target, and what was planted there is neither followed nor removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name]
    assert not (tmp_path / "victim").exists()


def test_array_files_are_read_from_the_file_with_no_copy_of_it_in_memory(tmp_path):
    import numpy as np
    from helpers import traced_peak

    values = np.random.default_rng(0).integers(0, 255, (4 << 20,), dtype=np.uint8)  # 4 MiB
    np.save(tmp_path / "big.npy", values)
    np.savez(tmp_path / "big.npz", x=values, y=values[:1000])
    reads = {"npy": lambda: {"x": safeio.read_npy(tmp_path / "big.npy", 8 << 20)},
             "npz": lambda: safeio.read_npz(tmp_path / "big.npz", 8 << 20, ("x", "y"))}
    for name, read in reads.items():
        arrays, peak = traced_peak(read)
        assert np.array_equal(arrays["x"], values)
        # The arrays plus reading buffers; the whole file's bytes beside them would double it.
        assert peak < 1.25 * values.nbytes, (name, peak)


def test_an_array_file_is_read_only_up_to_the_size_checked_when_it_was_opened(tmp_path, monkeypatch):
    import numpy as np

    np.save(tmp_path / "a.npy", np.arange(64, dtype=np.int64))
    np.savez(tmp_path / "a.npz", x=np.arange(64, dtype=np.int64))
    assert safeio.read_npy(tmp_path / "a.npy", 1 << 20).sum() == 2016
    real_fstat = os.fstat

    def fstat_one_byte_short(fd):  # the file grew by a byte after it was checked
        info = real_fstat(fd)
        return os.stat_result(tuple(info)[:6] + (info.st_size - 1,) + tuple(info)[7:])

    monkeypatch.setattr(safeio.os, "fstat", fstat_one_byte_short)
    with pytest.raises(CifarError, match="declares .* it holds 511$"):
        safeio.read_npy(tmp_path / "a.npy", 1 << 20)
    with pytest.raises(CifarError, match="^corrupt a.npz"):
        safeio.read_npz(tmp_path / "a.npz", 1 << 20, ("x",))


def test_the_first_bytes_of_a_file_are_all_a_reader_can_reach(tmp_path):
    import io

    (tmp_path / "f").write_bytes(b"0123456789")
    with open(tmp_path / "f", "rb") as handle:
        view = safeio._FirstBytes(handle, 6)
        assert view.seek(0, io.SEEK_END) == 6 and view.read() == b""
        assert view.seek(-4, io.SEEK_END) == 2 and view.read(100) == b"2345"
        assert view.seek(1) == 1 and view.read(2) == b"12" and view.tell() == 3
        assert view.seek(2, io.SEEK_CUR) == 5 and view.read() == b"5"
        assert view.seek(20) == 20 and view.read(3) == b""
        with pytest.raises(ValueError, match="^negative seek position$"):
            view.seek(-7, io.SEEK_END)
        view.seek(0)
        assert io.BufferedReader(view).read() == b"012345"  # a readable raw stream, as io's buffers need
