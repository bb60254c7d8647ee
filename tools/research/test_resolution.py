"""A transfer run's test accuracy at other input sizes than it was trained at (the FixRes question:
does a net fine-tuned at a small size do better when tested larger?). The run's weights go into
the same architecture built at each size; every layer is convolutional up to the pooling.

    python -m tools.research.test_resolution artifacts/runs/lite0-128-cifar10 \
        ../shared/datasets/cifar10-jpg.tar.gz 128,144,160,192 [first N test images]
"""
import sys
import time

import numpy as np

from cifar_core import backend
from cifar_core.data import load_dataset
from cifar_core.evaluation import inference_batch_size, model_predictor
from cifar_core.inference import load_run_model
from cifar_core.models import build_model


def main(run_dir: str, source: str, sizes: list[int], n_images: int | None = None) -> None:
    backend.configure()
    run = load_run_model(run_dir)
    dataset = load_dataset(source)
    images, labels = dataset.x_test[:n_images], dataset.y_test[:n_images]
    print(f"{run_dir} (trained at {run.input_size} px), {len(labels)} test images, {backend.cpu_name()}")
    for size in sizes:
        model = build_model(run.config.model, size, len(run.class_names), weights=None,
                            **run.config.model_options)
        model.set_weights(run.model.get_weights())
        started = time.perf_counter()
        probs = model_predictor(model, inference_batch_size(size), size)(images)
        print(f"{size:4d} px: {np.mean(probs.argmax(axis=1) == labels):.2%} ({time.perf_counter() - started:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")],
         int(sys.argv[4]) if len(sys.argv) > 4 else None)
