"""The training-speed work (#17): fused batch norm, bf16 Newton-Schulz, precision "auto",
and what `bench` reports about the machine."""
import json

import keras
import numpy as np
import pytest

from cifar_core import backend, bench
from cifar_core.config import recipe_config
from cifar_core.models import build_model
from cifar_core.models.layers import (
    FUSED_MIN_EPSILON,
    TRAINING_KERNELS,
    FusedBatchNormalization,
    ShiftedGradConv2D,
    TanhGelu,
    shifted_kernel_gradient,
    stock_kernels,
    to_stock_layers,
)
from cifar_core.training import precision
from cifar_core.training.optimizers import orthogonalise


def _bn_pair(**options):
    """A fused and a stock BatchNormalization with the same (non-trivial) weights."""
    fused, stock = FusedBatchNormalization(**options), keras.layers.BatchNormalization(**options)
    for layer in (fused, stock):
        layer.build((None, 5, 5, 4))
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)]
    for layer in (fused, stock):
        layer.set_weights([w.astype("float32") for w in weights])
    return fused, stock


def _batch(shape=(6, 5, 5, 4), seed=1):
    return (np.random.default_rng(seed).normal(size=shape) * 3 + 1).astype("float32")


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_computes_what_keras_computes(training):
    fused, stock = _bn_pair(momentum=0.7)
    x = _batch()
    np.testing.assert_allclose(fused(x, training=training), stock(x, training=training), rtol=1e-4, atol=1e-4)
    # The moving statistics follow Keras' rule (biased batch variance), or stay put at inference.
    np.testing.assert_allclose(fused.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5, atol=1e-6)


def test_fused_batch_norm_gradients_match_keras():
    import tensorflow as tf

    fused, stock = _bn_pair()
    x = tf.constant(_batch())
    grads = []
    for layer in (fused, stock):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 3)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for got, expected in zip(*grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_fused_batch_norm_reads_bf16_activations():
    fused, stock = _bn_pair(dtype="mixed_bfloat16")
    x = _batch()
    got = fused(keras.ops.cast(x, "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    expected = np.asarray(keras.ops.cast(stock(x, training=True), "float32"))
    np.testing.assert_allclose(np.asarray(keras.ops.cast(got, "float32")), expected, rtol=0.05, atol=0.05)
    assert fused.moving_mean.dtype == "float32"  # the statistics stay float32


@pytest.mark.parametrize("case", ["small epsilon", "not 4-D", "other axis", "renorm"])
def test_cases_the_fused_kernel_cannot_take_are_keras_own(case, monkeypatch):
    options = {"small epsilon": dict(epsilon=FUSED_MIN_EPSILON / 10), "other axis": dict(axis=1),
               "renorm": dict(renorm=True)}.get(case, {})
    shape = (6, 4) if case == "not 4-D" else (6, 5, 5, 4)
    x = _batch(shape)
    fused, stock = FusedBatchNormalization(**options), keras.layers.BatchNormalization(**options)
    monkeypatch.setattr("tensorflow.compat.v1.nn.fused_batch_norm",
                        lambda *a, **k: pytest.fail("the fused kernel ran for " + case))
    np.testing.assert_allclose(fused(x, training=True), stock(x, training=True), rtol=1e-6)


def test_saved_models_hold_only_keras_layers_and_predict_the_same():
    model = build_model("fastnet", precision="mixed_bfloat16", activation="silu")
    assert any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    model(x, training=True)  # moves the statistics away from their initial values
    plain = to_stock_layers(model)
    assert not any(isinstance(layer, (FusedBatchNormalization, ShiftedGradConv2D)) for layer in plain.layers)
    assert sum(type(layer) is keras.layers.BatchNormalization for layer in plain.layers) == 6
    assert sum(type(layer) is keras.layers.Conv2D for layer in plain.layers) == 7  # the whitening's and six
    assert plain.get_layer("block1_bn1").dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-2, atol=1e-3)
    demo = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert to_stock_layers(demo) is demo  # nothing to swap: no copy


def test_gelu_is_trained_by_its_tanh_form_and_saved_exact():
    from cifar_core.models.layers import TanhGelu

    model = build_model("fastnet", activation="gelu_tanh")
    assert isinstance(model.get_layer("block3_act2"), TanhGelu)
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    plain = to_stock_layers(model)
    layer = plain.get_layer("block3_act2")
    assert type(layer) is keras.layers.Activation and layer.get_config()["activation"] == "gelu"
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)
    grid = np.linspace(-6, 6, 1001).astype("float32")
    exact = keras.activations.gelu(grid, approximate=False)
    assert np.max(np.abs(np.asarray(TanhGelu()(grid)) - np.asarray(exact))) < 1e-3


def _kinds(model) -> set[type]:
    return {type(layer) for layer in model.layers}


def test_the_previous_kernels_are_one_switch_each():
    with stock_kernels():
        previous = build_model("fastnet", activation="gelu_tanh")
    assert not _kinds(previous) & {FusedBatchNormalization, ShiftedGradConv2D}
    assert not any(layer.compiled for layer in previous.layers if isinstance(layer, TanhGelu))
    with stock_kernels("shifted_kernel_gradients"):
        one_off = build_model("fastnet", activation="gelu_tanh")
    assert FusedBatchNormalization in _kinds(one_off) and ShiftedGradConv2D not in _kinds(one_off)
    assert all(layer.compiled for layer in one_off.layers if isinstance(layer, TanhGelu))
    today = build_model("fastnet", activation="gelu_tanh")
    assert {FusedBatchNormalization, ShiftedGradConv2D, TanhGelu} <= _kinds(today)
    assert FusedBatchNormalization in _kinds(build_model("demo"))
    with pytest.raises(ValueError, match="fused_batchnorm"):
        with stock_kernels("fused_batchnorm"):
            pass
    assert set(TRAINING_KERNELS) == {"fused_batch_norm", "shifted_kernel_gradients", "compiled_gelu"}


def test_fastnet_batch_norm_runs_on_the_fused_kernel():
    """1e-5 sat a hair below the fused kernel's floor and silently kept fastnet on Keras' path."""
    model = build_model("fastnet")
    norms = [layer for layer in model.layers if isinstance(layer, FusedBatchNormalization)]
    assert len(norms) == 6 and all(layer._fusable(keras.ops.zeros((1, 4, 4, layer.gamma.shape[0])), None)
                                   for layer in norms)


@pytest.mark.parametrize("side, kernel_size", [(3, (3, 3)), (7, (3, 3)), (5, (2, 2)), (4, (1, 3))])
def test_the_shifted_kernel_gradient_is_the_convolution_s_own(side, kernel_size):
    import tensorflow as tf

    rng = np.random.default_rng(side)
    x = tf.constant(rng.normal(size=(3, side, side + 1, 4)), tf.float32)
    dy = tf.constant(rng.normal(size=(3, side, side + 1, 5)), tf.float32)
    expected = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[*kernel_size, 4, 5], out_backprop=dy,
                                               strides=[1, 1, 1, 1], padding="SAME")
    np.testing.assert_allclose(shifted_kernel_gradient(x, dy, kernel_size).numpy(), expected.numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", [3, 8, 9])
def test_a_shifted_gradient_convolution_trains_as_keras_own_does(side, monkeypatch):
    """Same output and gradients as Keras' Conv2D (within bf16's rounding), the shifted form on the
    bf16 maps it takes (<= 8 px) and Keras' own on the rest."""
    import tensorflow as tf

    from cifar_core.models import layers

    shifted_calls = []
    monkeypatch.setattr(layers, "shifted_kernel_gradient",
                        lambda *args: shifted_calls.append(1) or shifted_kernel_gradient(*args))
    shifted = ShiftedGradConv2D(6, 3, padding="same", use_bias=True, dtype="mixed_bfloat16")
    stock = keras.layers.Conv2D(6, 3, padding="same", use_bias=True, dtype="mixed_bfloat16")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, side, side, 4)), tf.float32)
    for layer in (shifted, stock):
        layer.build(x.shape)
    stock.set_weights(shifted.get_weights())
    results = []
    for layer in (shifted, stock):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), tf.float32)
            loss = tf.reduce_sum(y * tf.sin(y))
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_weights])])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0.05, atol=0.05)
    assert bool(shifted_calls) == (side <= 8)
    float32 = ShiftedGradConv2D(6, 3, padding="same")
    float32.build(x.shape)
    assert not float32._shiftable(x)  # float32 keeps oneDNN's kernel, which is faster there


def test_cases_the_shifted_gradient_cannot_take_are_keras_own():
    x = keras.ops.zeros((1, 6, 6, 3), dtype="bfloat16")
    for options in (dict(strides=2), dict(dilation_rate=2), dict(padding="valid"), dict(groups=3)):
        layer = ShiftedGradConv2D(3, 3, **{"padding": "same", **options})
        layer.build(x.shape)
        assert not layer._shiftable(x), options
    open_size = ShiftedGradConv2D(3, 3, padding="same")
    assert not open_size._shiftable(keras.KerasTensor((None, None, None, 3), dtype="bfloat16"))
    taken = ShiftedGradConv2D(3, 3, padding="same")
    taken.build(x.shape)
    assert taken._shiftable(x)  # the same layer, stride 1 and "same": the shifted form


def test_the_compiled_gelu_and_its_gradient_are_the_tanh_form_s():
    import tensorflow as tf

    grid = tf.constant(np.linspace(-6, 6, 97).reshape(1, 97), tf.float32)
    results = []
    for layer in (TanhGelu(), TanhGelu(compiled=False)):
        with tf.GradientTape() as tape:
            tape.watch(grid)
            y = layer(grid)
        results.append((y, tape.gradient(y, grid)))
    (y, dy), (y_ref, dy_ref) = results
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(dy.numpy(), dy_ref.numpy(), atol=1e-5)
    bf16 = TanhGelu(dtype="mixed_bfloat16")(grid)
    assert bf16.dtype == tf.bfloat16 and np.max(np.abs(tf.cast(bf16, tf.float32).numpy() - y_ref.numpy())) < 0.05


def test_fastnet_activation_is_a_checked_option():
    from cifar_core.errors import ConfigError

    assert build_model("fastnet", activation="silu").get_layer("block2_act1").get_config()["activation"] == "silu"
    assert build_model("fastnet").get_layer("block2_act1").get_config()["activation"] == "gelu"
    with pytest.raises(ConfigError, match="activation"):
        build_model("fastnet", activation="swishy")


def test_newton_schulz_in_bf16_lands_near_float32_and_keeps_the_dtype():
    rng = np.random.default_rng(0)
    matrix = keras.ops.convert_to_tensor(rng.normal(size=(64, 576)).astype("float32"))
    exact = np.asarray(orthogonalise(matrix))
    fast = orthogonalise(matrix, dtype="bfloat16")
    assert keras.backend.standardize_dtype(fast.dtype) == "float32"
    fast = np.asarray(fast)
    # bf16 keeps 8 bits of mantissa: the same directions, a few percent apart.
    assert np.sum(fast * exact) / (np.linalg.norm(fast) * np.linalg.norm(exact)) > 0.99
    assert np.linalg.norm(fast - exact) / np.linalg.norm(exact) < 0.1
    singular = np.linalg.svd(fast, compute_uv=False)
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_muon_orthogonalises_in_bf16_only_under_mixed_precision():
    from cifar_core.training.optimizers import compile_model

    for chosen, expected in (("mixed_bfloat16", "bfloat16"), ("float32", "float32")):
        model = build_model("demo")
        compile_model(model, recipe_config("fastnet", precision=chosen), 0.1, 10)
        assert model.optimizer.ns_dtype == expected
        assert model.optimizer.get_config()["ns_dtype"] == expected
    compile_model(model, recipe_config("fastnet", precision="mixed_bfloat16"), 0.1, 10, ns_dtype="float32")
    assert model.optimizer.ns_dtype == "float32"


# --- precision "auto" -----------------------------------------------------------------

def _never_probe(config):
    raise AssertionError("probed")


def test_auto_precision_is_resolved_and_remembered(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "has_bf16_units", lambda: True)
    monkeypatch.setattr(precision, "probe_speeds",
                        lambda config: calls.append(config) or {"float32": 300.0, "mixed_bfloat16": 420.0})
    lines = []
    config = recipe_config("fastnet")
    assert config.precision == "auto"
    chosen = precision.resolve_precision(config, report=lines.append)
    assert chosen.precision == "mixed_bfloat16" and chosen.replace(precision="auto") == config
    assert "mixed_bfloat16" in lines[0] and "420" in lines[0]
    monkeypatch.setattr(precision, "probe_speeds", _never_probe)
    assert precision.resolve_precision(config).precision == "mixed_bfloat16"  # from the cache, no probe
    # Another shape of the same model is probed afresh, and the faster side wins either way.
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 500.0, "mixed_bfloat16": 420.0})
    assert precision.resolve_precision(config.replace(batch_size=64)).precision == "float32"
    assert len(calls) == 1


def test_auto_precision_knows_another_cpu_and_a_damaged_cache(monkeypatch):
    monkeypatch.setattr(backend, "has_bf16_units", lambda: True)
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 500.0, "mixed_bfloat16": 100.0})
    config = recipe_config("g3")
    assert precision.resolve_precision(config).precision == "float32"
    monkeypatch.setattr(backend, "cpu_name", lambda: "Another CPU (AMX-BF16)")
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 100.0, "mixed_bfloat16": 500.0})
    assert precision.resolve_precision(config).precision == "mixed_bfloat16"
    precision.choices_file().write_text("{not json")
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 900.0, "mixed_bfloat16": 500.0})
    assert precision.resolve_precision(config).precision == "float32"
    assert len(json.loads(precision.choices_file().read_text())) == 1  # rewritten whole


def test_without_bf16_instructions_auto_is_float32_without_a_probe(monkeypatch):
    monkeypatch.setattr(backend, "has_bf16_units", lambda: False)
    monkeypatch.setattr(backend, "accelerator_name", lambda: None)
    monkeypatch.setattr(precision, "probe_speeds", _never_probe)
    assert precision.resolve_precision(recipe_config("fastnet")).precision == "float32"


def test_an_accelerator_is_probed_and_remembered_apart_from_its_hosts_cpu(monkeypatch):
    # A GPU machine's choice says nothing about its CPU alone (or another GPU), and the reverse.
    monkeypatch.setattr(backend, "has_bf16_units", lambda: False)
    monkeypatch.setattr(backend, "accelerator_name", lambda: "1 x NVIDIA H100")
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 100.0, "mixed_bfloat16": 900.0})
    config = recipe_config("fastnet")
    assert precision.resolve_precision(config).precision == "mixed_bfloat16"
    monkeypatch.setattr(precision, "probe_speeds", _never_probe)
    monkeypatch.setattr(backend, "accelerator_name", lambda: None)
    assert precision.resolve_precision(config).precision == "float32"  # the CPU alone: no bf16 units
    monkeypatch.setattr(backend, "accelerator_name", lambda: "1 x NVIDIA T4")
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 300.0, "mixed_bfloat16": 200.0})
    assert precision.resolve_precision(config).precision == "float32"
    monkeypatch.setattr(backend, "accelerator_name", lambda: "1 x NVIDIA H100")
    monkeypatch.setattr(precision, "probe_speeds", _never_probe)
    assert precision.resolve_precision(config).precision == "mixed_bfloat16"


def test_the_accelerator_is_named_from_the_backends_own_device_list():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    name = backend.accelerator_name()
    assert name is None if not gpus else name.startswith(f"{len(gpus)} x ")


def test_explicit_precisions_are_left_alone(monkeypatch):
    monkeypatch.setattr(precision, "probe_speeds", _never_probe)
    for chosen in ("float32", "mixed_bfloat16"):
        assert precision.resolve_precision(recipe_config("g3", precision=chosen)).precision == chosen


def test_off_tensorflow_the_settings_step_needs_no_tensorflow(monkeypatch):
    """The JAX path (the GPU machine has no TensorFlow): configuring threads, as the precision probe
    does first, must not import it."""
    import sys

    import keras

    from cifar_core import backend

    monkeypatch.setattr(backend, "_configured", False)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it now raises ImportError
    backend.configure()
    assert backend._configured


def test_the_probe_times_both_precisions():
    speeds = precision.probe_speeds(recipe_config("demo", batch_size=16))
    assert set(speeds) == {"float32", "mixed_bfloat16"} and min(speeds.values()) > 0


def test_a_run_saves_the_precision_it_chose(tiny_dataset, tmp_path, monkeypatch):
    from cifar_core import runs
    from cifar_core.training import train

    monkeypatch.setattr(backend, "has_bf16_units", lambda: True)
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 1.0, "mixed_bfloat16": 2.0})
    run_dir = train(recipe_config("demo", n_epochs=1, batch_size=32, precision="auto"), tmp_path / "run",
                    dataset=tiny_dataset, verbose=0)
    assert runs.read_config(run_dir).precision == "mixed_bfloat16"


# --- bench: the machine ----------------------------------------------------------------

ONEDNN_LOG = "\n".join([
    "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:cdba::f0 dst:f32::blocked:"
    "Acdb64a::f0,,,64x64x3x3,0.07",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32::blocked:"
    "acdb::f0 wei:f32:a:blocked:Acdb64a::f0,attr-scratchpad:user,alg:convolution_direct,mb16,1.27",
    "onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0 wei_f32::blocked:ab:f0 "
    "dst_f32::blocked:ab:f0,,,16x64:64x64,21.2",
    "some other line, exec,cpu,convolution,fake:amx,forward,src:bf16",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_training,"
    "src:bf16::blocked:acdb::f0,attr,alg,mb16,0.65",
    "onednn_verbose,v1,primitive,exec,cpu,convolution",
])


def test_onednn_log_is_read_per_kernel_and_dtype():
    seen = bench.parse_onednn_verbose(ONEDNN_LOG)
    assert seen["isa"] == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert seen["kernels"]["convolution"] == {"float32": ["brg_conv_fwd:avx512_core"],
                                              "bfloat16": ["brg_conv_fwd:avx512_core_bf16"]}
    assert seen["kernels"]["gemm_api"] == {"float32": ["(default)"]}
    assert bench.parse_onednn_verbose("") == {"isa": None, "kernels": {}}


def test_onednn_verdict_names_the_kernels_the_cpu_should_use():
    kernels = bench.parse_onednn_verbose(ONEDNN_LOG)["kernels"]
    assert bench.expected_bf16_isa({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}) == "amx"
    assert bench.expected_bf16_isa({"avx2", "avx512f", "avx512_bf16"}) == "avx512_core_bf16"
    assert bench.expected_bf16_isa({"avx2"}) is None
    assert "as this CPU allows" in bench.onednn_verdict(kernels, "avx512_core_bf16")
    assert "not on this CPU's amx kernels" in bench.onednn_verdict(kernels, "amx")
    assert "no bfloat16 instructions" in bench.onednn_verdict(kernels, None)
    assert "not running" in bench.onednn_verdict({}, "amx")


def test_peaks_are_measured_per_precision(monkeypatch):
    monkeypatch.setattr(bench, "PEAK_MATMUL_SIDE", 128)
    monkeypatch.setattr(bench, "PEAK_CONV", (4, 8, 16, 16))
    peaks = bench.measure_peaks(repeats=2)
    assert set(peaks) == {"float32", "mixed_bfloat16"}
    assert all(value > 0 for row in peaks.values() for value in row.values())


def test_training_rows_report_their_share_of_the_peak():
    row = bench.time_training("demo", steps=2, warmup=1, batch_size=16, precision="float32",
                              peaks={"float32": {"conv_gflops": 10.0}})
    assert row["percent_of_conv_peak"] == pytest.approx(10 * row["train_gflops_per_second"], rel=0.01)
    assert row["pipeline_images_per_second"] > 0
    assert bench.time_training("demo", steps=2, warmup=1, batch_size=16)["percent_of_conv_peak"] is None


def test_comparison_times_each_change_from_the_previous_recipe_in_one_call(monkeypatch):
    seen = []

    def fake(model_name, steps, peaks=None, config=None, stock=(), ns_dtype=None):
        seen.append((config, stock, ns_dtype))
        return {"train_images_per_second": 100.0 * (1 + len(seen) % 6) + len(seen)}

    monkeypatch.setattr(bench, "time_training", fake)
    result = bench.compare_with_previous("fastnet", steps=3, peaks=None, rounds=2)
    names = [row["step"] for row in result["steps"]]
    assert names == ["previous recipe", "+ fused batch norm", "+ activation gelu_tanh", "+ bf16 Newton-Schulz",
                     "+ shifted kernel gradients on small maps", "+ compiled GELU (today's recipe)"]
    assert len(seen) == 12 and seen[:6] == seen[6:]  # the same six, alternated twice
    previous, fused, gelu, newton, shifted, today = seen[:6]
    assert previous[0].model_options == {} and previous[1] == TRAINING_KERNELS and previous[2] == "float32"
    later = ("shifted_kernel_gradients", "compiled_gelu")
    assert fused[1] == later and fused[0].model_options == {}
    assert gelu[0].model_options == {"activation": "gelu_tanh"} and gelu[1] == later and gelu[2] == "float32"
    assert newton[0].precision == "auto" and newton[1] == later and newton[2] is None
    assert shifted[1] == ("compiled_gelu",) and today[1] == () and today[2] is None
    assert result["steps"][0]["train_images_per_second"] == 207.0  # the best of its two rounds
    assert result["speedup"] == pytest.approx(result["steps"][-1]["train_images_per_second"] / 207.0, abs=0.005)


def test_a_transfer_preset_is_compared_stretch_by_stretch_and_projected_over_its_epochs(monkeypatch):
    timed = []
    speeds = {(1000, 224): [50.0, 55.0], (40, 128): [200.0, 190.0], (40, 224): [70.0, 72.0]}

    def fake(config, size, steps, warmup=2, jit=False):
        timed.append((config.fine_tune_layers, size))
        return speeds[(config.fine_tune_layers, size)][sum(t == timed[-1] for t in timed) - 1]

    monkeypatch.setattr(bench, "time_fine_tune", fake)
    monkeypatch.setattr(bench, "fine_tune_flops", lambda config, size: config.fine_tune_layers * size * 1e6)
    peaks = {"float32": {"conv_gflops": 100.0}}
    result = bench.compare_transfer_preset("lite0-224", steps=3, rounds=2, peaks=peaks)
    assert timed == [(1000, 224), (40, 128), (40, 224)] * 2  # alternated in one call
    previous, today = result["steps"]
    assert result["n_train"] == 47_500 and result["kind"] == "transfer"

    def stretch(size, epochs, rate, layers):
        gflops = layers * size * 1e6 * rate / 1e9
        return {"size": size, "epochs": epochs, "images_per_second": rate,
                "train_gflops_per_second": round(gflops, 1), "percent_of_conv_peak": round(gflops, 1)}

    assert previous["stretches"] == [stretch(224, 4, 55.0, 1000)]  # best of two
    assert today["stretches"] == [stretch(128, 1, 200.0, 40), stretch(224, 3, 72.0, 40)]
    timed.clear()
    assert bench.compare_transfer_preset("lite0-224", steps=3, rounds=1)["steps"][0]["stretches"][0][
        "percent_of_conv_peak"] is None  # no peaks measured: no share claimed
    assert previous["fine_tune_minutes"] == round(4 * 47_500 / 55 / 60, 1)
    assert today["fine_tune_minutes"] == round((47_500 / 200 + 3 * 47_500 / 72) / 60, 1)
    assert result["speedup"] == round(previous["fine_tune_minutes"] / today["fine_tune_minutes"], 2)


def test_bench_compares_transfer_presets_by_their_stretches_and_recipes_by_their_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "measure_peaks", lambda: {})
    monkeypatch.setattr(bench, "onednn_kernels", lambda: {"verdict": "not checked"})
    monkeypatch.setattr(bench, "machine_file", lambda: tmp_path / "machine.json")
    monkeypatch.setattr(bench, "compare_transfer_preset",
                        lambda name, steps, peaks: {"model": name, "kind": "transfer"})
    monkeypatch.setattr(bench, "compare_with_previous", lambda name, steps, peaks: {"model": name})
    results = bench.run_benchmarks("keras", tmp_path / "bench.json", [], steps=2, compare=["lite0-224", "g3"])
    assert results["comparison"] == [{"model": "lite0-224", "kind": "transfer"}, {"model": "g3"}]
    assert results["peaks_after"] == {} and results["peaks_held"]


def test_a_bench_says_whether_the_machine_s_peaks_held_through_the_call(monkeypatch, tmp_path, capsys):
    start = {"float32": {"conv_gflops": 250.0}, "mixed_bfloat16": {"conv_gflops": 900.0, "matmul_gflops": 600.0}}
    assert bench.peaks_held(start, start)
    assert bench.peaks_held(start, {"float32": {"conv_gflops": 300.0},  # +20%: held
                                    "mixed_bfloat16": {"conv_gflops": 720.0, "matmul_gflops": 600.0}})
    assert not bench.peaks_held(start, {"float32": {"conv_gflops": 250.0},
                                        "mixed_bfloat16": {"conv_gflops": 2257.0, "matmul_gflops": 600.0}})
    assert not bench.peaks_held(start, {"float32": {"conv_gflops": 199.0},
                                        "mixed_bfloat16": {"conv_gflops": 900.0, "matmul_gflops": 600.0}})
    assert not bench.peaks_held(start, {"float32": {"conv_gflops": 250.0}})  # a peak missing at the end
    peaks = iter([start, {**start, "mixed_bfloat16": {"conv_gflops": 2257.0, "matmul_gflops": 600.0}}])
    monkeypatch.setattr(bench, "measure_peaks", lambda: next(peaks))
    monkeypatch.setattr(bench, "onednn_kernels", lambda: {"verdict": "not checked"})
    monkeypatch.setattr(bench, "machine_file", lambda: tmp_path / "machine.json")
    results = bench.run_benchmarks("keras", tmp_path / "bench.json", [], steps=2)
    assert not results["peaks_held"] and "run it again" in capsys.readouterr().err
    assert json.loads((tmp_path / "bench.json").read_text())["peaks_after"]["mixed_bfloat16"]["conv_gflops"] == 2257.0


def test_g3_has_no_muon_step():
    names = [name for name, _ in bench.recipe_steps("g3")]
    assert names == ["previous recipe", "+ fused batch norm",
                     "+ shifted kernel gradients on small maps (today's recipe)"]


@pytest.mark.parametrize("remembered", [
    {"choice": "float64"}, {"choice": "float32", "images_per_second": [300.0]},
    {"choice": "float32", "images_per_second": {"float32": "fast"}}, {"choice": "float32", "reason": 7},
    ["float32"]])
def test_a_remembered_choice_unlike_what_auto_writes_is_probed_afresh(monkeypatch, remembered):
    monkeypatch.setattr(backend, "has_bf16_units", lambda: True)
    config = recipe_config("g3")
    precision.choices_file().parent.mkdir(parents=True, exist_ok=True)
    precision.choices_file().write_text(json.dumps({precision._choice_key(config): remembered}))
    monkeypatch.setattr(precision, "probe_speeds", lambda config: {"float32": 100.0, "mixed_bfloat16": 500.0})
    lines = []
    assert precision.resolve_precision(config, report=lines.append).precision == "mixed_bfloat16"
    assert "probe" in lines[0]
