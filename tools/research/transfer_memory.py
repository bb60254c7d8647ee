"""Peak memory of a transfer run at a given input size (default 224), on the full
dataset in memory but a small training subset and test slice so it takes minutes.

    python -m tools.research.transfer_memory ../shared/datasets/cifar10-jpg.tar.gz 224 [batch size]
"""
import sys
import tempfile
from pathlib import Path

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.data import load_dataset
from cifar_core.training import train


def main(source: str, size: int, batch_size: int | None = None) -> None:
    dataset = load_dataset(source)  # all 60,000 images stay in memory, as in a real run
    dataset.x_test, dataset.y_test = dataset.x_test[:512], dataset.y_test[:512]
    config = recipe_config("lite0", data=source, input_size=size, limit=1024, n_epochs=2, fine_tune_epochs=1,
                           batch_size=batch_size)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = train(config, Path(folder) / "run", dataset, verbose=0)
        metrics = runs.read_json(run_dir / runs.METRICS_FILE)
    print(f"lite0 at {size}x{size}, batch {config.batch_size}: peak resident memory "
          f"{metrics['peak_memory_mb']:.0f} MB")


if __name__ == "__main__":
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    main(sys.argv[1], size, int(sys.argv[3]) if len(sys.argv) > 3 else None)
