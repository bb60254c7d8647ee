"""Why, and how far to trust it: the analyses of a finished run, cached in RUN_DIR/analysis/.

    python -m cifar_core analyze RUN_DIR [--only embedding,calibration,robustness,labels]

Each analysis writes one file (the contract other tools read) stamped with the
model file's SHA-256; it is recomputed only when the model changes (or --force).
Pages only read these files; nothing heavy runs in a page script.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import runs
from ..errors import ConfigError
from ..safeio import file_sha256

ANALYSIS_DIR = "analysis"
FILES = {"embedding": "embedding.npz", "calibration": "calibration.json", "robustness": "robustness.json",
         "labels": "label_issues.json"}
NEIGHBOURS_FILE = "neighbours.npz"  # written with the embedding: the training images' features
ANALYSES = tuple(FILES)
# Part of every stamp: bump it when a computation changes, so files made by older code are redone.
COMPUTATION_VERSION = 2


def analysis_path(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / ANALYSIS_DIR / (FILES.get(name) or name)


def model_fingerprint(run_dir: Path | str) -> str:
    """SHA-256 of the run's model file, and the computations' version: what every analysis file is
    stamped with (a new model or newer code recomputes it)."""
    return f"{file_sha256(Path(run_dir) / runs.MODEL_FILE)}:v{COMPUTATION_VERSION}"


def parse_only(text: str | None) -> tuple[str, ...]:
    if not text:
        return ANALYSES
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in chosen if name not in ANALYSES]
    if unknown:
        raise ConfigError(f"unknown analysis {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    return chosen


def analyze(run_dir: Path | str, only: tuple[str, ...] = ANALYSES, source: str | None = None, force: bool = False,
            progress: Callable[[str], object] = print) -> dict[str, str]:
    """Run the chosen analyses of a finished run; returns {analysis: 'computed' | 'up to date'}."""
    from .compute import AnalysisContext

    run_dir = Path(run_dir)
    fingerprint = model_fingerprint(run_dir)
    outcome = {}
    with runs.RunWriter(run_dir):  # one writer per run folder: not while a resume trains it
        context = AnalysisContext(run_dir, fingerprint, source, progress)
        for name in only:
            if not force and _fresh(run_dir, name, fingerprint):
                outcome[name] = "up to date"
                continue
            context.run(name)
            outcome[name] = "computed"
    return outcome


def _fresh(run_dir: Path, name: str, fingerprint: str) -> bool:
    from .files import stamped_fingerprint

    return stamped_fingerprint(analysis_path(run_dir, name)) == fingerprint
