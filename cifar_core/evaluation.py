"""Predict, test-time augmentation and metrics: numpy in, numpy out."""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7
# Pixels per inference batch: 256 images at 64 px. Large inputs get smaller
# batches so a 224 px model's activations stay well under a gigabyte.
PREDICT_PIXEL_BUDGET = 256 * 64 * 64


def inference_batch_size(image_size: int | None) -> int:
    size = image_size or 32
    return int(max(8, min(256, PREDICT_PIXEL_BUDGET // (size * size))))


def predict_proba(model, images: np.ndarray, batch_size: int | None = None, tta: bool = False,
                  image_size: int | None = None, callbacks: list | None = None) -> np.ndarray:
    """Class probabilities for uint8 images; `tta` averages with the mirror image."""
    from .data.pipeline import make_dataset

    batch_size = batch_size or inference_batch_size(image_size)
    def run(batch_images):
        dataset = make_dataset(batch_images, np.zeros(len(batch_images), np.int32), n_classes=1,
                               batch_size=batch_size, image_size=image_size, one_hot=False)
        return model.predict(dataset.map(lambda x, y: x), verbose=0, callbacks=callbacks)

    probs = run(images)
    if tta:
        probs = (probs + run(images[:, :, ::-1, :])) / 2
    return np.asarray(probs, dtype=np.float32)


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def per_class_report(matrix: np.ndarray, class_names) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (as scikit-learn reports them)."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(class_names)}


def top_k(probs: np.ndarray, class_names, k: int = 3) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(class_names[j], float(row[j])) for j in indices] for row, indices in zip(probs, order)]


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, class_names,
                    probs_tta: np.ndarray | None = None) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    metrics = {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        "test_loss": cross_entropy(y_true, probs),
        "n_test": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": per_class_report(matrix, class_names),
        "confusion_matrix": matrix.tolist(),
    }
    if probs_tta is not None:
        metrics["test_accuracy_tta"] = float(np.mean(probs_tta.argmax(axis=1) == y_true))
        metrics["test_loss_tta"] = cross_entropy(y_true, probs_tta)
    return metrics


def measure_on_test(model, images: np.ndarray, labels: np.ndarray, class_names, image_size: int | None,
                    tta: bool, callbacks: list | None = None) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Test metrics plus the probabilities behind them; the plain pass is reused for TTA."""
    probs = predict_proba(model, images, image_size=image_size, callbacks=callbacks)
    probs_tta = None
    if tta:
        mirrored = predict_proba(model, images[:, :, ::-1, :], image_size=image_size, callbacks=callbacks)
        probs_tta = (probs + mirrored) / 2
    return compute_metrics(labels, probs, class_names, probs_tta), probs, probs_tta
