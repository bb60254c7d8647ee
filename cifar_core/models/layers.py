"""Training-speed layers, and the conversion that keeps saved models plain Keras.

Keras 3's BatchNormalization on TensorFlow computes moments, normalisation and
their gradients as a dozen separate ops, upcasting bf16 to float32 between them.
TensorFlow's FusedBatchNormV3 does the same in one kernel each way, reading bf16
activations directly (oneDNN's batch-norm primitive on CPU). Measured on a fastnet
training step it is the largest single cost after the convolutions (BENCHMARKS.md,
"Where the training step goes").

The exact GELU (erf) is likewise several kernels per bf16 step; `TanhGelu` trains with its tanh
approximation (within 1e-3 of it everywhere).

Saved run models never contain these classes: `to_stock_layers` swaps them for Keras' own
BatchNormalization and exact GELU (same weights; the same arithmetic at inference, or within 1e-3
for GELU; runs are measured on the saved form) so that the safe loader, exports and other people's
scripts see only built-in layers.
"""
from __future__ import annotations

import contextlib

import keras

# FusedBatchNormV3 refuses a smaller epsilon; a layer asking for less keeps Keras' path.
FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="cifar_core")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose 4-D channels-last case runs TensorFlow's fused kernel.

    Every other case (another backend, a mask, renorm, another axis or rank, an
    epsilon below the fused kernel's floor, no scale or centre) is Keras' own code.
    The moving statistics follow Keras' rule, with the biased batch variance.
    """

    def add_weight(self, *args, name=None, aggregation="none", **kwargs):
        # The moving statistics are assigned inside each replica's step under tf.distribute
        # (training/distributed.py); "mean" makes that legal and averages them over replicas.
        if name in ("moving_mean", "moving_variance") and aggregation == "none":
            aggregation = "mean"
        return super().add_weight(*args, name=name, aggregation=aggregation, **kwargs)

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and not self.renorm and self.scale and self.center
                and self.epsilon >= FUSED_MIN_EPSILON)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        fused = tf.compat.v1.nn.fused_batch_norm
        if training and self.trainable:
            outputs, mean, variance = fused(inputs, self.gamma, self.beta, epsilon=self.epsilon,
                                            is_training=True)[:3]
            # The kernel reports the unbiased variance (n - 1); Keras' layer keeps the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), variance.dtype)
            variance = variance * (n - 1.0) / tf.maximum(n, 2.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return outputs
        return fused(inputs, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                     epsilon=self.epsilon, is_training=False)[0]


@keras.saving.register_keras_serializable(package="cifar_core")
class TanhGelu(keras.layers.Layer):
    """GELU by its tanh approximation while training: the exact GELU (erf) costs a bf16 training
    step several separate kernels on TensorFlow, the tanh form fewer. The two differ by less than
    1e-3 anywhere; `to_stock_layers` saves the layer as Keras' exact `Activation("gelu")`, and the
    run is measured on that saved form."""

    def call(self, inputs):
        return keras.activations.gelu(inputs, approximate=True)

    def compute_output_shape(self, input_shape):
        return input_shape


_fused = [True]


def batch_norm(**kwargs) -> keras.layers.BatchNormalization:
    """The BatchNormalization to build training models with (fused where it can be)."""
    return (FusedBatchNormalization if _fused[0] else keras.layers.BatchNormalization)(**kwargs)


@contextlib.contextmanager
def stock_batchnorm():
    """Models built inside use Keras' own BatchNormalization (bench's "previous" row)."""
    _fused[0] = False
    try:
        yield
    finally:
        _fused[0] = True


def to_stock_layers(model: keras.Model) -> keras.Model:
    """A copy of `model` with every FusedBatchNormalization as Keras' BatchNormalization and every
    TanhGelu as Keras' exact GELU, weights included; the model itself if it has neither."""
    if not any(isinstance(layer, (FusedBatchNormalization, TanhGelu)) for layer in _all_layers(model)):
        return model

    def stock(layer):
        config = layer.get_config()
        if isinstance(layer, TanhGelu):
            return keras.layers.Activation("gelu", name=config["name"], dtype=config.get("dtype"))
        kind = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return kind.from_config(config)

    copy = keras.models.clone_model(model, clone_function=stock)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
