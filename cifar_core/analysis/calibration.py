"""How far to trust a probability: temperature scaling, expected calibration error, NLL, Brier.

Numpy and scipy only. The temperature is fitted on held-out data the caller chooses
(the run's validation split, or training images the run never trained on); the
test split only measures.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    picked = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probability vector and the one-hot truth (summed over classes)."""
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Top-label reliability: per equal-width confidence bin, its count, mean confidence and accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        members = index == i
        count = int(members.sum())
        bins.append({"lower": i / n_bins, "upper": (i + 1) / n_bins, "count": count,
                     "confidence": float(confidence[members].mean()) if count else None,
                     "accuracy": float(correct[members].mean()) if count else None})
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence| (Guo et al., 2017)."""
    total = len(labels)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, n_bins) if b["count"]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (one scalar, bounded search)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda t: nll(softmax(logits, t), labels), bounds=TEMPERATURE_BOUNDS,
                             method="bounded", options={"xatol": 1e-4})
    return float(result.x)


def calibration_report(fit_logits, fit_labels, test_logits, test_labels, fitted_on: str) -> dict:
    """calibration.json's fields: the temperature, where it was fitted, and test metrics before/after."""
    temperature = fit_temperature(fit_logits, fit_labels)
    before, after = softmax(test_logits), softmax(test_logits, temperature)
    return {"temperature": temperature, "fitted_on": fitted_on, "n_fit": int(len(fit_labels)),
            "n_test": int(len(test_labels)), "bins_count": ECE_BINS,
            "ece_before": expected_calibration_error(before, test_labels),
            "ece_after": expected_calibration_error(after, test_labels),
            "nll_before": nll(before, test_labels), "nll_after": nll(after, test_labels),
            "brier_before": brier(before, test_labels), "brier_after": brier(after, test_labels),
            "bins": {"before": reliability_bins(before, test_labels), "after": reliability_bins(after, test_labels)}}
