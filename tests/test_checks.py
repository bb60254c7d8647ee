"""The config checks train() and the dashboard's launch share (training/checks.py): each refusal
on its own, and the recipes that must pass."""
import pytest

from cifar_core import runs
from cifar_core.config import PRESETS, preset_config, recipe_config
from cifar_core.errors import ConfigError
from cifar_core.training.checks import check_training_config


@pytest.fixture
def teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path))
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / runs.MODEL_FILE).write_bytes(b"")
    return "finished"


REFUSED = {
    "stage settings on a homebrew model": (
        dict(model="demo", low_res_epochs=1, low_res_size=16, fine_tune_epochs=1), "^low_res_size and low_res_epochs "
        "are for transfer models' fine-tuning; demo trains in one stage at its input size$"),
    "altflip with low-res fine-tuning": (
        dict(model="lite0", low_res_epochs=1, low_res_size=16, fine_tune_epochs=1, augmentations=("altflip",)),
        "^altflip cannot be combined with low_res_epochs; use flip$"),
    "distribute on a transfer model": (dict(model="lite0", distribute="mirrored"), "transfer models train in stages"),
    "a teacher for a transfer model": (dict(model="lite0", teacher="finished"), "teacher is for homebrew models"),
    "a teacher with --distribute": (dict(model="demo", teacher="finished", distribute="mirrored",
                                         augmentations=("flip",)), "teacher cannot be combined with --distribute"),
    "a teacher that never finished": (dict(model="demo", teacher="missing"), "teacher 'missing' is not a finished run"),
}


@pytest.mark.parametrize("settings, message", REFUSED.values(), ids=REFUSED.keys())
def test_each_setting_a_run_cannot_use_is_refused(teacher, settings, message):
    settings = dict(settings)
    with pytest.raises(ConfigError, match=message):
        check_training_config(recipe_config(settings.pop("model"), **settings))


def test_what_a_run_can_use_passes(teacher):
    check_training_config(recipe_config("demo", teacher=teacher))
    check_training_config(recipe_config("lite0", low_res_epochs=1, low_res_size=16, fine_tune_epochs=1))
    check_training_config(recipe_config("demo", distribute="mirrored", augmentations=("flip",)))
    for preset in PRESETS:
        config = preset_config(preset, data="x")
        if config.teacher is None:  # a preset's teacher is a shipped run, not in this test's runs folder
            check_training_config(config)
