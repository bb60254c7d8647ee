"""The analyses themselves: one model load, one dataset load, features computed once per split."""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import RunFolderError
from . import FILES, NEIGHBOURS_FILE, analysis_path, files

ROBUSTNESS_SUBSET = 2000
ROBUSTNESS_SEED = 0
FGSM_EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)  # in units of the 0-1 pixel range
MAX_CALIBRATION_IMAGES = 5000
NEIGHBOUR_DIMENSIONS = 64  # training features kept after PCA: 50k x 64 float16 is 6 MB per run
EMBEDDING_PCA_DIMENSIONS = 50
LABEL_ISSUES_KEPT = 500


class AnalysisContext:
    def __init__(self, run_dir: Path, fingerprint: str, source: str | None, progress: Callable[[str], object]):
        self.run_dir, self.fingerprint, self.source, self.progress = run_dir, fingerprint, source, progress

    def run(self, name: str) -> None:
        started = time.perf_counter()
        self.progress(f"{name}: computing…")
        {"embedding": self.embedding, "calibration": self.calibration, "robustness": self.robustness,
         "labels": self.labels}[name]()
        self.progress(f"{name}: done in {time.perf_counter() - started:.1f} s → {analysis_path(self.run_dir, name)}")

    # --- shared inputs -------------------------------------------------------------------------

    @cached_property
    def loaded(self):
        from ..inference import load_run_model

        return load_run_model(self.run_dir)

    @cached_property
    def dataset(self):
        from ..data import load_dataset

        dataset = load_dataset(self.source or self.loaded.config.data, image_size=self.loaded.data_image_size)
        if tuple(dataset.class_names) != self.loaded.class_names:
            raise RunFolderError(f"the data's classes {list(dataset.class_names)} differ from the model's")
        return dataset

    def features(self, images: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features, logits) of images, in batches, with a progress line."""
        from .features import features_and_logits

        return features_and_logits(self.loaded, images, lambda done: self.progress(
            f"  {what}: {done:,}/{len(images):,} images"))

    @cached_property
    def test_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features(self.dataset.x_test, "test features")

    # --- the analyses --------------------------------------------------------------------------

    def embedding(self) -> None:
        from .embedding import neighbour_index, project_2d

        test_features, test_logits = self.test_outputs
        coords = project_2d(test_features, EMBEDDING_PCA_DIMENSIONS)
        files.write_npz(analysis_path(self.run_dir, "embedding"), {
            "coords": coords.astype(np.float32), "indices": np.arange(len(coords), dtype=np.int32),
            "labels": self.dataset.y_test.astype(np.int16), "predictions": test_logits.argmax(1).astype(np.int16),
        }, self.fingerprint)
        train_features, _ = self.features(self.dataset.x_train, "training features (nearest neighbours)")
        files.write_npz(self.run_dir / "analysis" / NEIGHBOURS_FILE,
                        neighbour_index(train_features, self.dataset.y_train, NEIGHBOUR_DIMENSIONS), self.fingerprint)

    def calibration(self) -> None:
        from .calibration import calibration_report

        indices, fitted_on = self.held_out()
        fit_features, fit_logits = self.features(self.dataset.x_train[indices], "held-out features")
        del fit_features
        _, test_logits = self.test_outputs
        report = calibration_report(fit_logits, self.dataset.y_train[indices], test_logits, self.dataset.y_test,
                                    fitted_on)
        files.write_json(analysis_path(self.run_dir, "calibration"), report, self.fingerprint)

    def held_out(self) -> tuple[np.ndarray, str]:
        """Training-split images to fit the temperature on: the run's validation split, else images its
        limit left out, else (no held-out data at all) a seeded slice of what it trained on, said so."""
        from ..data.pipeline import split_train_val

        config = self.loaded.config
        train, val = split_train_val(self.dataset.y_train, config.val_fraction, config.random_state, config.limit)
        rng = np.random.default_rng(ROBUSTNESS_SEED)
        unused = np.setdiff1d(np.arange(len(self.dataset.y_train)), np.concatenate([train, val]))
        for pool, what in ((val, "the run's validation split"), (unused, "training images the run never trained on"),
                           (train, "training images the run trained on (it kept none out)")):
            if len(pool):
                chosen = np.sort(rng.choice(pool, min(len(pool), MAX_CALIBRATION_IMAGES), replace=False))
                return chosen, f"{what}: {len(chosen):,} images"
        raise RunFolderError("no training images to fit a temperature on")

    def robustness(self) -> None:
        from .robustness import measure_robustness

        report = measure_robustness(self.loaded, self.dataset.x_test, self.dataset.y_test, ROBUSTNESS_SUBSET,
                                    ROBUSTNESS_SEED, FGSM_EPSILONS, self.progress)
        files.write_json(analysis_path(self.run_dir, "robustness"), report, self.fingerprint)

    def labels(self) -> None:
        from .labels import rank_label_issues

        predictions = runs.read_predictions(self.run_dir)  # the run's own out-of-sample test probabilities
        issues = rank_label_issues(predictions["y_true"].astype(int), predictions["probs"].astype(np.float32),
                                   LABEL_ISSUES_KEPT)
        files.write_json(analysis_path(self.run_dir, "labels"), issues, self.fingerprint)


__all__ = ["AnalysisContext", "FILES"]
