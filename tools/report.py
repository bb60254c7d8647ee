"""Print the markdown tables of BENCHMARKS.md from the shipped run folders.

    python tools/report.py            # all runs under artifacts/runs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar_core import runs  # noqa: E402


def pct(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "—"


def main() -> None:
    found, problems = runs.list_runs()
    print("| run | model | test accuracy | with flip TTA | head only | train minutes | images/s | epochs | data |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in sorted(found, key=lambda r: r.run_id):
        m = run.metrics or {}
        if not m:
            state = run.status.get("state")
            print(f"| {run.run_id} | {run.config.get('model')} | ({state}) | | | | | | |")
            continue
        print(f"| {run.run_id} | {m['model']} | {pct(m['test_accuracy'])} | {pct(m.get('test_accuracy_tta'))} "
              f"| {pct(m.get('test_accuracy_head'))} | {m['train_seconds'] / 60:.1f} "
              f"| {m.get('train_images_per_second') or '—'} | {m.get('epochs_run')} | {m['data']} |")
    for run in sorted(found, key=lambda r: r.run_id):
        history = runs.read_history(run.path)
        if not history:
            continue
        print(f"\n**{run.run_id}** — accuracy against training minutes\n")
        print("| epoch | stage | minutes | train accuracy | val accuracy |")
        print("|---|---|---|---|---|")
        minutes = 0.0
        for row in history:
            minutes += (row["seconds"] or 0) / 60
            print(f"| {row['epoch']} | {row.get('stage') or 'train'} | {minutes:.1f} | {pct(row['accuracy'])} "
                  f"| {pct(row['val_accuracy'])} |")
    for problem in problems:
        print(f"\n> {problem}")


if __name__ == "__main__":
    main()
