"""What the dashboard's listings cost with and without their bounds: the runs folder (runs.MAX_LISTED_RUNS)
and the job registry (jobs.MAX_LISTED_JOBS), on a made-up crowd of copies of a shipped run's files.

    python -m tools.listing_cost [--runs 3000] [--jobs 10000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from cifar_core import jobs, runs
from cifar_core.backend import cpu_name
from cifar_core.bench import best_seconds
from cifar_core.config import TrainConfig

REPEATS = 3
SHIPPED_RUN = Path(__file__).resolve().parent.parent / "artifacts" / "runs" / "demo-cifar10"


def crowd_of_runs(root: Path, count: int) -> None:
    for number in range(count):
        folder = root / f"20260101-000000-demo-{number:06d}"
        folder.mkdir()
        for name in (runs.CONFIG_FILE, runs.METRICS_FILE, runs.STATUS_FILE, runs.DATA_FILE):
            shutil.copy(SHIPPED_RUN / name, folder / name)


def crowd_of_jobs(count: int) -> None:
    stored, now = TrainConfig(model="demo").to_json(), time.time()
    with jobs.connect() as db:
        db.execute("BEGIN")
        db.executemany("INSERT INTO jobs (run_dir, config, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                       [(f"/nowhere/run-{n}", stored, "completed", now, now) for n in range(count)])
        db.execute("COMMIT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=10000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the listings warn that they left some out: that is the point
        root = Path(scratch) / "runs"
        root.mkdir()
        crowd_of_runs(root, args.runs)
        os.environ["CIFAR_JOBS_DB"] = str(Path(scratch) / "jobs.sqlite")
        crowd_of_jobs(args.jobs)
        bounded_runs = best_seconds(lambda: runs.list_runs(root), REPEATS)
        bounded_jobs = best_seconds(jobs.list_jobs, REPEATS)
        runs.MAX_LISTED_RUNS, jobs.MAX_LISTED_JOBS = args.runs, args.jobs
        whole_runs = best_seconds(lambda: runs.list_runs(root), REPEATS)
        whole_jobs = best_seconds(jobs.list_jobs, REPEATS)
    print(f"CPU: {cpu_name()}")
    print(f"runs folder of {args.runs:,}: {whole_runs * 1000:.0f} ms read whole, {bounded_runs * 1000:.0f} ms "
          f"bounded")
    print(f"job registry of {args.jobs:,}: {whole_jobs * 1000:.0f} ms read whole, {bounded_jobs * 1000:.0f} ms "
          f"bounded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
