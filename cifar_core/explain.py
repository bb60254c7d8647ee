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
