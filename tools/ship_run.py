"""Ship a finished run as a preset's run, and retire the run it supersedes.

    python tools/ship_run.py RUN_DIR --preset NAME

Copies RUN_DIR's shipped files (runs.SHIPPED_FILES: no checkpoint, caches, logs
or lock) to artifacts/runs/<the preset's shipped_run>; the run it replaces, if
any, keeps its record (config, metrics, history) in docs/experiments/<run>/
and leaves artifacts/runs/. Then update the preset's shipped_run in
cifar_core/config.py if the name changed; tests/test_presets.py checks that
the shipped run's config equals the preset.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cifar_core import runs
from cifar_core.config import PRESETS, made_by_preset

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
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    made_by = runs.read_config(args.run_dir)
    if not made_by_preset(made_by, args.preset):
        parser.error(f"{args.run_dir} was not trained by the preset {args.preset!r}; train it with "
                     f"`python -m cifar_core train --preset {args.preset}`")
    current = SHIPPED / preset.shipped_run
    if current.exists():
        print(f"retired {current.name}: record in {retire(current).relative_to(ROOT)}")
    shipped = runs.ship(args.run_dir, SHIPPED, preset.shipped_run)
    print(f"shipped {shipped.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
