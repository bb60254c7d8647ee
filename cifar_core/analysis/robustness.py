"""Accuracy under corruption (CIFAR-10-C-style, 5 severities) and FGSM, on a seeded test subset."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt


def subset_indices(n_images: int, size: int, seed: int) -> np.ndarray:
    """The same seeded test subset for every model."""
    return np.sort(np.random.default_rng(seed).choice(n_images, min(size, n_images), replace=False))


class Probe:
    """A loaded run's predictions and input gradients in batches, one compiled path for every measurement
    (so FGSM at epsilon 0 is exactly the clean accuracy)."""

    def __init__(self, run):
        import tensorflow as tf

        from ..data.pipeline import resize_for_model
        from ..evaluation import inference_batch_size

        self.batch = inference_batch_size(run.input_size)
        needs_resize = run.input_size != run.data_image_size
        model = run.model

        def model_input(x):
            return resize_for_model(x, run.input_size) if needs_resize else x

        @tf.function(reduce_retracing=True)
        def predict(x):
            return tf.argmax(model(model_input(x), training=False), axis=1)

        @tf.function(reduce_retracing=True)
        def loss_gradient(x, labels):
            with tf.GradientTape() as tape:
                tape.watch(x)
                probs = tf.cast(model(model_input(x), training=False), tf.float32)
                loss = tf.keras.losses.sparse_categorical_crossentropy(labels, probs)
            return tape.gradient(loss, x)

        self._predict, self._gradient = predict, loss_gradient

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        predicted = np.concatenate([self._predict(np.asarray(images[i:i + self.batch], np.float32)).numpy()
                                    for i in range(0, len(images), self.batch)])
        return float(np.mean(predicted == labels))

    def fgsm(self, images: np.ndarray, labels: np.ndarray, epsilon: float) -> np.ndarray:
        """Fast gradient sign images (Goodfellow et al., 2015): one step of epsilon (0-1 pixel units)
        up the loss's gradient, clipped to valid pixels."""
        out = []
        for i in range(0, len(images), self.batch):
            x = np.asarray(images[i:i + self.batch], np.float32)
            gradient = self._gradient(x, labels[i:i + self.batch]).numpy()
            out.append(np.clip(x + epsilon * 255.0 * np.sign(gradient), 0.0, 255.0))
        return np.concatenate(out)


def measure_robustness(run, x_test: np.ndarray, y_test: np.ndarray, subset: int, seed: int,
                       epsilons: tuple[float, ...], progress: Callable[[str], object] = print) -> dict:
    """robustness.json's fields."""
    chosen = subset_indices(len(y_test), subset, seed)
    images, labels = x_test[chosen], y_test[chosen].astype(np.int64)
    probe = Probe(run)
    report = {"subset_size": int(len(chosen)), "subset_seed": seed, "clean_accuracy": probe.accuracy(images, labels),
              "severities": list(SEVERITIES), "corruptions": {}, "fgsm": []}
    for name in CORRUPTIONS:
        report["corruptions"][name] = [probe.accuracy(corrupt(images, name, s, seed), labels) for s in SEVERITIES]
        progress(f"  {name}: " + ", ".join(f"{a:.1%}" for a in report["corruptions"][name]))
    for epsilon in epsilons:
        report["fgsm"].append({"epsilon": epsilon,
                               "accuracy": probe.accuracy(probe.fgsm(images, labels, epsilon), labels)})
    progress("  fgsm: " + ", ".join(f"{r['epsilon'] * 255:.0f}/255 {r['accuracy']:.1%}" for r in report["fgsm"]))
    report["mean_corruption_accuracy"] = float(np.mean([a for accs in report["corruptions"].values() for a in accs]))
    return report
