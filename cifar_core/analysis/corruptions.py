"""CIFAR-10-C-style corruptions, computed here on uint8 NHWC batches.

Parameters follow Hendrycks & Dietterich (2019)'s CIFAR-10-C code (make_cifar_c.py) for
32x32 images, severities 1-5; severity 0 is the identity. Each corruption is seeded,
so every model sees the same corrupted images.
"""
from __future__ import annotations

import io

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation, images in [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit of intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # (disk radius, alias blur)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards each image's mean
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # scale of the box down-sampling
}
CORRUPTIONS = tuple(PARAMETERS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8, N x H x W x 3) under corruption `name` at `severity` (0 = unchanged)."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity == 0:
        return images.copy()
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} is not 0-5")
    parameter = PARAMETERS[name][severity - 1]
    if name == "jpeg":
        return np.stack([_jpeg(image, parameter) for image in images])
    if name == "pixelate":
        return np.stack([_pixelate(image, parameter) for image in images])
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    out = _APPLY[name](images.astype(np.float64) / 255.0, parameter, rng)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gaussian_noise(x, scale, rng):
    return x + rng.normal(size=x.shape, scale=scale)


def _shot_noise(x, photons, rng):
    return rng.poisson(x * photons) / photons


def _gaussian_blur(x, sigma, rng):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    span = np.arange(-8, 9)
    xx, yy = np.meshgrid(span, span)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    return gaussian_filter(disk, sigma=alias_blur, truncate=1.0 / max(alias_blur, 1e-6))  # a 3x3 Gaussian


def _defocus_blur(x, parameter, rng):
    from scipy.ndimage import convolve

    kernel = _disk(*parameter)
    return convolve(x, kernel[None, :, :, None], mode="reflect")


def _brightness(x, added, rng):
    """HSV value + `added`: every channel scales with the value; black becomes grey."""
    value = x.max(axis=3, keepdims=True)
    new_value = np.minimum(value + added, 1.0)
    return np.where(value > 0, x * new_value / np.maximum(value, 1e-12), new_value)


def _contrast(x, factor, rng):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * factor + means


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _pixelate(image: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((int(width * scale), int(height * scale)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BOX))


_APPLY = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "gaussian_blur": _gaussian_blur,
          "defocus_blur": _defocus_blur, "brightness": _brightness, "contrast": _contrast}
