"""Grad-CAM: where in the image the model looked for its top class.

Model code is backend-neutral Keras; this module needs gradients, so it uses
TensorFlow's GradientTape directly (the dashboard runs on TensorFlow).
"""
from __future__ import annotations

import numpy as np


def grad_cam(model, batch: np.ndarray, layer_name: str, class_index: int | None = None) -> np.ndarray:
    """A heatmap in [0, 1] of the layer's spatial size for the first image of `batch`."""
    import keras
    import tensorflow as tf

    layer = model.get_layer(layer_name)
    probe = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    inputs = tf.convert_to_tensor(batch[:1], tf.float32)
    with tf.GradientTape() as tape:
        activations, probs = probe(inputs, training=False)
        index = int(tf.argmax(probs[0])) if class_index is None else class_index
        score = probs[:, index]
    # float32 from here: a mixed-precision model hands back bf16 tensors.
    gradients = tf.cast(tape.gradient(score, activations), tf.float32)
    activations = tf.cast(activations, tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2))  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(activations * weights[:, None, None, :], axis=-1))[0].numpy()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def explain_image(run, image: np.ndarray) -> np.ndarray | None:
    """Grad-CAM of a loaded run on one photo, as the model sees it (its training resolution,
    resized to its input); None for a model without a named last convolution."""
    from .data.pipeline import make_inference_dataset
    from .inference import model_view
    from .models import REGISTRY

    spec = REGISTRY.get(run.config.model)
    if spec is None or not spec.last_conv_layer:
        return None
    batch = next(iter(make_inference_dataset(model_view(run, image)[None], 1, run.input_size))).numpy()
    return grad_cam(run.model, batch, spec.last_conv_layer)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heatmap, resized to the image, blended over it as a red-yellow glow."""
    from PIL import Image

    height, width = image.shape[:2]
    heat = np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize((width, height),
                                                                                Image.Resampling.BILINEAR)) / 255.0
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1) * 255
    blend = image.astype(np.float32) * (1 - alpha * heat[..., None]) + colour * alpha * heat[..., None]
    return np.clip(blend, 0, 255).astype(np.uint8)
