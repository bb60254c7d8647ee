"""The documents read as a product: generated figures match the runs, no stale references."""
import json
import re

from helpers import ROOT

BENCHMARKS = ROOT / "BENCHMARKS.md"
GENERATED = re.compile(r"<!-- generated:([a-z-]+) -->.*?<!-- /generated:\1 -->", re.S)
# Figures in hand-written text that no run folder holds: measured elsewhere, with their source.
EXTERNAL = {
    "89.63%": "airbench94's own PyTorch code on this machine and data (MACHINE-NOTES)",
    "90.82%": "airbench94 with 6-view TTA, same measurement",
}


def test_generated_tables_match_the_run_folders():
    from tools import report

    assert report.main(["--check"]) == 0


def _accuracy_figures() -> set[str]:
    from cifar_core import runs

    figures = set()
    for root in (ROOT / "artifacts" / "runs", ROOT / "docs" / "experiments", ROOT / "docs" / "seeds"):
        for run in runs.list_runs(root)[0]:
            for key in ("test_accuracy", "test_accuracy_tta", "test_accuracy_head"):
                if run.metrics.get(key) is not None:
                    figures.add(f"{run.metrics[key]:.2%}")
    for measured in (ROOT / "docs" / "ensembles").glob("*.json"):  # `python -m cifar_core ensemble ... --output`
        together = json.loads(measured.read_text())
        figures.update(f"{together[key]:.2%}" for key in ("test_accuracy", "test_accuracy_tta") if key in together)
    return figures


def test_every_accuracy_in_the_results_page_comes_from_a_run():
    hand_written = GENERATED.sub("", BENCHMARKS.read_text())
    quoted = set(re.findall(r"\b\d{1,3}\.\d\d%", hand_written))
    unknown = quoted - _accuracy_figures() - set(EXTERNAL)
    assert not unknown, f"figures in BENCHMARKS.md that no run's metrics.json holds: {sorted(unknown)}"


def test_the_results_page_is_short_and_self_contained():
    text = BENCHMARKS.read_text()
    assert len(text.splitlines()) <= 300  # grew by the export and serving tables
    for pattern in (r"\bissue \d", r"git checkout", r"\b[0-9a-f]{7,40}\b(?=.*commit)"):
        assert not re.search(pattern, text, re.I), pattern
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith(("http", "../shared")):
            assert (ROOT / link).exists(), link


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_link_to_a_section_lands_on_a_heading():
    documents = [ROOT / "README.md", BENCHMARKS, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        for path, fragment in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", document.read_text()):
            target = (document.parent / path) if path else document
            if target.suffix == ".md" and fragment not in _anchors(target.read_text()):
                broken.append(f"{document.name} -> {path or document.name}#{fragment}")
    assert not broken, broken


def _record(source, target, **changes):
    import json
    import shutil

    target.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "history.csv"):
        shutil.copy(source / name, target / name)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


def test_seed_records_group_with_their_shipped_run_and_anything_else_is_refused(tmp_path, monkeypatch):
    import json

    import pytest

    from tools import report

    shipped_run = ROOT / "artifacts" / "runs" / "fastnet-tanhgelu-cifar10"
    monkeypatch.setattr(report, "SHIPPED", tmp_path / "runs")
    monkeypatch.setattr(report, "SEEDS", tmp_path / "seeds")
    _record(shipped_run, tmp_path / "runs" / shipped_run.name)
    # Trained by newer code: its config also names fields the shipped run's predates, at their defaults.
    replicate = _record(shipped_run, tmp_path / "seeds" / "fastnet-seed7", random_state=7, low_res_size=None,
                        low_res_epochs=0)
    metrics = json.loads((replicate / "metrics.json").read_text())
    (replicate / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 0.9}))
    assert [run.run_id for run in report.seed_groups()["fastnet"]] == [shipped_run.name, "fastnet-seed7"]
    shipped_accuracy = json.loads((shipped_run / "metrics.json").read_text())["test_accuracy"]
    mean = (shipped_accuracy + 0.9) / 2
    assert f"**{mean:.2%}**" in report.seed_table() and "| `fastnet` | 0, 7 | 2 |" in report.seed_table()
    longer = _record(shipped_run, tmp_path / "seeds" / "fastnet-longer", random_state=8, n_epochs=40)
    with pytest.raises(SystemExit, match="fastnet-longer"):
        report.seed_groups()
    longer.rename(tmp_path / "elsewhere")
    _record(shipped_run, tmp_path / "seeds" / "fastnet-again")  # the shipped run's own seed: no replicate
    with pytest.raises(SystemExit, match="fastnet-again"):
        report.seed_groups()


def test_a_transfer_comparison_reads_as_its_recipes_stretches():
    from tools import report

    comparison = {"model": "lite0-224", "kind": "transfer", "n_train": 47_500, "speedup": 2.0, "steps": [
        {"step": "previous recipe", "fine_tune_layers": 1000, "fine_tune_minutes": 60.0,
         "stretches": [{"size": 224, "epochs": 4, "images_per_second": 52.8}]},
        {"step": "today's recipe", "fine_tune_layers": 40, "fine_tune_minutes": 30.0,
         "stretches": [{"size": 128, "epochs": 1, "images_per_second": 190.0},
                       {"size": 224, "epochs": 3, "images_per_second": 70.25}]}]}
    text = report._transfer_comparison(comparison)
    assert "projected over its epochs of 47,500 images: **2.00x**" in text
    assert "| previous recipe | all | 4 x 224 px at 52.8 images/s | 60.0 min | 1.00x |" in text
    assert ("| today's recipe | top 40 of 49 | 1 x 128 px at 190.0 images/s + 3 x 224 px at 70.2 images/s | 30.0 min "
            "| 2.00x |") in text
    # A bench that measured the peak says how much of it each stretch's step gets.
    comparison["steps"][1]["stretches"][1].update(train_gflops_per_second=55.4, percent_of_conv_peak=24.8)
    assert "3 x 224 px at 70.2 images/s (55 GFLOP/s, 25% of peak) | 30.0 min" in report._transfer_comparison(comparison)


def test_the_per_cpu_bench_table_has_one_row_per_bench_file(tmp_path, monkeypatch):
    import json

    from tools import report

    def bench(cpu, conv, fastnet=None, speedups=()):
        training = [{"model": "g3", "train_images_per_second": 1000.0, "percent_of_conv_peak": 50.4,
                     "epoch_minutes_50k": 0.8}]
        if fastnet:
            training.append({"model": "fastnet", "train_images_per_second": fastnet, "percent_of_conv_peak": 61.0,
                             "epoch_minutes_50k": 50_000 / fastnet / 60})
        return {"machine": {"cpu": cpu}, "measured_at": "2026-12-01T10:00:00", "training": training,
                "peaks": {"float32": {"conv_gflops": conv}, "mixed_bfloat16": {"conv_gflops": 2 * conv}},
                "comparison": [{"model": m, "speedup": x} for m, x in speedups]}

    main, others = tmp_path / "bench-results.json", tmp_path / "cpus"
    others.mkdir()
    main.write_text(json.dumps(bench("Zen 9", 1000.0, 500.0, [("fastnet", 1.5), ("g3", 1.25)])))
    old_cpu = bench("Old CPU", 100.0)
    old_cpu["training"].append({"model": "stage", "train_images_per_second": 300.0, "percent_of_conv_peak": 45.0,
                                "epoch_minutes_50k": 2.8})  # a preset's row, by its name
    (others / "b.json").write_text(json.dumps(old_cpu))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "BENCH", main)
    monkeypatch.setattr(report, "BENCH_CPUS", others)
    rows = report.bench_cpus_table().splitlines()[2:]
    assert rows == [
        "| Zen 9 ([bench-results.json](bench-results.json)) | 2026-12-01 | 1,000 / 2,000 | 500 (61%) | 1,000 (50%) "
        "| — | — | 1.67 min | fastnet 1.50x, g3 1.25x |",
        "| Old CPU ([b.json](cpus/b.json)) | 2026-12-01 | 100 / 200 | — | 1,000 (50%) | — | 300 (45%) | — | — |"]


def test_the_bench_table_says_whether_the_peaks_held_through_the_call():
    from tools import report

    assert report._peaks_note({"peaks": {}}) == ""  # a file from before the check says nothing
    held = {"peaks_after": {"mixed_bfloat16": {"conv_gflops": 917.1}}, "peaks_held": True}
    assert report._peaks_note(held) == (" The peaks measured again at the call's end held "
                                        "(bf16 convolution 917 GFLOP/s).")
    moved = {"peaks_after": {"float32": {"conv_gflops": 2257.2}}, "peaks_held": False}
    assert "moved by more than 20%" in report._peaks_note(moved) and "2,257" in report._peaks_note(moved)
