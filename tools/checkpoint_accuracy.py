"""Test accuracy of an unfinished run: its checkpoint, with the early-stopping best weights if saved.

    python -m tools.checkpoint_accuracy artifacts/runs/<id> [--data SOURCE]

A run that was stopped before its end has no model.keras or metrics.json; this
measures what it would have shipped had it stopped now. Nothing is written.
"""
import argparse
import sys
from pathlib import Path

from cifar_core import runs
from cifar_core.config import TrainConfig
from cifar_core.data import load_dataset
from cifar_core.errors import CifarError, RunFolderError
from cifar_core.evaluation import measure_on_test
from cifar_core.training import checkpoint
from cifar_core.training.callbacks import BEST_WEIGHTS_NAME, read_best_weights


def checkpoint_accuracy(run_dir: Path, dataset, tta: bool = True) -> tuple[str, dict]:
    """(which weights were measured, measure_on_test's figures) for an unfinished run."""
    state = checkpoint.load_state(run_dir)
    if state is None:
        raise RunFolderError(f"{run_dir} has no usable checkpoint")
    model = checkpoint.load_model(run_dir, state)
    weights_from = f"epoch {state['epochs_completed']} (last checkpoint)"
    best = read_best_weights(checkpoint.checkpoint_dir(run_dir) / BEST_WEIGHTS_NAME, model)
    if best is not None:
        epoch, weights = best
        model.set_weights(weights)
        weights_from = f"epoch {epoch + 1} (early-stopping best)"
    measured, *_ = measure_on_test(model, dataset.x_test, dataset.y_test, dataset.class_names,
                                   model.input_shape[1], tta)
    return weights_from, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", help="data source (default: the run's own)")
    args = parser.parse_args()
    try:
        config = TrainConfig.from_json((args.run_dir / runs.CONFIG_FILE).read_text())
        dataset = load_dataset(args.data or config.data)
        weights_from, measured = checkpoint_accuracy(args.run_dir, dataset, config.tta)
    except (OSError, CifarError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.run_dir.name}: weights of {weights_from}, {dataset.description}")
    line = f"test accuracy {measured['test_accuracy']:.2%}"
    if "test_accuracy_tta" in measured:
        line += f", with flip TTA {measured['test_accuracy_tta']:.2%}"
    print(line)

if __name__ == "__main__":
    main()
