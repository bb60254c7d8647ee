"""What a transfer model's fine-tuning step costs on this machine, one change at a time: the layers
trained, the batch, XLA. Full training steps through the augmentation pipeline (bench's timing),
random weights and images (the cost is the same).

    python -m tools.research.transfer_step [model] [size] [steps]
"""
import sys

from cifar_core import backend, bench
from cifar_core.config import recipe_config


def main(model: str = "lite0", size: int = 224, steps: int = 10) -> None:
    backend.configure()
    base = recipe_config(model, input_size=size, fine_tune_layers=1000)
    variants = {"every layer, batch 32 (the old recipe)": (base, False),
                "top 40 layers": (base.replace(fine_tune_layers=40), False),
                "top 40 layers, batch 64": (base.replace(fine_tune_layers=40, batch_size=64), False),
                "every layer, XLA": (base, True)}
    print(f"{model} at {size} px, {steps} steps each, {backend.cpu_name()}")
    for name, (config, jit) in variants.items():
        rate = bench.time_fine_tune(config, size, steps if not jit else 2, jit=jit)
        print(f"{name}: {rate:.1f} images/s", flush=True)


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["lite0"]), *[int(a) for a in sys.argv[2:4]])
