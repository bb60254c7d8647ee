"""Ship a finished run as a preset's run, and retire the run it supersedes.

    python -m tools.ship_run RUN_DIR --preset NAME [--retire OLD_RUN]

Copies RUN_DIR's shipped files (runs.SHIPPED_FILES: no checkpoint, caches, logs
or lock) and its insight-lab analysis/ to artifacts/runs/<the preset's
shipped_run>. The run it replaces (the folder of that name, or --retire's when
the preset's shipped_run was renamed in cifar_core/config.py first) keeps its
record (config, metrics, history) in docs/experiments/<run>/ and leaves
artifacts/runs/. tests/test_presets.py checks that the shipped run's config
equals the preset.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cifar_core import runs
from cifar_core.analysis import ANALYSIS_DIR, FILES, NEIGHBOURS_FILE
from cifar_core.analysis.files import STAMPS_FILE
from cifar_core.config import PRESETS, made_by_preset
from cifar_core.schema import plain_name

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "artifacts" / "runs"
EXPERIMENTS = ROOT / "docs" / "experiments"


def retire(run_dir: Path) -> Path:
    """Keep a shipped run's record in docs/experiments/ and remove it from artifacts/runs/."""
    record = runs.keep_record(run_dir, EXPERIMENTS)
    shutil.rmtree(run_dir)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--retire", help="the shipped run this one supersedes, where its name is no longer the "
                                         "preset's shipped_run")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    made_by = runs.read_config(args.run_dir)
    if not made_by_preset(made_by, args.preset):
        parser.error(f"{args.run_dir} was not trained by the preset {args.preset!r}; train it with "
                     f"`python -m cifar_core train --preset {args.preset}`")
    retiring = args.retire or preset.shipped_run
    superseded = SHIPPED / retiring
    if args.retire and (not plain_name(retiring) or not superseded.is_dir()):
        parser.error(f"--retire {retiring}: no such shipped run in {SHIPPED}")
    if superseded.exists():
        print(f"retired {superseded.name}: record in {retire(superseded).relative_to(ROOT)}")
    shipped = runs.ship(args.run_dir, SHIPPED, preset.shipped_run)
    copied = ship_analysis(args.run_dir, shipped)
    print(f"shipped {shipped.relative_to(ROOT)}" + (f" with {', '.join(copied)}" if copied else ""))
    return 0


def ship_analysis(run_dir: Path, shipped: Path) -> list[str]:
    """The insight lab's files (regular files only), so its pages work offline on the shipped run."""
    names = [*FILES.values(), NEIGHBOURS_FILE, STAMPS_FILE]
    found = [name for name in names if (run_dir / ANALYSIS_DIR / name).is_file()
             and not (run_dir / ANALYSIS_DIR / name).is_symlink()]
    if found:
        runs.copy_files(run_dir / ANALYSIS_DIR, shipped / ANALYSIS_DIR, tuple(found))
    return found


if __name__ == "__main__":
    sys.exit(main())
