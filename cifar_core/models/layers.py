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
import functools

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


# bf16 feature maps of at most this many pixels a side get their kernel gradient from shifted matmuls
# (ShiftedGradConv2D); larger ones, and float32 ones, keep oneDNN's backward-weights kernel, which wins
# there (BENCHMARKS.md: fastnet 1.27x and g3 1.09x from it in bf16; the float32 demo net 0.87x).
SHIFTED_GRAD_MAX_SIDE = 8


def shifted_kernel_gradient(inputs, output_gradient, kernel_size):
    """The kernel gradient of a stride-1 "same" convolution as one matmul per kernel tap: tap
    (i, j) is the input shifted by (i, j), flattened over batch and pixels, times the flattened
    output gradient. On small feature maps this is a few large matmuls where oneDNN's
    backward-weights kernel is slow (BENCHMARKS.md, "Where the training step goes")."""
    import tensorflow as tf

    kh, kw = kernel_size
    height, width, channels = tf.shape(inputs)[1], tf.shape(inputs)[2], inputs.shape[-1]
    padded = tf.pad(inputs, [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]])
    flat_gradient = tf.reshape(output_gradient, (-1, output_gradient.shape[-1]))
    taps = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], (-1, channels)), flat_gradient,
                      transpose_a=True) for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(taps), (kh, kw, channels, output_gradient.shape[-1]))


@keras.saving.register_keras_serializable(package="cifar_core")
class ShiftedGradConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel gradient on small feature maps is `shifted_kernel_gradient`.

    The forward pass and the input gradient are oneDNN's as before; every case the shifted
    form does not cover or does not speed up (another backend, stride, dilation, padding, groups
    or layout, a feature map larger than SHIFTED_GRAD_MAX_SIDE, a compute dtype other than bf16)
    is Keras' own convolution."""

    def _shiftable(self, inputs) -> bool:
        side = max(inputs.shape[1] or 0, inputs.shape[2] or 0)
        return (keras.backend.backend() == "tensorflow" and 0 < side <= SHIFTED_GRAD_MAX_SIDE
                and keras.backend.standardize_dtype(inputs.dtype) == "bfloat16"
                and None not in inputs.shape[1:3] and self.padding == "same"
                and self.data_format == "channels_last" and self.groups == 1
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1))

    def convolution_op(self, inputs, kernel):
        if not self._shiftable(inputs):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        kernel_size = tuple(self.kernel_size)

        @tf.custom_gradient
        def convolve(x, k):
            def gradient(dy):
                dx = tf.nn.conv2d_transpose(dy, k, tf.shape(x), 1, padding="SAME")
                return dx, shifted_kernel_gradient(x, dy, kernel_size)
            return tf.nn.conv2d(x, k, 1, padding="SAME"), gradient

        # A tensor, not the variable: the custom gradient is for the kernel's value as read here.
        return convolve(inputs, tf.cast(kernel, inputs.dtype))


@keras.saving.register_keras_serializable(package="cifar_core")
class TanhGelu(keras.layers.Layer):
    """GELU by its tanh approximation while training: the exact GELU (erf) costs a bf16 training
    step several separate kernels on TensorFlow, the tanh form fewer. The two differ by less than
    1e-3 anywhere; `to_stock_layers` saves the layer as Keras' exact `Activation("gelu")`, and the
    run is measured on that saved form.

    On TensorFlow both passes are each one XLA-compiled loop (`_compiled_tanh_gelu`): as a chain of
    separate bf16 kernels the activation and its gradient read and write the feature map a dozen
    times, about a seventh of a fastnet step."""

    def __init__(self, compiled: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.compiled = bool(compiled)

    def call(self, inputs):
        if self.compiled and keras.backend.backend() == "tensorflow":
            return _compiled_tanh_gelu()(inputs)
        return keras.activations.gelu(inputs, approximate=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "compiled": self.compiled}


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)
_GELU_A = 0.044715


@functools.cache
def _compiled_tanh_gelu():
    """The tanh GELU with its gradient, each pass one XLA-compiled function computing in float32."""
    import tensorflow as tf

    def tanh_of(x):
        return tf.tanh(_GELU_C * (x + _GELU_A * x * x * x))

    @tf.function(jit_compile=True)
    def forward(x):
        x32 = tf.cast(x, tf.float32)
        return tf.cast(0.5 * x32 * (1.0 + tanh_of(x32)), x.dtype)

    @tf.function(jit_compile=True)
    def backward(x, upstream):
        x32 = tf.cast(x, tf.float32)
        t = tanh_of(x32)
        slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x32 * x32)
        return tf.cast(tf.cast(upstream, tf.float32) * slope, x.dtype)

    @tf.autograph.experimental.do_not_convert
    @tf.custom_gradient
    def gelu(x):
        return forward(x), lambda upstream: backward(x, upstream)

    return gelu


# The training kernels, each one switch: bench's side-by-side rows build with some of them off.
TRAINING_KERNELS = ("fused_batch_norm", "shifted_kernel_gradients", "compiled_gelu")
_enabled = dict.fromkeys(TRAINING_KERNELS, True)


def batch_norm(**kwargs) -> keras.layers.BatchNormalization:
    """The BatchNormalization to build training models with (fused where it can be)."""
    return (FusedBatchNormalization if _enabled["fused_batch_norm"] else keras.layers.BatchNormalization)(**kwargs)


def conv2d(*args, **kwargs) -> keras.layers.Conv2D:
    """The Conv2D to build training models with (shifted kernel gradients on small maps)."""
    return (ShiftedGradConv2D if _enabled["shifted_kernel_gradients"] else keras.layers.Conv2D)(*args, **kwargs)


def tanh_gelu(**kwargs) -> TanhGelu:
    """The tanh GELU to build training models with (XLA-compiled on TensorFlow)."""
    return TanhGelu(compiled=_enabled["compiled_gelu"], **kwargs)


@contextlib.contextmanager
def stock_kernels(*names: str):
    """Models built inside use Keras' own layers for the named training kernels (all by default)."""
    unknown = set(names) - set(TRAINING_KERNELS)
    if unknown:
        raise ValueError(f"unknown training kernels {sorted(unknown)}; known: {TRAINING_KERNELS}")
    before = dict(_enabled)
    _enabled.update(dict.fromkeys(names or TRAINING_KERNELS, False))
    try:
        yield
    finally:
        _enabled.update(before)


def to_stock_layers(model: keras.Model) -> keras.Model:
    """A copy of `model` with every FusedBatchNormalization as Keras' BatchNormalization and every
    TanhGelu as Keras' exact GELU, weights included; the model itself if it has neither."""
    if not any(isinstance(layer, TRAINING_ONLY_LAYERS) for layer in _all_layers(model)):
        return model

    def stock(layer):
        config = layer.get_config()
        if isinstance(layer, TanhGelu):
            return keras.layers.Activation("gelu", name=config["name"], dtype=config.get("dtype"))
        return _STOCK_KIND.get(type(layer), type(layer)).from_config(config)

    copy = keras.models.clone_model(model, clone_function=stock)
    copy.set_weights(model.get_weights())
    return copy


_STOCK_KIND = {FusedBatchNormalization: keras.layers.BatchNormalization, ShiftedGradConv2D: keras.layers.Conv2D}
TRAINING_ONLY_LAYERS = (*_STOCK_KIND, TanhGelu)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
