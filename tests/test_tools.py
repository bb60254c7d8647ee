"""tools/checkpoint_accuracy.py measures an unfinished run on the weights it would ship."""
import importlib

import numpy as np
import pytest
from helpers import stop_after_epoch

from cifar_core import runs
from cifar_core.config import recipe_config
from cifar_core.training import checkpoint, train
from cifar_core.training.callbacks import BEST_WEIGHTS_NAME


def _load_tool(name: str):
    return importlib.import_module(f"tools.{name}")


def test_checkpoint_accuracy_uses_the_best_weights_then_the_last_checkpoint(tiny_dataset, tmp_path):
    config = recipe_config("demo", n_epochs=5, batch_size=32, val_fraction=0.25, limit=None,
                           early_stopping_patience=5)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, tiny_dataset, verbose=0, callbacks=[stop_after_epoch(3)])
    tool = _load_tool("checkpoint_accuracy")

    history = runs.read_history(run_dir)
    best_epoch = 1 + int(np.argmin([row["val_loss"] for row in history]))
    weights_from, measured = tool.checkpoint_accuracy(run_dir, tiny_dataset)
    assert weights_from == f"epoch {best_epoch} (early-stopping best)"
    best = checkpoint.load_model(run_dir, checkpoint.load_state(run_dir))
    from cifar_core.training.callbacks import read_best_weights

    best.set_weights(read_best_weights(checkpoint.checkpoint_dir(run_dir) / BEST_WEIGHTS_NAME, best)[1])
    predicted = best.predict(tiny_dataset.x_test.astype("float32"), verbose=0).argmax(1)
    assert measured["test_accuracy"] == pytest.approx(np.mean(predicted == tiny_dataset.y_test))
    assert "test_accuracy_tta" in measured

    (checkpoint.checkpoint_dir(run_dir) / BEST_WEIGHTS_NAME).unlink()
    weights_from, measured = tool.checkpoint_accuracy(run_dir, tiny_dataset)
    assert weights_from == "epoch 3 (last checkpoint)"
    last = checkpoint.load_model(run_dir, checkpoint.load_state(run_dir))
    predicted = last.predict(tiny_dataset.x_test.astype("float32"), verbose=0).argmax(1)
    assert measured["test_accuracy"] == pytest.approx(np.mean(predicted == tiny_dataset.y_test))


def test_checkpoint_accuracy_without_a_checkpoint_is_a_clear_error(tmp_path):
    from cifar_core.errors import RunFolderError

    with pytest.raises(RunFolderError, match="no usable checkpoint"):
        _load_tool("checkpoint_accuracy").checkpoint_accuracy(tmp_path, None)


def test_sweep_augmentation_is_a_flip_and_a_reflected_shift_of_each_image():
    sweep = _load_tool("research.fastnet_sweep")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    out = sweep.flip_and_crop(images, rng, pad=2)
    assert out.shape == images.shape and out.dtype == images.dtype

    def candidates(image):
        for version in (image, image[:, ::-1]):
            padded = np.pad(version, ((2, 2), (2, 2), (0, 0)), mode="reflect")
            for oy in range(5):
                for ox in range(5):
                    yield padded[oy:oy + 8, ox:ox + 8]

    assert all(any(np.array_equal(o, c) for c in candidates(i)) for i, o in zip(images, out, strict=True))
    unchanged = sum(np.array_equal(o, i) for i, o in zip(images, out, strict=True))
    assert unchanged < 40  # about 1 in 50 draw no flip and no shift


def test_sweep_flips_exactly_the_given_images_and_crops_windows():
    sweep = _load_tool("research.fastnet_sweep")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    mask = rng.random(50) < 0.5
    out = sweep.flip_and_crop(images, rng, pad=0, flipped=mask)
    np.testing.assert_array_equal(out[mask], images[mask][:, :, ::-1])
    np.testing.assert_array_equal(out[~mask], images[~mask])
    windows = sweep.random_crop(images, 5, rng)
    assert windows.shape == (50, 5, 5, 3)
    assert all(any(np.array_equal(w, i[y:y + 5, x:x + 5]) for y in range(4) for x in range(4))
               for i, w in zip(images, windows, strict=True))


def test_sweep_rejects_an_unknown_variant_by_name(tmp_path):
    sweep = _load_tool("research.fastnet_sweep")
    with pytest.raises(SystemExit, match="unknown variants \\['nope'\\]"):
        sweep.main([str(tmp_path), "base,nope"])


def test_sweep_trains_a_variant_of_the_recipe_and_measures_it_on_the_test_split(tiny_dataset):
    sweep = _load_tool("research.fastnet_sweep")
    overrides = dict(n_epochs=1, batch_size=32, model_options={"widths": [8, 16, 16]}, precision="float32")
    result = sweep.run("tiny", tiny_dataset, **overrides)
    assert result["name"] == "tiny" and result["overrides"] == overrides
    assert result["model_options"] == {"widths": [8, 16, 16], "activation": "gelu_tanh"}  # the recipe's kept
    low_res = sweep.run("low", tiny_dataset, **dict(overrides, n_epochs=2), low_res=(24, 1))
    assert low_res["overrides"]["low_res"] == (24, 1) and 0.0 <= low_res["test_accuracy"] <= 1.0
    n_test = len(tiny_dataset.y_test)
    for key in ("test_accuracy", "test_accuracy_flip_tta"):
        assert 0.0 <= result[key] <= 1.0 and float(result[key] * n_test).is_integer()


def test_shipping_retires_the_superseded_run_and_carries_the_analysis(shipped_runs, tmp_path, monkeypatch):
    import shutil

    tool = _load_tool("ship_run")
    shipped_root, experiments = tmp_path / "artifacts", tmp_path / "experiments"
    monkeypatch.setattr(tool, "SHIPPED", shipped_root)
    monkeypatch.setattr(tool, "EXPERIMENTS", experiments)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "made_by_preset", lambda config, name: True)
    new = tmp_path / "new-run"
    shutil.copytree(shipped_runs["runs"] / "g3-tiny", new)
    (new / "analysis").mkdir()
    (new / "analysis" / "calibration.json").write_text("{}")
    (new / "analysis" / "stamps.json").write_text("{}")
    (new / "analysis" / "neighbours.npz").symlink_to(tmp_path / "elsewhere")  # never followed
    (new / "analysis" / "notes.txt").write_text("not an analysis file")
    shutil.copytree(shipped_runs["runs"] / "demo-tiny", shipped_root / "old-name")
    preset = tool.PRESETS["g3"].shipped_run

    with pytest.raises(SystemExit):
        tool.main([str(new), "--preset", "g3", "--retire", "../experiments"])
    assert (shipped_root / "old-name").is_dir() and not (shipped_root / preset).exists()
    assert tool.main([str(new), "--preset", "g3", "--retire", "old-name"]) == 0
    assert sorted(p.name for p in shipped_root.iterdir()) == [preset]  # the old one left, its record kept
    assert sorted(p.name for p in (experiments / "old-name").iterdir()) == ["config.json", "history.csv",
                                                                          "metrics.json"]
    assert sorted(p.name for p in (shipped_root / preset / "analysis").iterdir()) == ["calibration.json",
                                                                                     "stamps.json"]
    assert not (shipped_root / preset / "checkpoint").exists()


def test_mutation_scores_count_a_crashed_test_run_as_caught_and_name_each_survivor(monkeypatch):
    from tools import mutation

    diffs = {"m.x_f__mutmut_3": '+    order = np.argsort(q, kind="STABLE")', "m.x_f__mutmut_6": "+    return 0"}
    monkeypatch.setattr(mutation, "diff", lambda name: diffs.get(name.removeprefix("cifar_core."), ""))
    statuses = {f"cifar_core.m.x_f__mutmut_{n}": status for n, status in enumerate(
        ["killed", "killed", "segfault", "survived", "timeout", "not checked", "no tests"], start=0)}
    [row] = mutation.summarise(["cifar_core/m.py"], statuses, 60.0)["modules"].values()
    assert (row["mutants"], row["killed"], row["crashed"], row["survived"], row["equivalent"]) == (6, 4, 1, 2, 1)
    assert row["score"] == round(4 / 6, 4) and row["score_without_equivalent"] == round(4 / 5, 4)
    survivors = {s["name"].rsplit("_", 1)[1]: s for s in row["survivors"]}
    assert set(survivors) == {"3", "6"} and survivors["6"]["no_tests"] and not survivors["3"]["no_tests"]
    assert survivors["3"]["equivalent"] and survivors["6"]["equivalent"] is None


def test_a_mutation_run_that_did_not_mutate_a_module_keeps_its_previous_score():
    # A --report-only after a partial run once wrote "not run" over every other module's measurement.
    from tools import mutation

    def row(mutants, score):
        return {"path": "p", "mutants": mutants, "killed": 0, "crashed": 0, "survived": 0, "equivalent": 0,
                "score": score, "score_without_equivalent": score, "survivors": []}

    previous = {"measured_at": "day 1", "seconds": 9.0, "target": 0.85, "remeasured": [{"modules": ["a"]}],
                "modules": {"a": row(10, 0.9), "b": row(20, 0.8)}}
    only_b = {"measured_at": "day 2", "seconds": None, "target": 0.85,
              "modules": {"a": row(0, None), "b": row(30, 0.95), "c": row(0, None)}}
    merged = mutation.merge_into(previous, only_b, seconds=None)
    assert {name: r["score"] for name, r in merged["modules"].items()} == {"a": 0.9, "b": 0.95, "c": None}
    assert merged["measured_at"] == "day 1" and merged["remeasured"] == [{"modules": ["a"]}]  # re-read, not re-run
    rerun = mutation.merge_into(previous, {**only_b, "modules": {"b": row(30, 0.95)}}, seconds=60.0)
    assert rerun["remeasured"][-1] == {"modules": ["b"], "at": "day 2", "seconds": 60.0}
    assert rerun["modules"]["a"]["score"] == 0.9
    everything = {**only_b, "modules": {"a": row(11, 0.7), "b": row(30, 0.95)}}
    assert mutation.merge_into(previous, everything, seconds=60.0) is everything  # a full run starts afresh
    assert mutation.merge_into({}, only_b, seconds=None)["modules"]["a"]["score"] is None


def test_the_listing_cost_tool_times_both_listings_bounded_and_whole(monkeypatch, capsys, tmp_path):
    from cifar_core import jobs, runs
    from tools import listing_cost

    monkeypatch.setattr(runs, "MAX_LISTED_RUNS", 2)  # restored afterwards: the tool lifts both bounds
    monkeypatch.setattr(jobs, "MAX_LISTED_JOBS", 2)
    monkeypatch.setenv("CIFAR_JOBS_DB", str(tmp_path / "unused.sqlite"))
    listed = []
    list_runs = runs.list_runs
    monkeypatch.setattr(runs, "list_runs", lambda root: listed.append(len(list_runs(root)[0])))
    assert listing_cost.main(["--runs", "3", "--jobs", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and listed == [2] * 4 + [3] * 4  # a warm-up call, then three timed
    assert lines[1].startswith("runs folder of 3: ") and lines[2].startswith("job registry of 4: ")
    assert all(line.endswith(" ms bounded") and " ms read whole, " in line for line in lines[1:])


def test_the_step_profile_sums_each_op_type_per_step_over_tensorflow_s_threads():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tool = _load_tool("research.step_profile")
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {1: "block1_conv1/Conv2D:_MklNativeConv2D", 2: "gelu/mul:Mul", 3: "Process", 4: "train_step"}
    for key, name in names.items():
        plane.event_metadata[key].name = name
    compute, python = plane.lines.add(name="tf_Compute/1"), plane.lines.add(name="python")
    for key, ps in [(1, 30e9), (1, 10e9), (2, 4e9), (3, 99e9)]:
        compute.events.add(metadata_id=key, duration_ps=int(ps))
    python.events.add(metadata_id=4, duration_ps=int(500e9))
    table = tool.milliseconds_per_op(space, steps=2)
    assert table == {"_MklNativeConv2D": (20.0, 1.0), "Mul": (2.0, 0.5)}  # the step and Python left out
    assert list(table) == ["_MklNativeConv2D", "Mul"]  # the costliest first
