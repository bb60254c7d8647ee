"""Presets: one shipped run each, made by exactly that preset, with a model file that loads safely."""
import pytest
from helpers import ROOT

from cifar_core import runs
from cifar_core.__main__ import build_parser, config_from_args
from cifar_core.config import PRESETS, made_by_preset, preset_config
from cifar_core.export import EXPORT_DIR

SHIPPED = ROOT / "artifacts" / "runs"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_shipped_run_was_made_by_its_preset(name):
    run_dir = SHIPPED / PRESETS[name].shipped_run
    shipped = runs.read_config(run_dir)
    assert shipped.precision in ("float32", "mixed_bfloat16")  # the precision it ran in, never "auto"
    # Everything but where the data was on the machine that trained it.
    assert made_by_preset(shipped, name), f"{name}: preset and shipped run differ"
    assert runs.read_metrics(run_dir)["model"] == PRESETS[name].model


def test_the_repository_ships_one_run_per_preset_and_nothing_else():
    shipped = sorted(p.name for p in SHIPPED.iterdir() if p.is_dir())
    assert shipped == sorted(preset.shipped_run for preset in PRESETS.values())
    for run_dir in SHIPPED.iterdir():
        # The writer's lock and a user's exports (git-ignored) are local only.
        present = {p.name for p in run_dir.iterdir() if p.name not in (runs.LOCK_FILE, EXPORT_DIR)}
        assert {*runs.SHIPPED_FILES, "analysis"} <= present, run_dir.name
        assert present <= {*runs.SHIPPED_FILES, *runs.SHIPPED_IF_PRESENT, "analysis"}, run_dir.name


def test_every_shipped_run_ships_every_analysis_of_its_current_model():
    from cifar_core import analysis
    from cifar_core.analysis import files

    for run_dir in SHIPPED.iterdir():
        fingerprint = analysis.model_fingerprint(run_dir)
        for name in analysis.ANALYSES:
            assert files.stamped_fingerprint(analysis.analysis_path(run_dir, name)) == fingerprint, (run_dir, name)
        neighbours = run_dir / analysis.ANALYSIS_DIR / analysis.NEIGHBOURS_FILE
        assert files.stamped_fingerprint(neighbours) == fingerprint, run_dir


def test_every_shipped_run_reads_cleanly_through_the_validating_readers():
    found, problems = runs.list_runs(SHIPPED)
    assert problems == [] and len(found) == len(PRESETS)
    for run in found:
        assert runs.read_history(run.path) and runs.read_status(run.path)["state"] == "completed"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_shipped_model_file_loads_through_the_safe_loader(name):
    from cifar_core.models.loading import load_model_file

    run_dir = SHIPPED / PRESETS[name].shipped_run
    model, size = load_model_file(run_dir / runs.MODEL_FILE, expected_classes=10)
    assert size == runs.read_config(run_dir).input_size == runs.read_metrics(run_dir)["input_size"]
    assert model.output_shape == (None, 10)


def test_the_cli_trains_a_preset_with_the_flags_on_top():
    args = build_parser().parse_args(["train", "--preset", "lite0-224", "--epochs", "2", "--data", "x.tar.gz"])
    config = config_from_args(args)
    assert config == preset_config("lite0-224", n_epochs=2, data="x.tar.gz")
    assert config.input_size == 224 and config.fine_tune_epochs == 4 and config.n_epochs == 2


def test_a_distilled_preset_was_taught_by_the_shipped_teacher_byte_for_byte():
    """Its teacher is named by run: retraining the teacher's preset changes what the student learned
    from, so the shipped student must say which model file taught it, and that file must be the one shipped."""
    import hashlib

    taught = {name: preset for name, preset in PRESETS.items() if preset.settings.get("teacher")}
    assert taught, "no preset distils"
    shipped_runs = {preset.shipped_run for preset in PRESETS.values()}
    for name, preset in taught.items():
        teacher = preset.settings["teacher"]
        assert teacher in shipped_runs, name
        metrics = runs.read_metrics(SHIPPED / preset.shipped_run)
        model_hash = hashlib.sha256((SHIPPED / teacher / runs.MODEL_FILE).read_bytes()).hexdigest()
        assert metrics["teacher_run"] == teacher and metrics["teacher_model_sha256"] == model_hash, name
        assert metrics["teacher_seconds"] > 0 and metrics["train_seconds"] > metrics["teacher_seconds"], name
