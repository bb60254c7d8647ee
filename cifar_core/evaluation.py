"""Predict, test-time augmentation and metrics: numpy in, numpy out."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPSILON = 1e-7
# Pixels per inference batch: 256 images at 64 px. Large inputs get smaller
# batches so a 224 px model's activations stay well under a gigabyte.
PREDICT_PIXEL_BUDGET = 256 * 64 * 64


def inference_batch_size(input_size: int | None) -> int:
    size = input_size or 32
    return max(8, min(256, PREDICT_PIXEL_BUDGET // (size * size)))


def predict_proba(model, images: np.ndarray, batch_size: int | None = None, tta: bool = False,
                  input_size: int | None = None, callbacks: list | None = None) -> np.ndarray:
    """Class probabilities for uint8 images; `tta` averages with the mirror image."""
    predict = model_predictor(model, batch_size or inference_batch_size(input_size), input_size, callbacks)
    return flip_tta(predict, images)[1] if tta else predict(images)


def model_predictor(model, batch_size: int, input_size: int | None,
                    callbacks: list | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """images -> float32 probabilities, through the same tf.data pipeline as training."""
    from .data.pipeline import make_inference_dataset

    def predict(images: np.ndarray) -> np.ndarray:
        dataset = make_inference_dataset(images, batch_size, input_size)
        return model.predict(dataset, verbose=0, callbacks=callbacks).astype(np.float32)

    return predict


def mirror(images: np.ndarray) -> np.ndarray:
    """Left-right mirror of NHWC images (the flip the training augmentation uses)."""
    return images[:, :, ::-1, :]


def flip_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(plain probabilities, flip-TTA probabilities: the mean over the image and its mirror)."""
    probs = predict(images)
    return probs, (probs + predict(mirror(images))) / 2


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at EPSILON)."""
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.maximum(picked, EPSILON))))


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class; a class never predicted has precision 0."""
    from sklearn.metrics import precision_recall_fscore_support  # 1 s to import: only where needed

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(class_names)), zero_division=0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(class_names)}


def top_k(probs: np.ndarray, class_names, k: int = 3) -> list[list[tuple[str, float]]]:
    """The k most likely classes per row, most likely first."""
    order = np.argsort(-probs)[:, :k]
    return [[(class_names[j], float(probs[i, j])) for j in order[i]] for i in range(len(probs))]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows the true classes and columns the predicted ones (every class, even unseen).

    numpy's bincount, not sklearn's confusion_matrix: the same counts (a test pins it), without
    the second sklearn costs to import in the dashboard process."""
    cells = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, class_names,
                    probs_tta: np.ndarray | None = None) -> dict:
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    metrics = {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        "test_loss": cross_entropy(y_true, probs),
        "n_test": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": per_class_report(y_true, y_pred, class_names),
        "confusion_matrix": matrix.tolist(),
    }
    if probs_tta is not None:
        metrics["test_accuracy_tta"] = float(np.mean(probs_tta.argmax(axis=1) == y_true))
        metrics["test_loss_tta"] = cross_entropy(y_true, probs_tta)
    return metrics


def measure_on_test(model, images: np.ndarray, labels: np.ndarray, class_names, input_size: int | None,
                    tta: bool, callbacks: list | None = None) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Test metrics plus the probabilities behind them; the plain pass is reused for TTA."""
    predict = model_predictor(model, inference_batch_size(input_size), input_size, callbacks)
    probs, probs_tta = flip_tta(predict, images) if tta else (predict(images), None)
    return compute_metrics(labels, probs, class_names, probs_tta), probs, probs_tta
