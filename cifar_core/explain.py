"""What a model says about photos and where it looked: probabilities and Grad-CAM in one pass.

Model code is backend-neutral Keras; this module needs gradients, so it uses
TensorFlow's GradientTape directly (the dashboard runs on TensorFlow). Each loaded
model gets one compiled reader (traced once, at warm-up), so a photo costs one
forward and one backward pass per model, not an eager probe rebuilt per view.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np


def grad_cam(model, batch: np.ndarray, layer_name: str, class_index: int | None = None) -> np.ndarray:
    """A heatmap in [0, 1] of the layer's spatial size for the first image of `batch`."""
    import tensorflow as tf

    probe = _probe(model, layer_name)
    inputs = tf.convert_to_tensor(batch[:1], tf.float32)
    with tf.GradientTape() as tape:
        activations, probs = probe(inputs, training=False)
        index = int(tf.argmax(probs[0])) if class_index is None else class_index
        score = probs[:, index]
    return _normalised_cams(tape.gradient(score, activations), activations)[0].numpy()


def _probe(model, layer_name: str):
    import keras

    return keras.Model(model.inputs, [model.get_layer(layer_name).output, model.outputs[0]])


def _normalised_cams(gradients, activations):
    """Grad-CAM per image: ReLU of the gradient-weighted channel sum, scaled so each peak is 1."""
    import tensorflow as tf

    # float32 from here: a mixed-precision model hands back bf16 tensors.
    gradients, activations = tf.cast(gradients, tf.float32), tf.cast(activations, tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2))  # one weight per channel
    cams = tf.nn.relu(tf.reduce_sum(activations * weights[:, None, None, :], axis=-1))
    peaks = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(cams, peaks)


@dataclass
class PhotoReading:
    """One model's answer for a batch of photos."""
    probabilities: np.ndarray  # (photos, classes), float32
    class_names: tuple[str, ...]
    views: list[np.ndarray]  # each photo as the model sees it (its training resolution)
    heatmaps: list[np.ndarray] | None  # Grad-CAM per photo; None for a model without a named last convolution
    features: np.ndarray | None = None  # (photos, features) entering the classifier: for nearest neighbours


_readers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def read_photos(run, images: list[np.ndarray]) -> PhotoReading:
    """Top-class probabilities and Grad-CAM of a loaded run for a batch of photos, in one call."""
    from .inference import model_view

    views = [model_view(run, image) for image in images]
    probs, cams, features = _reader(run)(np.stack(views))
    heatmaps = None if cams is None else [np.asarray(cam) for cam in cams.numpy()]
    return PhotoReading(probs.numpy().astype(np.float32), run.class_names, views, heatmaps,
                        np.asarray(features.numpy(), np.float32))


def _reader(run):
    """The run's compiled photo reader, built once per loaded model (thread-safe: the
    dashboard's warm-up thread and a page may ask at the same moment)."""
    with _readers_lock:
        reader = _readers.get(run.model)
        if reader is None:
            reader = _readers[run.model] = _build_reader(run)
        return reader


def _build_reader(run):
    import keras
    import tensorflow as tf

    from .analysis.features import classifier_layer
    from .data.pipeline import resize_for_model
    from .models import REGISTRY

    spec = REGISTRY.get(run.config.model)
    layer = spec.last_conv_layer if spec is not None else None
    size = run.data_image_size
    signature = [tf.TensorSpec([None, size, size, 3], tf.uint8)]
    needs_resize = run.input_size != size

    def model_input(batch):
        x = tf.cast(batch, tf.float32)
        return resize_for_model(x, run.input_size) if needs_resize else x

    features_in = classifier_layer(run.model).input
    if not layer:
        reader = keras.Model(run.model.inputs, [features_in, run.model.outputs[0]])

        @tf.function(input_signature=signature)
        def probabilities_only(batch):
            features, probs = reader(model_input(batch), training=False)
            return tf.cast(probs, tf.float32), None, tf.cast(features, tf.float32)
        return lambda batch: probabilities_only(tf.constant(batch))

    probe = keras.Model(run.model.inputs, [run.model.get_layer(layer).output, features_in, run.model.outputs[0]])

    @tf.function(input_signature=signature)
    def probabilities_and_cams(batch):
        with tf.GradientTape() as tape:
            activations, features, probs = probe(model_input(batch), training=False)
            # Each photo's own top class; photos are independent in inference mode, so the
            # gradient of the sum is each photo's own gradient.
            score = tf.reduce_sum(tf.reduce_max(probs, axis=1))
        cams = _normalised_cams(tape.gradient(score, activations), activations)
        return tf.cast(probs, tf.float32), cams, tf.cast(features, tf.float32)

    return lambda batch: probabilities_and_cams(tf.constant(batch))


def warm_up(run) -> None:
    """Trace the run's reader on a blank photo, so the first real photo pays no tracing."""
    read_photos(run, [np.zeros((run.data_image_size, run.data_image_size, 3), np.uint8)])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heatmap, resized to the image, blended over it as a red-yellow glow."""
    from PIL import Image

    height, width = image.shape[:2]
    heat = np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize((width, height),
                                                                                Image.Resampling.BILINEAR)) / 255.0
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1) * 255
    blend = image.astype(np.float32) * (1 - alpha * heat[..., None]) + colour * alpha * heat[..., None]
    return np.clip(blend, 0, 255).astype(np.uint8)


# --- inside the network -------------------------------------------------------------------------

STAGES_SHOWN = 6  # convolution layers shown, evenly spread from the first to the last
CHANNELS_SHOWN = 8  # the strongest channels of each
OCCLUSION_PATCH = 8  # pixels of the model's view (32 px for every shipped model)
OCCLUSION_STRIDE = 4


@dataclass
class Inspection:
    """What one model does with one photo, layer by layer."""
    view: np.ndarray  # the photo as the model sees it
    top_class: str
    probability: float
    stages: list[tuple[str, np.ndarray]]  # (layer name, CHANNELS_SHOWN maps in [0, 1], strongest first)
    filters: np.ndarray  # the first convolution's kernels as RGB tiles in [0, 1], (n, k, k, 3)
    gradcam: np.ndarray | None  # [0, 1]
    occlusion: np.ndarray  # drop of the top class's probability per patch position, scaled to [0, 1]


def convolution_layers(model) -> list:
    """Every ordinary 2-D convolution, input to output (depthwise ones are per-channel filters)."""
    import keras

    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)]


def inspect_photo(run, image: np.ndarray) -> Inspection:
    import keras
    import tensorflow as tf

    from .data.pipeline import resize_for_model
    from .inference import model_view

    view = model_view(run, image)
    convolutions = convolution_layers(run.model)
    picks = sorted({round(i * (len(convolutions) - 1) / max(STAGES_SHOWN - 1, 1)) for i in range(STAGES_SHOWN)})
    chosen = [convolutions[i] for i in picks] if convolutions else []
    probe = keras.Model(run.model.inputs, [layer.output for layer in chosen] + [run.model.outputs[0]])

    def model_input(batch):
        x = tf.cast(batch, tf.float32)
        return resize_for_model(x, run.input_size) if run.input_size != run.data_image_size else x

    outputs = probe(model_input(view[None]), training=False)
    probs = np.asarray(outputs[-1], np.float32)[0]
    top = int(probs.argmax())
    stages = [(layer.name, _strongest_channels(np.asarray(tf.cast(maps, tf.float32))[0]))
              for layer, maps in zip(chosen, outputs[:-1], strict=True)]
    filters = _filter_tiles(convolutions[0]) if convolutions else np.zeros((0, 1, 1, 3))
    def predict(batch):  # in inference-sized batches: 50 occluded copies at 224 px are a lot of activations
        from .evaluation import inference_batch_size

        size = inference_batch_size(run.input_size)
        return np.concatenate([np.asarray(run.model(model_input(batch[i:i + size]), training=False))
                               for i in range(0, len(batch), size)])

    return Inspection(view, run.class_names[top], float(probs[top]), stages, filters,
                      read_photos(run, [image]).heatmaps[0] if _has_cam(run) else None,
                      occlusion_map(predict, view, top))


def _has_cam(run) -> bool:
    from .models import REGISTRY

    spec = REGISTRY.get(run.config.model)
    return bool(spec and spec.last_conv_layer)


def _strongest_channels(maps: np.ndarray) -> np.ndarray:
    """The CHANNELS_SHOWN channels of largest mean activation, each scaled to [0, 1]."""
    order = np.argsort(-maps.mean(axis=(0, 1)))[:CHANNELS_SHOWN]
    chosen = maps[:, :, order].transpose(2, 0, 1)
    low = chosen.min(axis=(1, 2), keepdims=True)
    span = chosen.max(axis=(1, 2), keepdims=True) - low
    return np.divide(chosen - low, span, out=np.zeros_like(chosen), where=span > 0)


def _filter_tiles(layer) -> np.ndarray:
    """Kernels (k, k, channels, n) as n RGB tiles, each scaled to [0, 1] (the first 3 input channels)."""
    kernel = np.asarray(layer.get_weights()[0], np.float32)[:, :, :3, :]
    tiles = kernel.transpose(3, 0, 1, 2)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    return np.divide(tiles - low, span, out=np.zeros_like(tiles), where=span > 0)


def occlusion_map(predict, view: np.ndarray, class_index: int, patch: int = OCCLUSION_PATCH,
                  stride: int = OCCLUSION_STRIDE) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus, 2014): a grey patch slid over the image; each cell is
    how much the class's probability drops with the patch there, scaled to [0, 1]. No gradients."""
    height, width = view.shape[:2]
    rows = range(0, max(height - patch, 0) + 1, stride)
    cols = range(0, max(width - patch, 0) + 1, stride)
    batch = np.repeat(view[None], len(rows) * len(cols) + 1, axis=0)
    for n, (r, c) in enumerate((r, c) for r in rows for c in cols):
        batch[n + 1, r:r + patch, c:c + patch] = 128
    probs = np.asarray(predict(batch), np.float32)[:, class_index]
    drop = np.maximum(probs[0] - probs[1:], 0).reshape(len(rows), len(cols))
    peak = drop.max()
    return drop / peak if peak > 0 else drop
