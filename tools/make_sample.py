"""Write the small test-split sample the dashboard shows when no dataset is at hand.

    python -m tools.make_sample ../shared/datasets/cifar10-jpg.tar.gz
"""
import sys

import numpy as np

from cifar_core.data import load_dataset
from cifar_core.data.sources import SAMPLE_FILE

PER_CLASS = 10


def main(source: str) -> None:
    dataset = load_dataset(source)
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(np.flatnonzero(dataset.y_test == c), PER_CLASS, replace=False)
                            for c in range(len(dataset.class_names))])
    SAMPLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAMPLE_FILE, images=dataset.x_test[picks], labels=dataset.y_test[picks],
                        test_indices=picks, class_names=np.array(dataset.class_names))
    print(f"wrote {len(picks)} images to {SAMPLE_FILE}")


if __name__ == "__main__":
    main(sys.argv[1])
