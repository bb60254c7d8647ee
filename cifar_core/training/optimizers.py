"""Muon for convolution filters, Nesterov SGD for everything else.

After airbench94_muon (Keller Jordan): each trainable conv kernel is kept at
a fixed norm (a BatchNorm follows it, so only its direction matters) and
steps along the orthogonalised momentum, which moves every singular
direction at the same rate instead of letting a few dominate. BatchNorm
parameters and the dense head keep the plain SGD step and weight decay.
The fixed norm assumes a BatchNorm after every conv, as in fastnet and demo;
on a net without one (g3's unnormalised convs) it also pins the scale.

Keras' own `keras.optimizers.Muon` only treats 2-D variables and pairs them
with AdamW, so 4-D conv kernels would never get the Muon step there.
"""
from __future__ import annotations

import keras
from keras import ops

from ..config import TrainConfig
from .schedules import make_learning_rate

# The quintic Newton-Schulz coefficients of the reference implementation.
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(matrix, steps: int = 5, dtype: str | None = None):
    """Approximately U V^T of `matrix` (2-D), by Newton-Schulz iteration in `dtype`
    (default: the matrix's own); the result has the matrix's dtype."""
    a, b, c = _NS_COEFFICIENTS
    result_dtype = matrix.dtype
    transposed = matrix.shape[0] > matrix.shape[1]
    x = ops.cast(matrix, dtype or result_dtype)
    x = ops.transpose(x) if transposed else x
    x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.cast(ops.transpose(x) if transposed else x, result_dtype)


@keras.saving.register_keras_serializable(package="cifar_core")
class FilterMuon(keras.optimizers.Optimizer):
    """`learning_rate` (a schedule) drives the SGD part; conv kernels step at
    `learning_rate * muon_scale`, which is their per-step relative change.

    `ns_dtype` "bfloat16" runs the Newton-Schulz matmuls in bf16, as the reference does
    (its quintic is built to tolerate it); a tenth of a fastnet step where the CPU has bf16 units."""

    def __init__(self, learning_rate=0.2, muon_scale: float = 0.2, momentum: float = 0.9,
                 sgd_weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: str = "float32",
                 name="filter_muon", **kwargs):
        kwargs.pop("weight_decay", None)  # decay is applied here, to the SGD part only
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.muon_scale = float(muon_scale)
        self.momentum = float(momentum)
        self.sgd_weight_decay = float(sgd_weight_decay)
        self.ns_steps = int(ns_steps)
        self.ns_dtype = str(ns_dtype)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        m = self.momentums[self._get_variable_index(variable)]
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        self.assign(m, self.momentum * m + gradient)
        direction = gradient + self.momentum * m  # Nesterov
        if len(variable.shape) == 4:
            self._filter_step(variable, direction, lr * self.muon_scale)
        else:
            if self.sgd_weight_decay:
                self.assign_sub(variable, lr * self.sgd_weight_decay * variable)
            self.assign_sub(variable, lr * direction)

    def _filter_step(self, kernel, direction, lr):
        outputs = kernel.shape[-1]
        # Keep the kernel at norm sqrt(filters): its scale is BatchNorm's business.
        norm = ops.sqrt(ops.sum(ops.square(kernel))) + 1e-12
        self.assign(kernel, kernel * (outputs ** 0.5 / norm))
        update = orthogonalise(ops.reshape(direction, (-1, outputs)), self.ns_steps, self.ns_dtype)
        self.assign_sub(kernel, lr * ops.reshape(update, kernel.shape))

    def get_config(self):
        config = super().get_config()
        config.update(muon_scale=self.muon_scale, momentum=self.momentum,
                      sgd_weight_decay=self.sgd_weight_decay, ns_steps=self.ns_steps,
                      ns_dtype=self.ns_dtype)
        return config


def compile_model(model, config: TrainConfig, peak_lr: float, total_steps: int,
                  schedule: str | None = None, ns_dtype: str | None = None) -> None:
    """Compile with the config's optimizer, learning-rate schedule, loss (label smoothing) and accuracy.
    Muon orthogonalises in bf16 under mixed bf16 precision unless `ns_dtype` says otherwise."""
    learning_rate = make_learning_rate(schedule or config.schedule, peak_lr, total_steps, config.warmup_fraction)
    ema = dict(use_ema=True, ema_momentum=config.ema_momentum) if config.ema_momentum else {}
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=config.nesterov,
                                         weight_decay=config.weight_decay or None, **ema)
    elif config.optimizer == "muon":
        optimizer = FilterMuon(learning_rate, muon_scale=config.muon_scale, momentum=config.momentum,
                               sgd_weight_decay=config.weight_decay,
                               ns_dtype=ns_dtype or ("bfloat16" if config.precision == "mixed_bfloat16" else "float32"),
                               **ema)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, **ema)
    else:
        optimizer = keras.optimizers.Adam(learning_rate, **ema)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
