"""FilterMuon: orthogonalised steps for conv kernels, plain Nesterov SGD for the rest."""
import keras
import numpy as np
import pytest

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.training import resume, train
from cifar_core.training.optimizers import FilterMuon, orthogonalise


@pytest.mark.parametrize("shape", [(576, 64), (64, 576), (40, 40)])
def test_orthogonalise_flattens_the_spectrum(shape):
    rng = np.random.default_rng(0)
    # Singular values spread over two orders of magnitude, as a momentum buffer's are.
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
    k = min(shape)
    matrix = (u[:, :k] * np.logspace(0, 2, k)) @ v[:, :k].T
    result = np.asarray(orthogonalise(keras.ops.convert_to_tensor(matrix.astype("float32"))))
    assert result.shape == shape
    singular = np.linalg.svd(result, compute_uv=False)
    # The quintic iteration lands every direction in a band around 1, not exactly on it.
    assert singular.min() > 0.6 and singular.max() < 1.25
    # And it keeps the singular vectors: the result is aligned with U V^T.
    polar = u[:, :k] @ v[:, :k].T
    assert np.sum(result * polar) / (np.linalg.norm(result) * np.linalg.norm(polar)) > 0.95


def _conv_net():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, use_bias=False, name="head")(x)
    return keras.Model(inputs, outputs)


def test_one_step_moves_kernels_by_the_muon_rate_and_the_rest_by_sgd():
    lr, scale, momentum, decay = 0.1, 0.5, 0.9, 0.01
    model = _conv_net()
    conv = model.get_layer("conv").kernel
    head = model.get_layer("head").kernel
    conv.assign(conv * 3.0)  # off the norm the optimizer keeps, to see it restored
    conv_before, head_before = conv.numpy(), head.numpy()
    gradients = [np.random.default_rng(i).normal(size=v.shape).astype("float32")
                 for i, v in enumerate(model.trainable_variables)]
    optimizer = FilterMuon(lr, muon_scale=scale, momentum=momentum, sgd_weight_decay=decay)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    # SGD part, first step: the Nesterov direction is g + momentum * g, decay is decoupled.
    head_gradient = gradients[[v.path for v in model.trainable_variables].index(head.path)]
    expected = head_before * (1 - lr * decay) - lr * (1 + momentum) * head_gradient
    np.testing.assert_allclose(head.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Muon part: the kernel was put back to norm sqrt(filters) = 2, then moved by
    # lr * scale relative to it, along the orthogonalised (Nesterov) direction.
    step = conv.numpy() - conv_before * (2.0 / np.linalg.norm(conv_before))
    assert 0.6 * lr * scale < np.linalg.norm(step) / 2.0 < 1.25 * lr * scale
    conv_gradient = gradients[[v.path for v in model.trainable_variables].index(conv.path)]
    orthogonal = np.asarray(orthogonalise(keras.ops.convert_to_tensor(conv_gradient.reshape(-1, 4))))
    np.testing.assert_allclose(step.reshape(-1, 4), -lr * scale * orthogonal, rtol=1e-4, atol=1e-6)


def test_muon_run_learns_and_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    config = recipe_config("fastnet", optimizer="muon", n_epochs=3, batch_size=30, precision="float32",
                           val_fraction=0.0)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, tiny_dataset, verbose=0, callbacks=[StopAfterFirstEpoch()])
    resume(run_dir, tiny_dataset, verbose=0)  # the checkpoint reloads its FilterMuon state
    history = runs.read_history(run_dir)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert runs.read_json(run_dir / runs.METRICS_FILE)["test_accuracy"] > 0.2  # 10 classes: chance is 0.1
