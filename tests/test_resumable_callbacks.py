"""Early stopping and plateau counters, and the best weights, survive a resume."""
import keras
import numpy as np

from cifar_core.training.callbacks import ResumableEarlyStopping, ResumablePlateau


def tiny_model(learning_rate=0.1):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def rows(*val_losses):
    return [{"epoch": i + 1, "stage": "train", "val_loss": v} for i, v in enumerate(val_losses)]


def test_plateau_counter_continues_and_replay_keeps_the_learning_rate():
    model = tiny_model(0.1)
    callback = ResumablePlateau(rows(1.0, 0.9, 0.95, 0.96, 0.97), monitor="val_loss", factor=0.5, patience=3)
    callback.set_model(model)
    callback.on_train_begin()
    assert callback.best == 0.9 and callback.wait == 0  # patience ran out at epoch 5 (reduction already done)
    assert float(model.optimizer.learning_rate) == np.float32(0.1)  # the replay did not reduce it again
    for epoch, value in ((5, 0.98), (6, 0.99)):
        callback.on_epoch_end(epoch, {"val_loss": value})
    assert float(model.optimizer.learning_rate) == np.float32(0.1)
    callback.on_epoch_end(7, {"val_loss": 1.0})  # third epoch without improvement since the last cut
    assert float(model.optimizer.learning_rate) == np.float32(0.05)


def test_early_stopping_resumes_with_its_patience_and_ends_on_the_best_epoch(tmp_path):
    model = tiny_model()
    first = ResumableEarlyStopping(tmp_path, [], monitor="val_loss", patience=2)
    first.set_model(model)
    first.on_train_begin()
    best = [w + 1.0 for w in model.get_weights()]
    model.set_weights(best)
    first.on_epoch_end(0, {"val_loss": 1.0})
    model.set_weights([w + 1.0 for w in best])
    first.on_epoch_end(1, {"val_loss": 1.5})  # worse: not saved
    assert (tmp_path / "checkpoint" / "best-weights.npz").is_file()

    # A new process resumes after epoch 2 with different weights in memory.
    model = tiny_model()
    resumed = ResumableEarlyStopping(tmp_path, rows(1.0, 1.5), monitor="val_loss", patience=2)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.wait == 1 and resumed.best_epoch == 0 and not model.stop_training
    resumed.on_epoch_end(2, {"val_loss": 1.2})  # second epoch without improvement: stop
    assert model.stop_training
    resumed.on_train_end()
    for restored, expected in zip(model.get_weights(), best, strict=True):
        np.testing.assert_allclose(restored, expected)


def test_a_stale_best_weights_file_is_not_restored(tmp_path):
    model = tiny_model()
    first = ResumableEarlyStopping(tmp_path, [], monitor="val_loss", patience=5)
    first.set_model(model)
    first.on_train_begin()
    first.on_epoch_end(0, {"val_loss": 1.0})
    # History says epoch 2 was best, but the process died before saving its weights.
    resumed = ResumableEarlyStopping(tmp_path, rows(1.0, 0.5), monitor="val_loss", patience=5)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.best == 0.5 and resumed.best_weights is None
