"""The embedding map (PCA, then t-SNE) and the nearest training images of a photo (cosine)."""
from __future__ import annotations

import numpy as np

TSNE_SEED = 0
# The points an embedding map draws by default: a browser without a GPU draws WebGL in software,
# and two maps of 10,000 points took it 2-2.4 s (BENCHMARKS.md, stage latency budget).
MAP_SAMPLE = 3000


def map_sample(n: int, size: int = MAP_SAMPLE) -> np.ndarray:
    """Sorted positions of the points a map draws: all of them up to `size`, else the same seeded
    `size` of them on every map, so a region selected on one map holds the same images on the other."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(TSNE_SEED).permutation(n)[:size])


def project_2d(features: np.ndarray, pca_dimensions: int = 50) -> np.ndarray:
    """2-D coordinates: PCA to `pca_dimensions` (t-SNE's usual first step), then scikit-learn's t-SNE."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    dimensions = min(pca_dimensions, features.shape[1], len(features))
    reduced = PCA(dimensions, random_state=TSNE_SEED).fit_transform(features)
    return TSNE(2, perplexity=tsne_perplexity(len(features)), init="pca",
                random_state=TSNE_SEED).fit_transform(reduced)


def tsne_perplexity(n_points: int) -> float:
    """scikit-learn's default 30, lowered for small maps: t-SNE needs it below the number of points
    (a third of them keeps each point's neighbourhood a minority), and at least 2."""
    return min(30.0, max(2.0, (n_points - 1) / 3))


def neighbour_index(features: np.ndarray, labels: np.ndarray, dimensions: int) -> dict[str, np.ndarray]:
    """The training images' features for cosine search: PCA to `dimensions`, unit length, float16
    (a photo's features go through the same mean and components before the search)."""
    from sklearn.decomposition import PCA

    pca = PCA(min(dimensions, features.shape[1], len(features)), random_state=TSNE_SEED).fit(features)
    return {"mean": pca.mean_.astype(np.float32), "components": pca.components_.astype(np.float32),
            "features": _unit(pca.transform(features)).astype(np.float16), "labels": labels.astype(np.int16)}


def nearest(index: dict[str, np.ndarray], query: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, cosine similarities) of the k nearest training images to each query row."""
    projected = _unit((np.atleast_2d(query) - index["mean"]) @ index["components"].T)
    similarity = projected @ index["features"].astype(np.float32).T
    order = np.argsort(-similarity, axis=1)[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
