import json

import pytest

from cifar_core.bench import forward_flops, run_benchmarks, training_step_flops
from cifar_core.models import build_model


def test_flops_are_counted_from_the_architecture():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    assert forward_flops(model) == 2 * (8 * 8 * 4 * 27) + 2 * (8 * 8 * 4 * 9) + 2 * 4 * 5
    assert forward_flops(build_model("fastnet")) > forward_flops(build_model("demo"))
    # Fine-tuning: the forward pass everywhere, the backward pass (2x) through the trainable layers only.
    model.layers[1].trainable = False
    assert training_step_flops(model) == forward_flops(model) + 2 * (2 * (8 * 8 * 4 * 9) + 2 * 4 * 5)
    model.layers[1].trainable = True
    assert training_step_flops(model) == 3 * forward_flops(model)


def test_bench_writes_all_sections(image_folder, tmp_path):
    output = tmp_path / "bench.json"
    run_benchmarks(str(image_folder), output, ["demo"], steps=2, precisions=["mixed_bfloat16"])
    results = json.loads(output.read_text())
    assert results["data_load"]["n_images"] == 18
    assert results["data_load"]["cached_seconds"] < results["data_load"]["cold_seconds"] + 1
    loaded = results["data_load"]
    assert loaded["arrays_mib"] == pytest.approx(18 * 32 * 32 * 3 / 2**20, abs=0.01)  # the images; labels are bytes
    assert loaded["arrays_mib"] < loaded["cached_peak_mib"] < 1.0  # a cache read holds the arrays, not megabytes more
    recipe, bf16 = results["training"]
    assert [recipe["precision"], bf16["precision"]] == ["float32", "mixed_bfloat16"]
    for training in (recipe, bf16):
        assert training["train_images_per_second"] > 0 and training["train_gflops_per_second"] > 0
    [inference] = results["inference"]
    assert 0 < inference["single_image_ms_p50"] <= inference["single_image_ms_p95"]


def test_presets_show_the_time_on_this_machine_only_from_a_bench_of_this_cpu(monkeypatch):
    from cifar_core import bench, ui
    from cifar_core.backend import cpu_name
    from cifar_core.config import preset_config

    monkeypatch.setattr(ui, "run_json", lambda run_dir, name: {
        "train_seconds": 600.0, "train_images_per_second": 100.0, "transfer": False,
        "machine": {"cpu": "Old CPU", "cores": 2}})
    config = preset_config("g3")
    # bench rows carry the precision the recipe ran in ("auto" resolved on this machine).
    row = {"model": "g3", "batch_size": config.batch_size, "precision": "mixed_bfloat16",
           "train_images_per_second": 1000.0}
    bench.machine_file().parent.mkdir(parents=True, exist_ok=True)
    bench.machine_file().write_text(json.dumps({"machine": {"cpu": "Another CPU"}, "training": [row]}))
    assert ui.preset_label("g3").endswith("10 min on Old CPU, 2 cores")  # another CPU's bench is not used
    bench.machine_file().write_text(json.dumps({"machine": {"cpu": cpu_name()}, "training": [row]}))
    assert ui.preset_label("g3").endswith("10 min on Old CPU, 2 cores; about 60 s here (bench)")
    taught = {"train_seconds": 600.0, "train_images_per_second": 100.0, "teacher_seconds": 120.0,
              "machine": {"cpu": "Old CPU", "cores": 2}}
    monkeypatch.setattr(ui, "run_json", lambda run_dir, name: taught)
    assert ui.preset_label("g3").endswith("; about 3 min here (bench)")  # 60 s of steps + the teacher's 120 s
    # A preset on its own network is estimated from its own row, never from its model's recipe.
    monkeypatch.setattr(ui, "run_json", lambda run_dir, name: {
        "train_seconds": 600.0, "train_images_per_second": 100.0, "machine": {"cpu": "Old CPU", "cores": 2}})
    stage = preset_config("stage")
    fastnet_row = {**row, "model": "fastnet", "batch_size": stage.batch_size}  # bf16: one of "auto"'s choices
    bench.machine_file().write_text(json.dumps({"machine": {"cpu": cpu_name()}, "training": [fastnet_row]}))
    assert ui.preset_label("stage").endswith("10 min on Old CPU, 2 cores")
    stage_row = {**fastnet_row, "model": "stage", "train_images_per_second": 500.0}
    bench.machine_file().write_text(json.dumps({"machine": {"cpu": cpu_name()},
                                                "training": [fastnet_row, stage_row]}))
    assert ui.preset_label("stage").endswith("; about 2 min here (bench)")
    bench.machine_file().write_text("{not json")
    assert bench.this_machine_speeds() == {}


def test_inference_is_timed_on_the_run_the_recipes_own_preset_ships(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from cifar_core import bench, runs
    from cifar_core.config import PRESETS, preset_config

    def run(name, options, state="completed", has_model=True):
        return SimpleNamespace(path=tmp_path / name, config={"model": "fastnet", "model_options": options},
                               has_model=has_model, status={"state": state})

    fastnet_net, stage_net = preset_config("fastnet").model_options, preset_config("stage").model_options
    assert fastnet_net != stage_net  # else this test proves nothing about telling networks apart
    stage, own = run(PRESETS["stage"].shipped_run, stage_net), run(PRESETS["fastnet"].shipped_run, fastnet_net)
    other, other_stage = run("zz-fastnet", fastnet_net), run("aa-stage", stage_net)
    for order in ([stage, own, other, other_stage], [other_stage, other, own, stage]):
        monkeypatch.setattr(runs, "list_runs", lambda order=order: (order, []))
        assert bench.shipped_run_for("fastnet") == own.path
        assert bench.shipped_run_for("stage") == stage.path  # a preset is timed on its own run
    unfinished = run(PRESETS["fastnet"].shipped_run, fastnet_net, state="running")
    monkeypatch.setattr(runs, "list_runs", lambda: ([stage, other, unfinished], []))
    assert bench.shipped_run_for("fastnet") == other.path  # the same network, never the stage's narrower one
    monkeypatch.setattr(runs, "list_runs", lambda: ([run("a", fastnet_net, has_model=False), stage], []))
    assert bench.shipped_run_for("fastnet") is None
    assert bench.shipped_run_for("g3") is None


def test_bench_times_a_preset_by_its_name_on_its_own_network(monkeypatch):
    from cifar_core import bench
    from cifar_core.bench import forward_flops
    from cifar_core.config import preset_config

    built = []
    monkeypatch.setattr(bench, "time_steps", lambda model, config, steps, warmup: (built.append(model) or 100.0, []))
    monkeypatch.setattr(bench, "time_pipeline", lambda data, batches, batch_size: 1.0)
    stage, fastnet = (bench.time_training(name, 1, precision="float32") for name in ("stage", "fastnet"))
    assert stage["model"] == "stage" and fastnet["model"] == "fastnet"
    assert stage["params"] == built[0].count_params() < fastnet["params"] == built[1].count_params()
    assert stage["forward_mflops_per_image"] == round(forward_flops(built[0]) / 1e6, 1)
    assert stage["batch_size"] == preset_config("stage").batch_size
    steps = bench.recipe_steps("stage")
    assert [name for name, _ in steps] == ["previous recipe", "today's recipe"]
    previous, today = (arguments["config"] for _, arguments in steps)
    assert today == preset_config("stage") and previous.replace(model_options=today.model_options) == today
    assert previous.model_options != today.model_options
    timed = bench.time_inference(None, "stage", repeats=1)  # no run: the preset's network, freshly built
    assert timed["model"] == "stage" and timed["run"] is None and timed["batch_images_per_second"] > 0
