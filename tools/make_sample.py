"""Write the small test-split sample the dashboard shows when no dataset is at hand.

    python tools/make_sample.py ../shared/datasets/cifar10-jpg.tar.gz
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar_core.data import load_dataset  # noqa: E402
from cifar_core.data.sources import SAMPLE_FILE  # noqa: E402

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
