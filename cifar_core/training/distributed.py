"""`train --distribute {none,mirrored,multi-worker}`: tf.distribute in a custom training step.

`mirrored` is `tf.distribute.MirroredStrategy` over the local devices (every GPU where there
are any); `multi-worker` is `tf.distribute.MultiWorkerMirroredStrategy`, configured by the
standard `TF_CONFIG` environment variable. Keras' `fit` fails under MultiWorkerMirroredStrategy
with Keras 3 on TensorFlow 2.16+ (keras-team/keras#20585, open; MACHINE-NOTES), so the epochs run
in a custom step: model and optimizer made under `strategy.scope()`, the dataset distributed by
the strategy, the loss averaged over the *global* batch (`tf.nn.compute_average_loss`), and
`strategy.run` + `strategy.reduce`. The config's batch size is the global batch and its learning
rate is used as given (no implicit scaling with the number of workers); both are in config.json.

The chief (task "chief", or worker 0 when the cluster has no chief) writes the run folder; every
other worker writes its checkpoints into a scratch folder of its own that is removed when it
ends, and reads the chief's checkpoint to resume, so all workers resume from the same epoch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import runs
from ..config import TrainConfig
from ..errors import ConfigError

MAX_TF_CONFIG_BYTES = 64 * 1024
WORKER_TASKS = ("chief", "worker")


def cluster_task(environ=os.environ) -> tuple[str, int, dict]:
    """(task type, task index, cluster) from TF_CONFIG; ConfigError if it is missing or malformed."""
    text = environ.get("TF_CONFIG", "")
    if not text:
        raise ConfigError("--distribute multi-worker needs TF_CONFIG (the cluster's addresses and this "
                          "worker's task); see README, 'Training on several machines'")
    if len(text) > MAX_TF_CONFIG_BYTES:
        raise ConfigError("TF_CONFIG is too large")
    try:
        parsed = json.loads(text)
        cluster, task = parsed["cluster"], parsed["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
                          '"task": {"type": "worker", "index": 0}}') from None
    if not isinstance(cluster, dict) or kind not in WORKER_TASKS or type(index) is not int \
            or not isinstance(cluster.get(kind), list) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG's task {kind!r} {index!r} is not in its cluster")
    return kind, index, cluster


def is_chief(distribute: str, environ=os.environ) -> bool:
    if distribute != "multi-worker":
        return True
    kind, index, cluster = cluster_task(environ)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def check_config(config: TrainConfig, transfer: bool) -> None:
    """What the custom step does not do, refused before anything starts."""
    if config.distribute == "none":
        return
    problems = []
    if transfer:
        problems.append("transfer models train in stages (use --distribute none)")
    if config.schedule == "plateau" or config.early_stopping_patience:
        problems.append("the plateau schedule and early stopping (use onecycle, cosine or constant, and "
                        "--early-stopping-patience 0)")
    if "altflip" in config.augmentations:
        problems.append("altflip (its per-epoch counter lives in the input pipeline; use flip)")
    if config.class_weights or config.ema_momentum:
        problems.append("class weights and EMA")
    if problems:
        raise ConfigError(f"--distribute {config.distribute} does not support " + "; ".join(problems))


def make_strategy(distribute: str):
    """The tf.distribute strategy; created before any other TensorFlow op of the process."""
    import tensorflow as tf

    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multi-worker":
        cluster_task()  # a clear error before TensorFlow's own
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def scratch_dir(run_dir: Path) -> Path:
    """A non-chief worker's own folder for what it would write (removed when it ends)."""
    return Path(tempfile.mkdtemp(prefix=f"{Path(run_dir).name}-worker-"))


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def fit_distributed(model, config: TrainConfig, context, strategy, completed: int) -> None:
    """Epochs `completed`..`config.n_epochs` in the custom distributed step, recorded per epoch
    and every few seconds by the same RunRecorder as `fit` (history, checkpoint, live curve)."""
    import keras
    import tensorflow as tf

    from .callbacks import RunRecorder

    recorder = RunRecorder(context.run_dir, config.n_epochs, context.steps_per_epoch, context.history,
                           total_epochs=context.total_epochs)
    recorder.set_model(model)
    if not model.optimizer.built:
        with strategy.scope():  # its slots made here, not inside a replica's step
            model.optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing, reduction=None)
    global_batch = config.batch_size
    data = strategy.experimental_distribute_dataset(context.train_data)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(y, probabilities), global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.argmax(probabilities, -1) == tf.argmax(y, -1), tf.float32))
        return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

    @tf.function
    def step(batch):
        loss, correct, seen = strategy.run(replica_step, args=batch)
        total = (strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in (loss, correct, seen))
        return tuple(total)

    # The TensorBoard scalars Keras' callback writes under fit, by the same names.
    board = tf.summary.create_file_writer(str(Path(context.run_dir) / runs.TENSORBOARD_DIR / "train"))
    for epoch in range(completed, config.n_epochs):
        recorder.on_epoch_begin(epoch)
        loss_sum = correct_sum = seen_sum = 0.0
        batches = 0
        for batch_index, batch in enumerate(data):
            loss, correct, seen = (float(value) for value in step(batch))
            batches += 1
            loss_sum, correct_sum, seen_sum = loss_sum + loss, correct_sum + correct, seen_sum + seen
            recorder.on_train_batch_end(batch_index, {"loss": loss_sum / batches,
                                                      "accuracy": correct_sum / max(seen_sum, 1.0)})
        logs = {"loss": loss_sum / max(batches, 1), "accuracy": correct_sum / max(seen_sum, 1.0)}
        recorder.on_epoch_end(epoch, logs)
        with board.as_default():
            for name, value in logs.items():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch)
            tf.summary.scalar("epoch_learning_rate", context.history[-1]["learning_rate"], step=epoch)
        board.flush()


def local_copy(model, config: TrainConfig, size: int, num_classes: int):
    """The trained weights in a model outside the strategy: the chief measures and saves it alone
    (a model made under the strategy would wait for the other workers in every predict)."""
    from ..models import build_model

    copy = build_model(config.model, size, num_classes, config.precision, **config.model_options)
    copy.set_weights(model.get_weights())
    return copy
