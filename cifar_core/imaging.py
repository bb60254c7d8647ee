"""Safe decoding of untrusted images: one function, used everywhere.

decode_image() takes bytes (an upload, a file, an archive member) and returns
an RGB uint8 array, or raises ImageDecodeError with a one-line message. The
format is decided by content, never by file name.
"""
from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, one_line
from .safeio import read_regular_file, size_text

# MPO: the JPEG that phone cameras write with a multi-picture index; its first
# picture is an ordinary JPEG.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# Pillow's own bomb guard stays on (it errors at 2x MAX_IMAGE_PIXELS); we
# refuse well below it so one upload cannot take gigabytes of memory.
MAX_PIXELS = 40_000_000
MAX_BYTES = 50 * 1024 * 1024
# What Pillow will hold once decoded (after JPEG draft reduction), in bytes:
# conversion to RGB makes about three more copies, so this bounds a decode
# to a few hundred MB whatever the header's pixel depth.
MAX_DECODED_BYTES = 64 * 1024 * 1024
# A progressive JPEG's decode time grows with its number of scans, each a pass
# over the whole image; encoders write about ten, a hostile file thousands.
MAX_JPEG_SCANS = 64
# Bytes per pixel of Pillow's decoded buffer by mode (anything else: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Big photos are reduced while decoding (JPEG draft mode) to about this size:
# every model here looks at 224 pixels or fewer.
DECODE_TARGET = 1024
OPAQUE_BACKGROUND = (255, 255, 255, 255)  # transparent pixels become white


def decode_image(data: bytes | bytearray | memoryview, name: str = "image") -> np.ndarray:
    """Decode untrusted image bytes to an (H, W, 3) uint8 RGB array."""
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageDecodeError(f"{name}: file is {size_text(len(data))}; the limit is {size_text(MAX_BYTES)}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not errors) between 1x and 2x its pixel limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to 2x
            image = Image.open(io.BytesIO(data))
            _check_header(image, name)
            image.seek(0)  # animated GIF/WebP, MPO: the first frame
            if image.format in JPEG_FORMATS:
                _check_jpeg_scans(data, name)
                image.draft("RGB", (DECODE_TARGET, DECODE_TARGET))
            _check_decoded_size(image, name)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb_array(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"{name}: image is too large to decode safely (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image (or a format we cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            KeyError, MemoryError, ZeroDivisionError, RuntimeError, struct.error) as exc:
        # Pillow's plugins raise a zoo of types on malformed input.
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({one_line(exc)})") from None


def read_image_file(path: Path | str) -> bytes:
    """The bytes of an image file, bounded: regular files only, at most MAX_BYTES."""
    return read_regular_file(path, MAX_BYTES, ImageDecodeError, what="image")


def decode_image_file(path: Path | str) -> np.ndarray:
    return decode_image(read_image_file(path), name=Path(path).name)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB array to size x size (area filter when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    shrinking = pil.width > size or pil.height > size
    pil = pil.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(pil)


def _check_header(image: Image.Image, name: str) -> None:
    if image.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS))
        raise ImageDecodeError(f"{name}: {image.format} images are not accepted; use {accepted}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}")


def _check_jpeg_scans(data: bytes, name: str) -> None:
    # 0xFFDA starts a scan; inside entropy-coded data a 0xFF is always followed
    # by 0x00 or a restart marker, so counting the pair over-counts only by the
    # scans of an embedded thumbnail.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(f"{name}: JPEG declares {scans} scans; the limit is {MAX_JPEG_SCANS}")


def _check_decoded_size(image: Image.Image, name: str) -> None:
    width, height = image.size  # after draft(): the reduced size JPEG will decode to
    decoded = width * height * _MODE_BYTES.get(image.mode, 4)
    if decoded > MAX_DECODED_BYTES:
        raise ImageDecodeError(
            f"{name}: {width}x{height} {image.mode} decodes to {size_text(decoded)}; "
            f"the limit is {size_text(MAX_DECODED_BYTES)}")


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P":  # a palette may carry transparency: resolve it to real alpha first
        image = image.convert("RGBA")
    if "A" in image.getbands():  # any alpha: composited on white, not dropped
        canvas = Image.new("RGBA", image.size, OPAQUE_BACKGROUND)
        canvas.alpha_composite(image.convert("RGBA"))
        image = canvas
    # Handles L, 1, CMYK, YCbCr, LAB, HSV and the composited RGBA.
    return np.asarray(image.convert("RGB"))


# 16-bit value -> 8-bit, rounded: one table lookup instead of float copies of the image.
_SIXTEEN_TO_EIGHT = np.rint(np.arange(65536) / 65535.0 * 255.0).astype(np.uint8)


def _high_depth_to_rgb(image: Image.Image) -> np.ndarray:
    # 16-bit (and 32-bit) grayscale: scale the full range to 0..255 instead of
    # letting convert("L") clip everything above 255 to white.
    values = np.asarray(image)
    if np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() <= 65535:
        gray = _SIXTEEN_TO_EIGHT[values.astype(np.uint16)]  # a 16-bit scale: 65535 is white
    else:  # wider integers or floats: stretch what is there
        gray = _stretch_to_bytes(np.nan_to_num(values.astype(np.float32)))
    return np.repeat(gray[:, :, None], 3, axis=2)


def _stretch_to_bytes(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * np.float32(255.0 / (high - low))).astype(np.uint8)


# --- pixels for display ---------------------------------------------------------------------

def mosaic(images: np.ndarray, columns: int, scale: int = 3, gap: int = 2) -> np.ndarray:
    """Tile uint8 images into one picture (one st.image call renders far faster than many)."""
    n, h, w, _ = images.shape
    rows = int(np.ceil(n / columns))
    canvas = np.full((rows * (h + gap), columns * (w + gap), 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = image
    pil = Image.fromarray(canvas)
    return np.asarray(pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST))


def upscale(image: np.ndarray, size: int = 160) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST))


def fit_within(image: np.ndarray, size: int) -> np.ndarray:
    """The image shrunk (aspect kept) so its longer side is at most `size`; smaller ones unchanged."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return image
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.LANCZOS))
