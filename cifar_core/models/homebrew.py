"""Homebrew CIFAR networks, Keras 3 only (keras.layers / keras.ops).

Each builder takes raw 0..255 images: preprocessing lives inside the model so
a saved .keras file is self-contained. Layer names are predictable so Grad-CAM
and fine-tuning can find layers by name.
"""
from __future__ import annotations

import keras
import numpy as np

from ..errors import ConfigError
from .layers import FUSED_MIN_EPSILON, batch_norm, conv2d, tanh_gelu

# CIFAR-10 channel statistics on the 0..1 scale (train split, official images).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Output layers stay float32 under mixed precision: softmax and the loss
# need more than bf16's 8 bits of mantissa.
OUTPUT_DTYPE = "float32"


def _check_input_shape(input_shape, name: str, min_size: int = 16) -> tuple:
    """(H, W, 3) as ints; None for H or W leaves that size open (one model, several resolutions)."""
    if (len(input_shape) != 3 or input_shape[2] != 3
            or any(v is not None and v < min_size for v in input_shape[:2])):
        raise ConfigError(f"{name}: input_shape must be (H, W, 3) with H, W >= {min_size}; received {input_shape}")
    return tuple(None if v is None else int(v) for v in input_shape)


def _check_classes(num_classes: int, name: str) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"{name}: num_classes must be an integer >= 2; received {num_classes!r}")


def _normalize(x):
    """0..255 -> per-channel standardised, as fixed (non-trainable) constants."""
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    variance = [s * s for s in CIFAR_STD]
    return keras.layers.Normalization(mean=list(CIFAR_MEAN), variance=variance, name="normalize")(x)


# --- G3: the original study's network ------------------------------------------------

# (filters, batchnorm, maxpool, dropout) per conv, as in the study.
G3_STAGES = (
    (32, True, False, 0.2),
    (32, True, True, 0.0),
    (64, True, False, 0.3),
    (128, True, True, 0.3),
    (128, False, False, 0.0),
    (128, False, False, 0.4),
)


def build_g3(input_shape=(32, 32, 3), num_classes: int = 10, dense_units: int = 128,
             head_dropout: float = 0.5) -> keras.Model:
    """The study's 'G3' CNN: 416,490 parameters at 10 classes, any input size."""
    input_shape = _check_input_shape(input_shape, "g3")
    _check_classes(num_classes, "g3")
    inputs = keras.Input(input_shape, name="image")
    # Rescaling only (no Normalization): its statistics would add parameters
    # and the study's network had exactly 416,490.
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, (filters, batchnorm, maxpool, dropout) in enumerate(G3_STAGES, start=1):
        x = conv2d(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        if batchnorm:
            x = batch_norm(name=f"bn{i}")(x)
        if maxpool:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype=OUTPUT_DTYPE)(x)
    return keras.Model(inputs, outputs, name="g3")


# --- FastNet: airbench-shaped, for 2 CPU cores -----------------------------------------

FASTNET_WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
# airbench's GELU (exact, erf); "gelu_tanh": GELU trained by its tanh approximation (fewer kernels
# per bf16 step; saved and measured as exact GELU, see models/layers.py); SiLU; ReLU. The recipe
# picks (BENCHMARKS.md has what each costs and buys); the builder's default keeps old configs' net.
FASTNET_ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
# airbench's 1e-12 is below TensorFlow's fused batch-norm floor, and so is PyTorch's default 1e-5,
# by a hair: the floor itself keeps fastnet on the fused kernel (1e-5 had silently kept it off).
FASTNET_BN_EPSILON = FUSED_MIN_EPSILON


def build_fastnet(input_shape=(32, 32, 3), num_classes: int = 10, widths=FASTNET_WIDTHS,
                  logit_scale: float = 1 / 9, activation: str = "gelu") -> keras.Model:
    """A VGG-like net after airbench94: frozen 2x2 patch-whitening, three
    conv-pool-BN-activation blocks, global max pool, scaled linear head.

    Call `init_whitening(model, images)` once before training.
    """
    input_shape = _check_input_shape(input_shape, "fastnet")
    _check_classes(num_classes, "fastnet")
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"fastnet: widths must be three positive ints; received {widths}")
    if activation not in FASTNET_ACTIVATIONS:
        raise ConfigError(f"fastnet: activation must be one of {FASTNET_ACTIVATIONS}; received {activation!r}")
    inputs = keras.Input(input_shape, name="image")
    x = _normalize(inputs)
    # Frozen: its weights are the eigenvectors of the data's 2x2 patches.
    x = keras.layers.Conv2D(2 * 3 * WHITEN_KERNEL ** 2, WHITEN_KERNEL, padding="valid", name="whiten",
                            trainable=False)(x)
    x = _activation(activation, "whiten_act")(x)
    for i, width in enumerate(widths, start=1):
        x = conv2d(width, 3, padding="same", use_bias=False, name=f"block{i}_conv1")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = batch_norm(momentum=0.6, epsilon=FASTNET_BN_EPSILON, name=f"block{i}_bn1")(x)
        x = _activation(activation, f"block{i}_act1")(x)
        x = conv2d(width, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(x)
        x = batch_norm(momentum=0.6, epsilon=FASTNET_BN_EPSILON, name=f"block{i}_bn2")(x)
        x = _activation(activation, f"block{i}_act2")(x)
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    x = keras.layers.Dense(num_classes, use_bias=False, name="logits")(x)
    # airbench scales logits down: the head starts less confident, trains steadier.
    x = keras.layers.Rescaling(logit_scale, name="logit_scale", dtype=OUTPUT_DTYPE)(x)
    outputs = keras.layers.Activation("softmax", name="predictions", dtype=OUTPUT_DTYPE)(x)
    return keras.Model(inputs, outputs, name="fastnet")


def _activation(name: str, layer_name: str) -> keras.layers.Layer:
    return tanh_gelu(name=layer_name) if name == "gelu_tanh" else keras.layers.Activation(name, name=layer_name)


def init_whitening(model: keras.Model, images: np.ndarray, eps: float = 5e-4, max_images: int = 5000) -> None:
    """Set the frozen 'whiten' conv to the ZCA-like eigenbasis of image patches."""
    layer = model.get_layer("whiten")
    size = layer.kernel_size[0]
    normalize = keras.Sequential([model.get_layer("rescale"), model.get_layer("normalize")])
    x = np.asarray(normalize(images[:max_images].astype("float32")))
    n, h, w, c = x.shape
    patches = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # n,h',w',c,s,s
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * c).astype(np.float64)
    covariance = np.cov(patches, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    basis = eigenvectors.T / np.sqrt(eigenvalues + eps)[:, None]  # (k, s*s*c)
    kernel = basis.reshape(-1, size, size, c).transpose(1, 2, 3, 0)  # s, s, c, k
    # Both signs of every eigenvector, as airbench does, so GELU keeps the information.
    kernel = np.concatenate([kernel, -kernel], axis=-1).astype("float32")
    layer.set_weights([kernel, np.zeros(kernel.shape[-1], "float32")])


# --- Demo: a minute of training for a live audience --------------------------------------

DEMO_WIDTHS = (32, 64, 128)


def build_demo(input_shape=(32, 32, 3), num_classes: int = 10, widths=DEMO_WIDTHS) -> keras.Model:
    """A small conv-BN-ReLU-pool stack that learns something in about a minute."""
    input_shape = _check_input_shape(input_shape, "demo")
    _check_classes(num_classes, "demo")
    inputs = keras.Input(input_shape, name="image")
    x = _normalize(inputs)
    for i, width in enumerate(widths, start=1):
        x = conv2d(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # Short runs: BN's moving statistics must settle within a few hundred steps.
        x = batch_norm(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        if i < len(widths):
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype=OUTPUT_DTYPE)(x)
    return keras.Model(inputs, outputs, name="demo")
