"""The command line: real runs end to end, and one-line errors for bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, png_bytes

from cifar_core import runs
from cifar_core.__main__ import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained_run(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "cli-run"
    code, out, err = run_cli(capsys, "train", "--model", "demo", "--data", str(image_folder), "--epochs", "1",
                             "--batch-size", "4", "--run-dir", str(run_dir), "--val-fraction", "0.25")
    assert code == 0, err
    assert "test accuracy" in out
    return run_dir


def test_train_evaluate_predict(trained_run, tmp_path, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["class_names"] == ["cat", "dog", "ship"]
    code, out, _ = run_cli(capsys, "evaluate", str(trained_run))
    assert code == 0 and "test accuracy" in out
    before = (trained_run / "metrics.json").read_bytes()
    code, _, err = run_cli(capsys, "evaluate", str(trained_run), "--input-size", "64")
    assert code == 2 and err == ("error: cli-run: a demo model takes 32 px images only; another input size is "
                                 "for transfer models\n")
    assert (trained_run / "metrics.json").read_bytes() == before
    code, out, _ = run_cli(capsys, "evaluate", str(trained_run), "--input-size", "32")  # its own size: as before
    assert code == 0 and out.startswith("test accuracy: ") and " px" not in out
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(np.full((50, 70, 3), 120, np.uint8)))
    code, out, _ = run_cli(capsys, "predict", "--run", str(trained_run), str(photo))
    assert code == 0
    line = out.strip()
    assert line.startswith(f"{photo}: ")
    # The three classes with the model's own probabilities, most likely first.
    from cifar_core.imaging import decode_image_file
    from cifar_core.inference import classify_arrays, load_run_model

    run = load_run_model(trained_run)
    probs = classify_arrays(run, [decode_image_file(photo)])[0]
    expected = ", ".join(f"{run.class_names[i]} {probs[i]:.1%}" for i in np.argsort(-probs))
    assert line == f"{photo}: {expected}"


def test_evaluate_is_one_more_writer_and_waits_its_turn(trained_run, capsys):
    # evaluate rewrote metrics.json and predictions.npz without the run's writer lock: beside an
    # analysis, an export or a resume of the same run, two processes wrote one folder.
    from cifar_core import runs

    before = {name: (trained_run / name).read_bytes() for name in (runs.METRICS_FILE, runs.PREDICTIONS_FILE)}
    with runs.RunWriter(trained_run):
        code, _, err = run_cli(capsys, "evaluate", str(trained_run))
        assert code == 2 and err.startswith(f"error: cli-run is being written by another process (pid {os.getpid()})")
        assert {name: (trained_run / name).read_bytes() for name in before} == before
        code, out, _ = run_cli(capsys, "evaluate", str(trained_run), "--input-size", "32")  # its own size: a writer
        assert code == 2
    code, out, _ = run_cli(capsys, "evaluate", str(trained_run))
    assert code == 0 and "test accuracy" in out and not runs.writer_alive(trained_run)


def test_a_measure_at_another_input_size_says_so(capsys, monkeypatch):
    from cifar_core import inference

    measured = {"test_accuracy": 0.9125, "test_loss": 0.3, "test_accuracy_tta": 0.925, "data": "CIFAR-10",
                "input_size": 160, "trained_input_size": 128}
    monkeypatch.setattr(inference, "evaluate_run", lambda run_dir, data, size: dict(measured, input_size=size))
    code, out, _ = run_cli(capsys, "evaluate", "some-run", "--input-size", "160")
    assert code == 0 and out == ("test accuracy: 0.9125  (loss 0.3000; with flip TTA 0.9250) on CIFAR-10 at 160 px "
                                 "(the model's own size is 128 px; the run's files are unchanged)\n")


def test_predict_reports_bad_images_and_continues(trained_run, tmp_path, capsys):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "predict", "--run", str(trained_run), str(bad), str(good))
    assert code == 2
    assert "bad.jpg: not an image" in err and "good.png:" in out


def test_batch_predict_reports_each_unreadable_path_and_carries_on(trained_run, tmp_path, capsys):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    code, out, err = run_cli(capsys, "predict", "--run", str(trained_run), str(loop), "/dev/zero", str(fifo),
                             str(tmp_path), str(good))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "cannot open" in lines[0] and "device, pipe" in lines[1] and "device, pipe" in lines[2]
    assert "is a folder" in lines[3]
    assert out.startswith(f"{good}: ") and out.count("%") == 3


@pytest.mark.parametrize("field,value,message", [
    ("n_epochs", 1.5, "n_epochs must be an integer"), ("learning_rate", "fast", "learning_rate must be a finite"),
    ("plateau_factor", 2, "plateau_factor must be in (0, 1)"), ("weight_decay", -1, "weight_decay must be in"),
    ("tta", "no", "tta must be true or false"),
])
def test_a_bad_config_file_is_one_line_before_any_run_folder(tmp_path, capsys, field, value, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "demo", field: value}))
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "deep.json"))
    assert code == 2 and "nests deeper" in err


def test_resume_from_the_cli(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", "--model", "demo", "--data", str(image_folder), "--epochs", "2",
                   "--batch-size", "4", "--run-dir", str(run_dir))[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", "--run-dir", str(run_dir))
    assert code == 2 and "already completed" in err


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "nope", "--data", "x"], "unknown model 'nope'"),
    (["train", "--model", "demo", "--data", "/no/such/archive.tar.gz"], "data source not found"),
    (["train", "--model", "demo", "--data", "keras", "--epochs", "0"], "n_epochs must be in [1, 10000]"),
    (["train", "--model", "demo", "--augment", "flip,warp"], "augmentations"),
    (["train", "--resume"], "--resume needs --run-dir"),
    (["train"], "train needs --preset NAME, --model NAME or --config FILE"),
    (["train", "--preset", "fastest"], "unknown preset 'fastest'"),
    (["train", "--preset", "demo", "--model", "g3"], "drop --model and --config"),
    (["evaluate", "/no/such/run"], "run folder|not found|no trained model"),
    (["predict", "--run", "/no/such/run", "x.png"], "no trained model"),
])
def test_bad_input_is_one_line_and_nonzero(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message.split("|")[0] in err or any(m in err for m in message.split("|"))


def test_corrupt_archive_leaves_no_run_folder(tmp_path, capsys):
    corrupt = tmp_path / "broken.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    code, _, err = run_cli(capsys, "train", "--model", "demo", "--data", str(corrupt))
    assert code == 2 and "corrupt" in err
    assert not runs.runs_root().exists() or not any(runs.runs_root().iterdir())


def test_a_real_process_prints_no_traceback(tmp_path):
    not_an_image = tmp_path / "cat.jpg"
    not_an_image.write_text("hello")
    result = subprocess.run([sys.executable, "-m", "cifar_core", "predict", "--run", str(tmp_path), str(not_an_image)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "g3" in out and "fastnet" in out and "demo" in out


def test_a_run_is_reproduced_from_its_saved_config(trained_run, tmp_path, capsys):
    again = tmp_path / "again"
    code, _, err = run_cli(capsys, "train", "--config", str(trained_run / "config.json"), "--run-dir", str(again))
    assert code == 0, err
    assert json.loads((again / "config.json").read_text()) == json.loads((trained_run / "config.json").read_text())
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (trained_run, again))
    assert first["epochs_run"] == second["epochs_run"] and first["n_train"] == second["n_train"]


def test_train_flags_reach_the_config(tmp_path):
    from cifar_core.__main__ import build_parser, config_from_args

    def config_for(*argv):
        return config_from_args(build_parser().parse_args(["train", "--data", "keras", *argv]))

    config = config_for("--model", "lite0", "--image-size", "224", "--fine-tune-layers", "40")
    assert (config.fine_tune_layers, config.input_size) == (40, 224)
    assert config.batch_size == 32  # the transfer recipe halves its batch above 160 px
    assert config_for("--model", "lite0").fine_tune_layers == 1000  # the recipe's default when the flag is absent
    saved = tmp_path / "config.json"
    saved.write_text(config.to_json())
    again = config_for("--config", str(saved), "--fine-tune-layers", "12", "--augment", "none")
    assert (again.fine_tune_layers, again.input_size, again.augmentations) == (12, 224, ())
    cutout = config_for("--model", "fastnet", "--augment", "flip,cutout", "--cutout-size", "8")
    assert (cutout.augmentations, cutout.cutout_size) == (("flip", "cutout"), 8)
    muon = config_for("--model", "fastnet", "--optimizer", "muon", "--muon-scale", "0.3")
    assert (muon.optimizer, muon.muon_scale) == ("muon", 0.3)


FLAG_VALUES = {  # field -> (what the command line says, what the config then holds)
    "data": ("x.tar.gz", "x.tar.gz"), "input_size": ("64", 64), "n_epochs": ("3", 3), "batch_size": ("16", 16),
    "limit": ("100", 100), "val_fraction": ("0.2", 0.2), "optimizer": ("sgd", "sgd"),
    "learning_rate": ("0.5", 0.5), "weight_decay": ("0.01", 0.01), "momentum": ("0.8", 0.8),
    "nesterov": (None, True), "muon_scale": ("0.3", 0.3), "schedule": ("cosine", "cosine"),
    "warmup_fraction": ("0.1", 0.1), "plateau_patience": ("4", 4), "plateau_factor": ("0.3", 0.3),
    "early_stopping_patience": ("5", 5), "label_smoothing": ("0.05", 0.05), "class_weights": (None, True),
    "ema_momentum": ("0.99", 0.99), "translate_fraction": ("0.2", 0.2), "rotate_fraction": ("0.1", 0.1),
    "zoom_fraction": ("0.2", 0.2), "cutout_size": ("6", 6), "tta": (None, True), "random_state": ("9", 9),
    "precision": ("mixed_bfloat16", "mixed_bfloat16"), "fine_tune_epochs": ("2", 2),
    "fine_tune_learning_rate": ("0.001", 0.001), "fine_tune_layers": ("7", 7),
    "distribute": ("mirrored", "mirrored"), "low_res_size": ("16", 16), "low_res_epochs": ("1", 1),
    "teacher": ("lite0-224-prog-cifar10", "lite0-224-prog-cifar10"), "teacher_weight": ("0.7", 0.7),
}
# Flags that are only valid with others: what each needs beside it.
COMPANION_FLAGS = {"low_res_size": ["--low-res-epochs", "1", "--fine-tune-epochs", "1"],
                   "low_res_epochs": ["--low-res-size", "16", "--fine-tune-epochs", "1"]}


def test_every_config_field_is_a_flag_of_the_same_name():
    from cifar_core.__main__ import _NOT_FLAGS, build_parser, config_from_args
    from cifar_core.config import FIELD_KINDS

    assert set(FLAG_VALUES) == set(FIELD_KINDS) - set(_NOT_FLAGS)
    for name, (given, expected) in FLAG_VALUES.items():
        flag = "--" + name.replace("_", "-")
        argv = ["train", "--model", "demo", flag] + ([] if given is None else [given]) + COMPANION_FLAGS.get(name, [])
        assert getattr(config_from_args(build_parser().parse_args(argv)), name) == expected, name
    config = config_from_args(build_parser().parse_args(["train", "--model", "demo", "--no-tta", "--seed", "7",
                                                         "--lr", "0.5", "--epochs", "2", "--augment", "crop"]))
    assert (config.tta, config.random_state, config.learning_rate, config.n_epochs) == (False, 7, 0.5, 2)
    assert config.augmentations == ("crop",)
