"""Build every homebrew model and Lite0 and take one training step on the current
Keras backend. Run by tests/test_models.py under each installed backend:

    KERAS_BACKEND=jax python tests/backend_smoke.py
"""

import keras
import numpy as np

from cifar_core.models import build_model
from cifar_core.models.homebrew import init_whitening
from cifar_core.training.schedules import OneCycle


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = keras.ops.one_hot(np.arange(8) % 10, 10)
    for name, options in (("g3", {}), ("fastnet", {}), ("demo", {}), ("lite0", {"weights": None})):
        model = build_model(name, 32, **options)
        if name == "fastnet":
            init_whitening(model, images.astype(np.uint8))
        model.compile(optimizer=keras.optimizers.SGD(OneCycle(0.1, 10), momentum=0.9, nesterov=True),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
        loss = float(model.train_on_batch(images, labels))
        assert np.isfinite(loss), (name, loss)
        print(f"{keras.backend.backend()} {name}: one step, loss {loss:.3f}")


if __name__ == "__main__":
    main()
