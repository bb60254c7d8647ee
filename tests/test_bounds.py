"""Bounded work for every hostile input: refused in one line, under 2 s and 500 MB.

Each class of input (images, archives, pickles, model files and run metadata)
is measured in a fresh process with its peak memory and time, so a fix that
still reads the whole file, allocates the declared size or decodes every scan
fails here."""
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from helpers import (
    assert_refused_within_bounds,
    functional,
    jpeg_with_scans,
    keras_file,
    layer,
    measure,
    png_header_only,
    set_zip_flag,
    tar_with_declared_member,
)

from cifar_core import imaging, runs
from cifar_core.data import load_dataset
from cifar_core.data.pickles import parse_batch
from cifar_core.errors import DataSourceError, ImageDecodeError, ModelFileError, RunFolderError, UnsafePickleError
from cifar_core.models.loading import check_model_file

IMAGE_SETUP = """
from PIL import Image
Image.init()
from cifar_core.imaging import decode_image, decode_image_file
"""


# --- images ----------------------------------------------------------------------------

def _hostile_images(tmp_path):
    many_scans = tmp_path / "scans.jpg"
    many_scans.write_bytes(jpeg_with_scans(2000))
    deep_png = tmp_path / "deep.png"
    deep_png.write_bytes(png_header_only(6300, 6300))  # 39.7 MP, just under the pixel cap, 16-bit
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(8 * 1024**3)  # 8 GB that stat reports and no disk holds
    return [(many_scans, "scans; the limit is"), (deep_png, "decodes to"), (fifo, "device, pipe or socket"),
            (sparse, "the limit is"), ("/dev/zero", "device, pipe or socket")]


@pytest.mark.measured
def test_hostile_image_files_are_refused_within_bounds(tmp_path):
    for path, message in _hostile_images(tmp_path):
        outcome = measure(IMAGE_SETUP, f"decode_image_file({str(path)!r})")
        assert_refused_within_bounds(outcome, "ImageDecodeError", message)


def test_hostile_image_files_are_refused_in_process(tmp_path):
    for path, message in _hostile_images(tmp_path):
        with pytest.raises(ImageDecodeError) as caught:
            imaging.decode_image_file(path)
        assert message in str(caught.value) and str(caught.value).startswith((str(path), path.name if
                                                                               hasattr(path, "name") else path))


def test_the_byte_cap_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(imaging, "MAX_BYTES", 100)
    (tmp_path / "at.png").write_bytes(b"x" * 100)
    (tmp_path / "over.png").write_bytes(b"x" * 101)
    with pytest.raises(ImageDecodeError, match="not an image"):  # read, then judged by content
        imaging.decode_image_file(tmp_path / "at.png")
    with pytest.raises(ImageDecodeError, match="^over.png: image is 101 bytes; the limit is 100 bytes"):
        imaging.decode_image_file(tmp_path / "over.png")
    with pytest.raises(ImageDecodeError, match="^upload: file is 101 bytes; the limit is 100 bytes$"):
        imaging.decode_image(b"x" * 101, "upload")
    with pytest.raises(ImageDecodeError, match="not an image"):
        imaging.decode_image(b"x" * 100, "upload")


def test_progressive_scans_are_counted_at_the_cap():
    inside = jpeg_with_scans(imaging.MAX_JPEG_SCANS)
    assert inside.count(b"\xff\xda") == imaging.MAX_JPEG_SCANS
    assert decode_image_ok(inside)
    with pytest.raises(ImageDecodeError, match=f"{imaging.MAX_JPEG_SCANS + 1} scans"):
        imaging.decode_image(jpeg_with_scans(imaging.MAX_JPEG_SCANS + 1))


def decode_image_ok(data: bytes) -> bool:
    decoded = imaging.decode_image(data)
    return decoded.dtype == np.uint8 and decoded.shape[2] == 3


@pytest.mark.parametrize("bit_depth,color_type,bytes_per_pixel", [(16, 0, 2), (8, 6, 4), (8, 2, 4)])
def test_decoded_size_counts_the_bytes_of_each_pixel(bit_depth, color_type, bytes_per_pixel):
    # Just inside and just outside MAX_DECODED_BYTES: 16-bit grey, RGBA, RGB (Pillow pads it to 4).
    side = int((imaging.MAX_DECODED_BYTES // bytes_per_pixel) ** 0.5)
    with pytest.raises(ImageDecodeError, match="decodes to"):
        imaging.decode_image(png_header_only(side + 1, side + 1, bit_depth, color_type))
    # Inside the cap the header passes and decoding starts (then finds no data).
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        imaging.decode_image(png_header_only(side, side, bit_depth, color_type))


def test_phone_mpo_photos_decode_as_their_first_picture():
    import io

    from PIL import Image

    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 10, 200))
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    decoded = imaging.decode_image(buffer.getvalue(), "phone.jpg")
    assert decoded.shape == (30, 40, 3) and decoded[..., 0].mean() > 150 and decoded[..., 2].mean() < 60


def test_a_symlink_loop_is_a_one_line_image_error(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageDecodeError, match="cannot open"):
        imaging.decode_image_file(loop)


# --- archives ----------------------------------------------------------------------------

ARCHIVE_SETUP = "from cifar_core.data import load_dataset\n"


@pytest.mark.measured
def test_hostile_archives_are_refused_within_bounds(tmp_path):
    oversized = tar_with_declared_member(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1",
                                         200 * 1024**2)
    pax = tar_with_declared_member(tmp_path / "pax.tar.gz", "././@PaxHeader", 3 * 1024**3, kind=tarfile.XHDTYPE)
    for path, message in [(oversized, "the limit is"), (pax, "extended header")]:
        outcome = measure(ARCHIVE_SETUP, f"load_dataset({str(path)!r}, use_cache=False)")
        assert_refused_within_bounds(outcome, "UnsafeArchiveError", message)


@pytest.mark.measured
@pytest.mark.parametrize("kind,declared,message", [
    (tarfile.REGTYPE, 200 * 1024**2, "is 209715200 bytes; the limit is 67108864"),
    (tarfile.XHDTYPE, 3 * 1024**3, "archive has a 3221225472-byte extended header; the limit is 1048576"),
    (tarfile.GNUTYPE_LONGNAME, 2 * 1024**2, "extended header"),
])
def test_declared_sizes_are_checked_before_reading(tmp_path, kind, declared, message):
    from cifar_core.errors import UnsafeArchiveError

    archive = tar_with_declared_member(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1",
                                       declared, kind=kind)
    with pytest.raises(UnsafeArchiveError, match=message):
        load_dataset(archive, use_cache=False)


def test_zero_filled_batches_are_read_one_at_a_time(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    zeros = b"\0" * (40 * 1024**2)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(zeros)
            import io

            tar.addfile(info, io.BytesIO(zeros))
    outcome = measure(ARCHIVE_SETUP, f"load_dataset({str(archive)!r}, use_cache=False)", timeout=120)
    print(f"\nzero-filled batches: {outcome['seconds']:.2f} s, +{outcome['extra_mb']:.1f} MB peak")
    assert outcome["refused"] and outcome["type"] == "UnsafePickleError" and "data_batch_1" in outcome["message"]
    assert outcome["extra_mb"] < 200  # one 40 MB member at a time, not 240 MB of them


@pytest.mark.measured
def test_image_folder_reads_only_images_by_name_and_size(image_folder, tmp_path):
    with open(image_folder / "train" / "cat" / "notes.bin", "wb") as handle:
        handle.truncate(6 * 1024**3)  # skipped by name, never read
    with open(image_folder / "video.mp4", "wb") as handle:
        handle.truncate(6 * 1024**3)
    outcome = measure(ARCHIVE_SETUP, f"load_dataset({str(image_folder)!r}, use_cache=False)")
    assert not outcome["refused"], outcome
    assert outcome["seconds"] < 10 and outcome["extra_mb"] < 300
    with open(image_folder / "train" / "cat" / "huge.png", "wb") as handle:
        handle.truncate(imaging.MAX_BYTES + 1)  # an image by name, refused by size before reading
    with pytest.raises(DataSourceError, match="the limit is"):
        load_dataset(image_folder, use_cache=False)


def test_image_archive_skips_other_members_unread(image_folder, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(image_folder.rglob("*.png")):
            handle.write(path, path.relative_to(image_folder).as_posix())
        handle.writestr("train/cat/readme.md", "not an image")
    dataset = load_dataset(archive, use_cache=False)
    assert len(dataset.y_train) == 12 and len(dataset.y_test) == 6


def test_encrypted_zip_members_are_refused(image_folder, tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as handle:
        for path in sorted(image_folder.rglob("*.png")):
            handle.write(path, path.relative_to(image_folder).as_posix())
    encrypted = tmp_path / "encrypted.zip"
    encrypted.write_bytes(set_zip_flag(plain.read_bytes(), 0x1))
    with pytest.raises(DataSourceError, match="encrypted"):
        load_dataset(encrypted, use_cache=False)


def test_walking_a_huge_folder_is_refused_not_done(tmp_path):
    from cifar_core.data import sources

    for i in range(30):
        (tmp_path / "tree" / f"d{i}").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="more than 20 files"):
        list(sources._walk_files(tmp_path / "tree", max_entries=20))
    assert len(list(sources._walk_files(tmp_path / "tree", max_entries=30))) == 0


# --- pickles -----------------------------------------------------------------------------

class _DeclaredArray:
    """Pickles as numpy does an ndarray, but with any shape, dtype and bytes."""

    def __init__(self, shape, dtype, raw):
        self.state = (1, shape, np.dtype(dtype), False, raw)

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state


def _nested_labels(depth: int) -> list:
    node = [0, 1]
    for _ in range(depth):
        node = [node, node]  # shared through the memo: tiny to store, 2**depth to flatten
    return node


PICKLE_SETUP = "from cifar_core.data.pickles import parse_batch\n"


@pytest.mark.measured
@pytest.mark.parametrize("batch,message", [
    ({b"data": _DeclaredArray((700_000, 3072), "u1", b"x"), b"labels": [0]}, "declares 2150400000 values"),
    ({b"data": _DeclaredArray((2, 3072), "u1", b"x"), b"labels": [0, 1]}, "holds 1 bytes"),
    ({b"data": _DeclaredArray((2, 3072), "u1", b"\0" * 6144), b"labels": _nested_labels(40)}, "flat list"),
])
def test_hostile_pickles_are_refused_within_bounds(tmp_path, batch, message):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    assert path.stat().st_size < 20_000
    outcome = measure(PICKLE_SETUP, f"parse_batch(open({str(path)!r}, 'rb').read())")
    assert_refused_within_bounds(outcome, "UnsafePickleError", message)


@pytest.mark.parametrize("payload,message", [
    (_DeclaredArray((2, 3072), "O", [None] * 6144), "integers"),
    (_DeclaredArray((2, 3072), "f4", b"\0" * 24576), "integers"),
])
def test_only_integer_arrays_are_rebuilt(payload, message):
    with pytest.raises(UnsafePickleError, match=message):
        parse_batch(pickle.dumps({b"data": payload, b"labels": [0, 1]}, protocol=2))


def test_the_array_rebuilder_accepts_only_what_numpy_writes():
    class OtherShape:
        def __reduce__(self):
            return np._core.multiarray._reconstruct, (np.ndarray, (10**9,), b"b")

    with pytest.raises(UnsafePickleError, match="never writes"):
        parse_batch(pickle.dumps({b"data": OtherShape(), b"labels": []}, protocol=2))

    import _codecs

    class OtherCodec:
        def __reduce__(self):
            return _codecs.encode, ("text", "rot13")

    with pytest.raises(UnsafePickleError, match="only latin1"):
        parse_batch(pickle.dumps({b"data": OtherCodec(), b"labels": []}, protocol=2))


def test_a_real_batch_round_trips_exactly():
    images = np.random.default_rng(0).integers(0, 255, (3, 3072), dtype=np.uint8)
    x, y = parse_batch(pickle.dumps({b"data": images, b"labels": [3, 0, 9]}, protocol=2))
    assert y.tolist() == [3, 0, 9] and y.dtype == np.int64
    assert np.array_equal(x, images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# --- model files and run metadata ------------------------------------------------------------

def _input(size=32):
    return {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
            "config": {"batch_shape": [None, size, size, 3], "name": "input"}}


@pytest.mark.measured
@pytest.mark.parametrize("config,message", [
    (functional(_input(), layer("Dense", {"units": 10**9}, [None, 3])), "units 1000000000"),
    (functional(_input(), layer("Resizing", {"height": 20000, "width": 20000})), "height 20000"),
    (functional(_input(20000)), "batch_shape 20000"),
    (functional(_input(), layer("Dense", {"units": 8192}, [None, 8192])), "more than 64,000,000 weights"),
    (functional(_input(), layer("Conv2D", {"filters": 8, "kernel_size": [3, 3]})), "declares no input shape"),
    (functional(_input(), layer("Conv2D", {"filters": 8, "kernel_size": [3, 3]}, [None, 9000, 9000, 3])),
     "input shape"),
])
def test_model_configs_declaring_huge_layers_are_refused_before_keras(tmp_path, config, message):
    path = keras_file(tmp_path / "model.keras", config)
    outcome = measure("from cifar_core.models.loading import check_model_file\n",
                      f"check_model_file({str(path)!r})")
    assert_refused_within_bounds(outcome, "ModelFileError", message)


def test_model_files_that_cannot_be_parsed_safely_are_one_line_errors(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    with zipfile.ZipFile(tmp_path / "deep.keras", "w") as archive:
        archive.writestr("config.json", deep)
    with pytest.raises(ModelFileError, match="nests deeper"):
        check_model_file(tmp_path / "deep.keras")
    bzip = keras_file(tmp_path / "bzip.keras", functional(_input()), compress_type=zipfile.ZIP_BZIP2)
    with pytest.raises(ModelFileError, match="compression method 12"):
        check_model_file(bzip)
    plain = keras_file(tmp_path / "plain.keras", functional(_input()))
    check_model_file(plain)  # the control: the same file unencrypted passes
    (tmp_path / "locked.keras").write_bytes(set_zip_flag(plain.read_bytes(), 0x1))
    with pytest.raises(ModelFileError, match="encrypted"):
        check_model_file(tmp_path / "locked.keras")


@pytest.mark.parametrize("data,message", [
    ({"class_names": ["a", "b"], "image_size": 20000}, "image_size"),
    ({"class_names": ["a", "b"], "image_size": "32"}, "image_size"),
    (["a", "b"], "must be a JSON object"),
    ({"class_names": ["only one"]}, "class_names"),
    ({"image_size": 32}, "has no class_names"),
])
def test_run_metadata_with_hostile_sizes_is_refused(tmp_path, data, message):
    runs.atomic_write_json(tmp_path / runs.DATA_FILE, data)
    with pytest.raises(RunFolderError, match=message):
        runs.read_data_info(tmp_path)


RUN_ARRAYS_SETUP = "from cifar_core import runs\n"


@pytest.mark.measured
@pytest.mark.parametrize("shape", [(400_000_000_000, 10), (2_000_000_000, 10)], ids=["beyond memory", "within it"])
def test_run_arrays_whose_headers_declare_more_than_they_hold_are_refused_within_bounds(tmp_path, shape):
    """numpy allocates an .npy's declared shape before reading: a small predictions.npz declaring
    16 TB (a MemoryError) or 80 GB must be one RunFolderError naming the lie."""
    import io

    from numpy.lib import format as npy

    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(tmp_path / runs.PREDICTIONS_FILE, "w") as archive:
        archive.writestr("probs.npy", header.getvalue() + bytes(64))
        archive.writestr("y_true.npy", header.getvalue() + bytes(64))
    outcome = measure(RUN_ARRAYS_SETUP, f"runs.read_predictions({str(tmp_path)!r})")
    assert_refused_within_bounds(outcome, "RunFolderError", "declares")
