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

from .errors import ImageDecodeError

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
# Pillow's own bomb guard stays on (it errors at 2x MAX_IMAGE_PIXELS); we
# refuse well below it so one upload cannot take gigabytes of memory.
MAX_PIXELS = 40_000_000
MAX_BYTES = 50 * 1024 * 1024
# Big photos are reduced while decoding (JPEG draft mode) to about this size:
# every model here looks at 224 pixels or fewer.
DECODE_TARGET = 1024
BACKGROUND = (255, 255, 255)


def decode_image(data: bytes | bytearray | memoryview, name: str = "image") -> np.ndarray:
    """Decode untrusted image bytes to an (H, W, 3) uint8 RGB array."""
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageDecodeError(f"{name}: file is {len(data) / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not errors) between 1x and 2x its pixel limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_header(image, name)
            image.seek(0)  # animated GIF/WebP: the first frame
            if image.format == "JPEG":
                image.draft("RGB", (DECODE_TARGET, DECODE_TARGET))
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
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({_short(exc)})") from None


def decode_image_file(path: Path | str) -> np.ndarray:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageDecodeError(f"{path.name}: file is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise ImageDecodeError(f"{path}: permission denied") from None
    return decode_image(data, name=path.name)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB array to size x size (area filter when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    shrinking = pil.width > size or pil.height > size
    pil = pil.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


def _check_header(image: Image.Image, name: str) -> None:
    if image.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS))
        raise ImageDecodeError(f"{name}: {image.format or 'unknown'} images are not accepted; use {accepted}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}")


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        canvas.alpha_composite(rgba)
        image = canvas
    # Handles L, 1, CMYK, YCbCr, LAB, HSV and the composited RGBA.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _high_depth_to_rgb(image: Image.Image) -> np.ndarray:
    # 16-bit (and 32-bit) grayscale: scale the full range to 0..255 instead of
    # letting convert("L") clip everything above 255 to white.
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (values.size and values.max() <= 65535 and values.min() >= 0):
        scaled = values / 65535.0 * 255.0
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
