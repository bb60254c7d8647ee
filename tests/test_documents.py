"""The documents read as a product: generated figures match the runs, no stale references."""
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
    for root in (ROOT / "artifacts" / "runs", ROOT / "docs" / "experiments"):
        for run in runs.list_runs(root)[0]:
            for key in ("test_accuracy", "test_accuracy_tta", "test_accuracy_head"):
                if run.metrics.get(key) is not None:
                    figures.add(f"{run.metrics[key]:.2%}")
    return figures


def test_every_accuracy_in_the_results_page_comes_from_a_run():
    hand_written = GENERATED.sub("", BENCHMARKS.read_text())
    quoted = set(re.findall(r"\b\d{1,3}\.\d\d%", hand_written))
    unknown = quoted - _accuracy_figures() - set(EXTERNAL)
    assert not unknown, f"figures in BENCHMARKS.md that no run's metrics.json holds: {sorted(unknown)}"


def test_the_results_page_is_short_and_self_contained():
    text = BENCHMARKS.read_text()
    assert len(text.splitlines()) <= 250
    for pattern in (r"\bissue \d", r"git checkout", r"\b[0-9a-f]{7,40}\b(?=.*commit)"):
        assert not re.search(pattern, text, re.I), pattern
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith(("http", "../shared")):
            assert (ROOT / link).exists(), link
