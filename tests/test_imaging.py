"""The one validating image decoder: hostile bytes fail clearly, odd images decode right."""
import io
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar_core import imaging
from cifar_core.errors import ImageDecodeError
from cifar_core.imaging import decode_image, decode_image_file


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


RED = Image.new("RGB", (20, 10), (255, 0, 0))
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is text pretending to be a jpeg", "not an image"),
    (encode(NOISE, "JPEG")[:400], "corrupt or truncated"),
    (encode(NOISE, "PNG")[:2000], "corrupt or truncated"),
    (encode(RED, "TIFF"), "TIFF images are not accepted"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS images are not accepted|not an image"),
])
def test_bad_inputs_raise_the_project_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, "upload.jpg")


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 10_000)
    big = encode(Image.new("L", (200, 200)), "PNG")
    with pytest.raises(ImageDecodeError, match="megapixels"):
        decode_image(big)
    monkeypatch.setattr(imaging, "MAX_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's guard stays on too
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(big)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.shape == (40, 20, 3)


def test_modes_are_converted_to_rgb_correctly():
    gray = decode_image(encode(Image.new("L", (5, 5), 77), "PNG"))
    assert gray.shape == (5, 5, 3) and (gray == 77).all()

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert (decode_image(encode(rgba, "PNG")) == 255).all()  # composited on white

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert (decode_image(encode(palette, "PNG", transparency=0)) == 255).all()

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG"))
    assert decoded[..., 0].mean() > 200 and decoded[..., 1].mean() < 60


def test_16_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.shape == (1, 4, 3) and decoded.dtype == np.uint8
    assert decoded[0, :, 0].tolist() == [0, 4, 128, 255]
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 0] == decoded[..., 2]).all()


@pytest.mark.parametrize("values,expected", [
    (np.array([[0, 1000, 32768, 65535]], np.int32), [0, 4, 128, 255]),  # 32-bit ints on a 16-bit scale
    (np.array([[-100, 0, 100, 50]], np.int32), [0, 128, 255, 191]),  # outside it: stretched
    (np.array([[0, 70000, 35000, 7000]], np.int32), [0, 255, 128, 26]),
    (np.array([[0.0, 0.5, 1.0, 0.25]], np.float32), [0, 128, 255, 64]),  # floats: stretched
    (np.array([[7.0, 7.0, 7.0, 7.0]], np.float32), [0, 0, 0, 0]),  # flat: black, not a division by zero
    (np.array([[0.0, np.nan, 1.0, 0.5]], np.float32), [0, 0, 255, 128]),  # NaN counts as 0
])
def test_wide_greyscale_modes_map_to_bytes(values, expected):
    image = Image.fromarray(values)
    assert image.mode in ("I", "F")
    rgb = imaging._to_rgb_array(image)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == expected and (rgb[..., 2] == rgb[..., 0]).all()


def test_errors_are_one_short_line():
    from cifar_core.errors import one_line

    assert one_line(ValueError("first line\nsecond line")) == "first line"
    assert one_line(ValueError("  padded  ")) == "padded"
    assert one_line(KeyError()) == "KeyError" and one_line(OSError("   ")) == "OSError"
    assert one_line(ValueError("x" * 500)) == "x" * 160 and one_line(ValueError("x" * 500), 10) == "x" * 10


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (6, 6), color) for color in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    assert decoded[0, 0, 0] > 200 and decoded[0, 0, 1] < 50


def test_huge_jpeg_is_reduced_while_decoding():
    data = encode(Image.new("RGB", (4000, 3000), (10, 20, 30)), "JPEG", quality=50)
    decoded = decode_image(data)
    assert max(decoded.shape[:2]) <= 2 * imaging.DECODE_TARGET


def test_file_errors_are_project_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        decode_image_file(tmp_path / "missing.png")
    (tmp_path / "holiday.jpg").write_bytes(b"text, not a photo")
    with pytest.raises(ImageDecodeError, match="^holiday.jpg: not an image"):  # named by its file name
        decode_image_file(tmp_path / "holiday.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        decode_image_file(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_ever_raise_the_project_error(data):
    try:
        result = decode_image(data)
    except ImageDecodeError:
        return
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=64))
def test_corrupted_real_images_only_raise_the_project_error(offset, noise):
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    data[offset:offset + len(noise)] = noise
    try:
        decoded = decode_image(bytes(data))
    except ImageDecodeError:
        return
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3


# --- header checks, conversions and resizing, each pinned ------------------------------------

from types import SimpleNamespace  # noqa: E402


@pytest.mark.parametrize("size,message", [
    ((0, 5), "x.png: image has no pixels (0x5)"), ((5, 0), "x.png: image has no pixels (5x0)"),
    ((8000, 6000), "x.png: 8000x6000 is 48 megapixels; the limit is 40"),
])
def test_header_sizes_are_refused_with_their_reason(size, message):
    with pytest.raises(ImageDecodeError) as caught:
        imaging._check_header(SimpleNamespace(format="PNG", size=size), "x.png")
    assert str(caught.value) == message


def test_the_pixel_cap_is_exact(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 40 * 10)
    imaging._check_header(SimpleNamespace(format="PNG", size=(40, 10)), "x")
    imaging._check_header(SimpleNamespace(format="PNG", size=(1, 1)), "x")
    with pytest.raises(ImageDecodeError, match="41x10"):
        imaging._check_header(SimpleNamespace(format="PNG", size=(41, 10)), "x")


def test_unaccepted_formats_list_what_is_accepted():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(encode(RED, "TIFF"), "scan.tif")
    assert str(caught.value) == "scan.tif: TIFF images are not accepted; use BMP, GIF, JPEG, MPO, PNG, WEBP"


def test_the_decoded_size_cap_is_exact(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_DECODED_BYTES", 20 * 10 * 4)  # RGB decodes to 4 bytes a pixel
    assert decode_image(encode(RED, "PNG")).shape == (10, 20, 3)
    monkeypatch.setattr(imaging, "MAX_DECODED_BYTES", 20 * 10 * 4 - 1)
    with pytest.raises(ImageDecodeError, match="^red.png: 20x10 RGB decodes to 800 bytes; the limit is 799 bytes$"):
        decode_image(encode(RED, "PNG"), "red.png")
    grey = Image.new("L", (20, 10), 9)
    monkeypatch.setattr(imaging, "MAX_DECODED_BYTES", 20 * 10)  # greyscale: 1 byte a pixel
    assert (decode_image(encode(grey, "PNG")) == 9).all()


@pytest.mark.parametrize("mode,colour,expected", [
    ("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77)), ("RGB", (10, 20, 30), (10, 20, 30)),
    ("LA", (100, 0), (255, 255, 255)), ("LA", (100, 255), (100, 100, 100)),
    ("RGBA", (200, 0, 0, 255), (200, 0, 0)), ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
    ("PA", (3, 255), (3, 3, 3)), ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
])
def test_every_mode_becomes_rgb_composited_on_white(mode, colour, expected):
    image = Image.new(mode, (3, 2), colour)
    if mode == "PA":
        image.putpalette([i for v in range(256) for i in (v, v, v)])
    rgb = imaging._to_rgb_array(image)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(int(v) for v in rgb[1, 2]) == expected


def test_half_transparent_pixels_blend_with_white():
    rgb = imaging._to_rgb_array(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))
    assert abs(int(rgb[0, 0, 0]) - 127) <= 1


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (2, 1), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    assert imaging._to_rgb_array(palette)[0, 0].tolist() == [250, 10, 10]
    palette.info["transparency"] = 1
    assert imaging._to_rgb_array(palette)[0, 0].tolist() == [255, 255, 255]


def test_resizing_shrinks_by_area_and_enlarges_smoothly():
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    small = imaging.resize_image(checker, 2)
    assert small.shape == (2, 2, 3) and np.all(np.abs(small.astype(int) - 128) <= 1)  # an average, not a pick
    tiny = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1x2
    big = imaging.resize_image(tiny, 8)
    assert big.shape == (8, 8, 3) and big.dtype == np.uint8
    assert len(np.unique(big[0, :, 0])) > 2  # smooth, not nearest-neighbour blocks
    wide = np.zeros((2, 6, 3), np.uint8)
    assert imaging.resize_image(wide, 4).shape == (4, 4, 3)  # both sides set, aspect not kept
    square = np.zeros((5, 5, 3), np.uint8)
    assert imaging.resize_image(square, 5) is square


def test_mosaic_tiles_images_in_rows_with_white_gaps():
    images = np.stack([np.full((2, 2, 3), value, np.uint8) for value in (10, 20, 30)])
    tiled = imaging.mosaic(images, columns=2, scale=1, gap=1)
    assert tiled.shape == (2 * 3, 2 * 3, 3)
    assert (tiled[0:2, 0:2] == 10).all() and (tiled[0:2, 3:5] == 20).all() and (tiled[3:5, 0:2] == 30).all()
    assert (tiled[2, :] == 255).all() and (tiled[3:5, 3:5] == 255).all()  # gaps and the empty cell stay white
    assert imaging.mosaic(images, columns=3, scale=2, gap=0).shape == (4, 12, 3)


def test_upscale_keeps_pixels_sharp():
    image = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1x2
    big = imaging.upscale(image, 4)
    assert big.shape == (4, 4, 3) and set(np.unique(big)) == {0, 255}  # nearest neighbour: no blending
    assert imaging.upscale(np.zeros((3, 3, 3), np.uint8)).shape == (160, 160, 3)


def test_non_square_images_are_always_resized_to_a_square():
    for shape in ((5, 8, 3), (8, 5, 3)):
        assert imaging.resize_image(np.zeros(shape, np.uint8), 8).shape == (8, 8, 3)


def test_the_filter_depends_on_either_side_shrinking():
    columns = np.zeros((2, 8, 3), np.uint8)
    columns[:, ::2] = 255  # 2 rows x 8 alternating columns: shrinking the width averages them
    assert np.all(np.abs(imaging.resize_image(columns, 4).astype(int) - 128) <= 1)
    rows = np.zeros((8, 2, 3), np.uint8)
    rows[::2] = 255
    assert np.all(np.abs(imaging.resize_image(rows, 4).astype(int) - 128) <= 1)
    stripes = np.zeros((2, 4, 3), np.uint8)
    stripes[1] = 255  # width already 4, height 2 -> 4: enlarging, so smooth (bicubic), not replicated
    assert len(np.unique(imaging.resize_image(stripes, 4)[:, 0, 0])) > 2
    assert len(np.unique(imaging.resize_image(stripes.transpose(1, 0, 2).copy(), 4)[0, :, 0])) > 2


@pytest.mark.parametrize("values,expected", [
    ([[0, 1000, 2000]], [0, 4, 8]),  # integers from 0 up to 65535: the 16-bit scale, not stretched
    ([[30000, 65535, 40000]], [117, 255, 156]),
    ([[0, 65536, 32768]], [0, 255, 128]),  # beyond 16 bits: stretched
    ([[1, 1000, 2000]], [0, 4, 8]),
])
def test_integer_greyscale_uses_the_16_bit_scale_exactly_when_it_fits(values, expected):
    rgb = imaging._to_rgb_array(Image.fromarray(np.array(values, np.int32)))
    assert rgb[0, :, 0].tolist() == expected


def test_transparent_modes_of_every_kind_become_white():
    for mode, colour in (("PA", (3, 0)), ("LA", (9, 0)), ("RGBA", (9, 9, 9, 0))):
        image = Image.new(mode, (2, 2), colour)
        if mode == "PA":
            image.putpalette([0] * 768)
        assert (imaging._to_rgb_array(image) == 255).all(), mode
    opaque_palette = Image.new("P", (2, 2), 0)
    opaque_palette.putpalette([7, 8, 9] + [0] * 765)
    assert imaging._to_rgb_array(opaque_palette)[0, 0].tolist() == [7, 8, 9]


def test_messages_name_the_image_and_the_cause():
    with pytest.raises(ImageDecodeError, match="^image: not an image"):
        decode_image(b"plain text")
    truncated = encode(NOISE, "PNG")[:2000]
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(truncated, "cut.png")
    assert str(caught.value).startswith("cut.png: corrupt or truncated image (") and "(None)" not in str(caught.value)
    assert len(str(caught.value)) > len("cut.png: corrupt or truncated image ()") + 5


def test_mosaic_defaults_and_sharp_scaling():
    images = np.zeros((2, 2, 2, 3), np.uint8)
    images[0, 0, 0] = 255
    tiled = imaging.mosaic(images, columns=2)  # scale 3, gap 2
    assert tiled.shape == ((2 + 2) * 3, (2 + 2) * 2 * 3, 3)
    assert set(np.unique(tiled)) == {0, 255}  # nearest neighbour: no new values


def test_a_photo_with_damaged_exif_still_decodes():
    # Pillow warns about the damage; only its decompression-bomb warning is turned into a refusal.
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    raw = exif.tobytes()
    damaged = raw[:10] + b"\x05\x00" + raw[12:]  # five entries declared, one present
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, "JPEG", exif=damaged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_image(buffer.getvalue(), "damaged.jpg")
    assert decoded.shape == (6, 8, 3) and abs(int(decoded[0, 0, 0]) - 200) < 8
    assert any("Corrupt EXIF" in str(warning.message) for warning in caught)


def test_fit_within_shrinks_only_what_is_larger_keeping_the_aspect_and_at_least_a_pixel():
    at_size = np.zeros((64, 40, 3), np.uint8)
    assert imaging.fit_within(at_size, 64) is at_size  # exactly the size: untouched
    small = np.zeros((40, 30, 3), np.uint8)
    assert imaging.fit_within(small, 64) is small  # never enlarged
    assert imaging.fit_within(np.zeros((128, 80, 3), np.uint8), 64).shape == (64, 40, 3)
    assert imaging.fit_within(np.zeros((1, 1000, 3), np.uint8), 100).shape == (1, 100, 3)  # a strip stays a pixel
    assert imaging.fit_within(np.zeros((1000, 1, 3), np.uint8), 100).shape == (100, 1, 3)
