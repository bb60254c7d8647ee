"""Data: sources, safe loaders, cache, splits and tf.data pipelines."""
from .sources import CIFAR10_CLASSES, Dataset, default_source, load_dataset

__all__ = ["CIFAR10_CLASSES", "Dataset", "default_source", "load_dataset"]
