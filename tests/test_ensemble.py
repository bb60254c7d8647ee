"""Ensembles of finished runs: the mean of saved probabilities, on one test split only."""
import json

import numpy as np
import pytest

from cifar_core import ensemble, runs
from cifar_core.__main__ import main
from cifar_core.errors import RunFolderError

CLASSES = ["cat", "dog", "ship"]
LABELS = np.array([0, 1, 2, 0])


def _one_hot_ish(top: list[int], confidence: float) -> np.ndarray:
    """Probabilities whose top class per image is `top`, at `confidence`."""
    probs = np.full((len(top), len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1), np.float32)
    probs[np.arange(len(top)), top] = confidence
    return probs


def _run(root, name, probs, probs_tta=None, labels=LABELS, classes=CLASSES, train_seconds=60.0, data=True):
    run_dir = root / name
    runs.write_predictions(run_dir, labels, probs, probs_tta)
    metrics = {"test_accuracy": 0.5, "model": f"model-{name}"}
    if train_seconds is not None:
        metrics["train_seconds"] = train_seconds
    runs.atomic_write_json(run_dir / runs.METRICS_FILE, metrics)
    if data:
        runs.atomic_write_json(run_dir / runs.DATA_FILE, {"class_names": classes})
    return run_dir


def test_the_ensemble_is_the_mean_of_the_members_probabilities(tmp_path):
    # Each member is wrong on a different image; where it is wrong it is unsure, so the others outvote it.
    a = _run(tmp_path, "a", _one_hot_ish([0, 1, 2, 1], 0.9) * [[1], [1], [1], [0.5]] + [[0], [0], [0], [0.1]])
    b = _run(tmp_path, "b", _one_hot_ish([0, 1, 0, 0], 0.9) * [[1], [1], [0.5], [1]] + [[0], [0], [0.1], [0]])
    c = _run(tmp_path, "c", _one_hot_ish([0, 2, 2, 0], 0.5), train_seconds=30.0)
    result = ensemble.measure_ensemble([a, b, c])
    assert [m["test_accuracy"] for m in result["members"]] == [0.75, 0.75, 0.75]
    assert result["test_accuracy"] == 1.0 and result["n_test"] == 4 and result["class_names"] == CLASSES
    assert result["members"][0] == {"run": "a", "model": "model-a", "train_seconds": 60.0, "test_accuracy": 0.75}
    assert result["train_seconds"] == 150.0
    # The members agree on the first image only (b says 0 on image 3, a says 1 on image 4).
    assert result["agreement"] == {"unanimous_fraction": 0.25, "accuracy_unanimous": 1.0, "accuracy_split": 1.0}
    assert "test_accuracy_tta" not in result and "agreement_tta" not in result  # no member saved TTA


def test_mean_probabilities_and_agreement_by_hand():
    first = np.array([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    second = np.array([[0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    combined = ensemble.mean_probabilities([first, second])
    np.testing.assert_allclose(combined, [[0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    # Unanimous on images 2 and 3 (right on 2, wrong on 3: the label is 1); split on image 1 (right).
    assert ensemble.agreement([first, second], np.array([1, 1, 1]), combined) == {
        "unanimous_fraction": pytest.approx(2 / 3), "accuracy_unanimous": 0.5, "accuracy_split": 1.0}
    everyone = ensemble.agreement([first, first], np.array([0, 1, 0]), first)
    assert everyone == {"unanimous_fraction": 1.0, "accuracy_unanimous": 1.0, "accuracy_split": None}


def test_tta_is_measured_only_where_every_member_saved_it(tmp_path):
    right, wrong = _one_hot_ish([0, 1, 2, 0], 0.8), _one_hot_ish([1, 1, 2, 0], 0.8)
    a = _run(tmp_path, "a", wrong, probs_tta=right)
    b = _run(tmp_path, "b", wrong, probs_tta=right)
    result = ensemble.measure_ensemble([a, b])
    assert (result["test_accuracy"], result["test_accuracy_tta"]) == (0.75, 1.0)
    assert [m["test_accuracy_tta"] for m in result["members"]] == [1.0, 1.0]
    assert result["agreement_tta"]["unanimous_fraction"] == 1.0
    without = ensemble.measure_ensemble([a, _run(tmp_path, "c", wrong)])
    assert "test_accuracy_tta" not in without and all("test_accuracy_tta" not in m for m in without["members"])


def test_members_measured_on_another_test_split_are_refused(tmp_path):
    probs = _one_hot_ish([0, 1, 2, 0], 0.8)
    a = _run(tmp_path, "a", probs)
    reordered = _run(tmp_path, "reordered", probs, labels=LABELS[::-1])
    with pytest.raises(RunFolderError, match="^reordered was measured on another test split than a "
                                             r"\(4 against 4 images, or in another order\)$"):
        ensemble.measure_ensemble([a, reordered])
    shorter = _run(tmp_path, "shorter", probs[:3], labels=LABELS[:3])
    with pytest.raises(RunFolderError, match=r"\(3 against 4 images"):
        ensemble.measure_ensemble([a, shorter])
    renamed = _run(tmp_path, "renamed", probs, classes=["cat", "dog", "plane"])
    with pytest.raises(RunFolderError, match=r"^renamed has other classes than a: \['cat', 'dog', 'plane'\]$"):
        ensemble.measure_ensemble([a, renamed])
    unknown = _run(tmp_path, "unknown", probs, data=False)
    with pytest.raises(RunFolderError, match="^no data.json in unknown: which test split"):
        ensemble.measure_ensemble([a, unknown])
    empty = _run(tmp_path, "empty", probs[:0], labels=LABELS[:0])
    with pytest.raises(RunFolderError, match="^predictions.npz in empty holds no test images$"):
        ensemble.measure_ensemble([empty, a])
    wide = _run(tmp_path, "wide", np.full((4, 4), 0.25, np.float32), classes=CLASSES)
    with pytest.raises(RunFolderError, match="^wide's predictions have 4 classes; its data.json names 3$"):
        ensemble.measure_ensemble([a, wide])


def test_the_member_count_is_bounded_and_a_run_counts_once(tmp_path):
    probs = _one_hot_ish([0, 1, 2, 0], 0.8)
    a = _run(tmp_path, "a", probs)
    with pytest.raises(RunFolderError, match="^an ensemble takes 2 to 16 runs; 1 given$"):
        ensemble.measure_ensemble([a])
    with pytest.raises(RunFolderError, match="; 17 given$"):
        ensemble.measure_ensemble([a] * 17)
    with pytest.raises(RunFolderError, match="^a run is named twice: a, a$"):
        ensemble.measure_ensemble([a, tmp_path / "." / "a"])
    many = [_run(tmp_path, f"m{i}", probs) for i in range(ensemble.MAX_MEMBERS)]
    assert len(ensemble.measure_ensemble(many)["members"]) == ensemble.MAX_MEMBERS


def test_the_members_probabilities_are_bounded_together_as_they_are_read(tmp_path, monkeypatch):
    probs = _one_hot_ish([0, 1, 2, 0], 0.8)  # 12 values; 24 with TTA
    a, b = _run(tmp_path, "a", probs, probs_tta=probs), _run(tmp_path, "b", probs)
    monkeypatch.setattr(ensemble, "MAX_VALUES", 36)
    assert len(ensemble.measure_ensemble([a, b])["members"]) == 2  # 24 + 12: at the bound
    monkeypatch.setattr(ensemble, "MAX_VALUES", 35)
    with pytest.raises(RunFolderError, match="^these runs' predictions hold more than 35 probabilities together "
                                             r"\(at b\); an ensemble reads at most that many$"):
        ensemble.measure_ensemble([a, b])
    monkeypatch.setattr(ensemble, "MAX_VALUES", 23)
    with pytest.raises(RunFolderError, match=r"\(at a\)"):  # refused at the first member over, not after all
        ensemble.measure_ensemble([a, b])


def test_a_damaged_member_is_one_clear_error_and_unknown_training_time_is_not_summed(tmp_path):
    a = _run(tmp_path, "a", _one_hot_ish([0, 1, 2, 0], 0.8))
    b = _run(tmp_path, "b", _one_hot_ish([0, 1, 2, 0], 0.8), train_seconds=None)
    assert ensemble.measure_ensemble([a, b])["train_seconds"] is None
    (b / runs.PREDICTIONS_FILE).write_bytes(b"not an npz")
    with pytest.raises(RunFolderError, match="^corrupt predictions.npz in b: "):
        ensemble.measure_ensemble([a, b])
    with pytest.raises(RunFolderError, match=f"^not a run folder: {tmp_path / 'missing'}$"):
        ensemble.measure_ensemble([a, tmp_path / "missing"])
    (b / runs.PREDICTIONS_FILE).unlink()
    with pytest.raises(RunFolderError, match="^no predictions.npz in b$"):
        ensemble.measure_ensemble([a, b])


def test_the_command_prints_each_member_and_the_ensemble_and_writes_json(tmp_path, capsys):
    right, wrong = _one_hot_ish([0, 1, 2, 0], 0.8), _one_hot_ish([1, 1, 2, 0], 0.6)
    a = _run(tmp_path, "a", right, probs_tta=right)
    b = _run(tmp_path, "b", wrong, probs_tta=wrong)
    output = tmp_path / "ensemble.json"
    assert main(["ensemble", str(a), str(b), "--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["a (model-a): 100.00%, with flip TTA 100.00%", "b (model-b): 75.00%, with flip TTA 75.00%",
                     "ensemble of 2: 100.00%, with flip TTA 100.00% on 4 test images",
                     "all members agree on 75.0% of the images: 100.00% right there, 100.00% elsewhere"]
    assert json.loads(output.read_text())["test_accuracy_tta"] == 1.0
    assert main(["ensemble", str(a)]) == 2
    assert capsys.readouterr().err == "error: an ensemble takes 2 to 16 runs; 1 given\n"


def test_a_member_is_held_as_float32_probabilities_and_its_model_named_or_unknown(tmp_path):
    probs = _one_hot_ish([0, 1, 2, 0], 0.8)
    a = _run(tmp_path, "a", probs, probs_tta=probs)
    member = ensemble.read_member(a)
    # float16 on disk, float32 in memory (the bound MAX_MEMBERS is sized by), integer labels
    assert (member.probs.dtype, member.probs_tta.dtype, member.y_true.dtype) == (np.float32, np.float32, np.int64)
    assert member.model == "model-a"
    runs.atomic_write_json(a / runs.METRICS_FILE, {"test_accuracy": 0.5})  # made before metrics named the model
    assert ensemble.read_member(a).model == "?"
    (a / runs.METRICS_FILE).unlink()
    assert (ensemble.read_member(a).model, ensemble.read_member(a).train_seconds) == ("?", None)
    # A damaged metrics.json only labels the member: its probabilities still count.
    (a / runs.METRICS_FILE).write_text('{"test_accuracy": ')
    assert (ensemble.read_member(a).model, ensemble.read_member(a).train_seconds) == ("?", None)
    b = _run(tmp_path, "b", probs)
    assert ensemble.measure_ensemble([a, b])["test_accuracy"] == 1.0
