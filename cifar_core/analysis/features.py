"""Penultimate-layer features and logits of a loaded run, in one pass."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

PROGRESS_EVERY = 5000
TINY = 1e-30


def classifier_layer(model):
    """The last Dense layer: its input is the feature vector every model classifies from (fastnet's
    head then rescales its logits; the others' Dense carries the softmax)."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"{model.name} has no Dense classifier layer")
    return dense[-1]


def feature_model(model):
    """images -> (features, probabilities), one pass."""
    import keras

    return keras.Model(model.inputs, [classifier_layer(model).input, model.outputs[0]])


def features_and_logits(run, images: np.ndarray, progress: Callable[[int], object] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(features entering the classifier, float32; logits as log-probabilities). Log-probabilities are
    the logits less a constant per image, so softmax(log p / T) is exactly temperature scaling."""
    from ..data.pipeline import make_inference_dataset
    from ..evaluation import inference_batch_size

    extractor = feature_model(run.model)
    features, logits = [], []
    for start in range(0, len(images), PROGRESS_EVERY):
        part = images[start:start + PROGRESS_EVERY]
        dataset = make_inference_dataset(part, inference_batch_size(run.input_size), run.input_size)
        batch_features, probs = extractor.predict(dataset, verbose=0)
        features.append(np.asarray(batch_features, np.float32))
        logits.append(np.log(np.maximum(np.asarray(probs, np.float32), TINY)))
        if progress:
            progress(start + len(part))
    return np.concatenate(features), np.concatenate(logits)
