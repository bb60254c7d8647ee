"""The generated tables of README.md, BENCHMARKS.md and docs/experiments.md, from the run folders.

    python -m tools.report            # rewrite the generated blocks in both documents
    python -m tools.report --check    # exit 1 if a document no longer matches the runs

Every figure in a generated block is read from a run's metrics.json or
history.csv: the shipped runs (artifacts/runs/, one per preset) in README.md
and BENCHMARKS.md, and the superseded runs' records (docs/experiments/<run>/)
plus every run's per-epoch curve in docs/experiments.md. Text outside the
blocks is written by hand.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from cifar_core import runs
from cifar_core.config import PRESETS, TRANSFER_RECIPE, TrainConfig, fine_tune_stretches

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "artifacts" / "runs"
EXPERIMENTS = ROOT / "docs" / "experiments"
BENCHMARKS = ROOT / "BENCHMARKS.md"
EXPERIMENTS_DOC = ROOT / "docs" / "experiments.md"
README = ROOT / "README.md"
LATENCY = ROOT / "docs" / "latency.json"  # written by tests/test_browser.py (STUDIO_LATENCY_REPORT)
BENCH = ROOT / "docs" / "bench-results.json"  # written by `python -m cifar_core bench --output ...`
BENCH_CPUS = ROOT / "docs" / "bench-cpus"  # <cpu>.json: the same bench command on other CPUs
SEEDS = ROOT / "docs" / "seeds"  # <run>/: more seeds of a shipped run's exact config (records, no weights)
EXPORTS = ROOT / "docs" / "exports"  # <run>.json: copies of each shipped run's export manifest
SERVE_LOAD = ROOT / "docs" / "serve-load.json"  # written by tools/load_test.py --output
LATENCY_NAMES = {"home_first_view": "home page, first view after `streamlit run`",
                 "page_switch": "switching pages (sidebar)", "photo_answer": "a dropped photo answered "
                 "(top-3 of two models, what each sees, Grad-CAM), the first included",
                 "dataset_page": "Dataset page, decoded cache on disk"}
BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def pct(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "—"


def minutes(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _records(root: Path) -> list[runs.RunSummary]:
    found, problems = runs.list_runs(root)
    if problems:
        raise SystemExit("\n".join(problems))
    return sorted(found, key=lambda run: run.run_id)


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def preset_table() -> str:
    by_run = {preset.shipped_run: name for name, preset in PRESETS.items()}
    rows = []
    for run in _records(SHIPPED):
        m, preset = run.metrics, by_run.get(run.run_id, "—")
        kind = "transfer" if m.get("transfer") else "homebrew"
        size = f", {m['input_size']} px" if m.get("input_size") and m["input_size"] != 32 else ""
        rows.append([f"`{preset}`", f"`{run.run_id}`", f"{m['model']} ({kind}{size})",
                     f"**{pct(m['test_accuracy'])}**", pct(m.get("test_accuracy_tta")),
                     minutes(m.get("train_seconds")), m.get("train_images_per_second") or "—",
                     _machine(m), m.get("epochs_run"), f"{m.get('n_params'):,}",
                     f"`python -m cifar_core train --preset {preset} --data <cifar10> --run-dir <dir>`"])
    return table(["preset", "run", "model", "test accuracy", "with flip TTA", "training", "images/s",
                  "trained on", "epochs", "params", "command"], rows)


def _machine(metrics: dict) -> str:
    return runs.machine_name(metrics.get("machine")) or "—"


def readme_table() -> str:
    rows = []
    for name, preset in PRESETS.items():
        m = runs.read_metrics(SHIPPED / preset.shipped_run)
        rows.append([f"`{name}`", preset.summary, pct(m["test_accuracy"]), pct(m.get("test_accuracy_tta")),
                     minutes(m.get("train_seconds")), _machine(m)])
    return table(["preset", "what", "test accuracy", "with flip TTA", "training", "trained on"], rows)


def transfer_table() -> str:
    rows = []
    for root in (SHIPPED, EXPERIMENTS):
        for run in _records(root):
            m = run.metrics
            if not m.get("transfer"):
                continue
            stages = m.get("stage_seconds") or {}
            fine_tune = (m.get("train_seconds") or 0) - sum(stages.values())
            where = "" if root == SHIPPED else " (record)"
            rows.append([f"`{run.run_id}`{where}", _fine_tune_sizes(run.config), _fine_tuned_layers(run.config),
                         pct(m.get("test_accuracy_head")), f"**{pct(m['test_accuracy'])}**",
                         pct(m.get("test_accuracy_tta")), minutes(stages.get("features")), minutes(stages.get("head")),
                         minutes(fine_tune), minutes(m.get("train_seconds")),
                         _machine(m), f"{(m.get('peak_memory_mb') or 0) / 1024:.2f} GB"])
    return table(["run", "fine-tune epochs at", "layers fine-tuned", "head only (frozen features)", "after fine-tuning",
                  "with flip TTA", "features", "head", "fine-tune", "training", "trained on", "peak memory"], rows)


def _fine_tune_sizes(config: dict) -> str:
    """'4 x 224 px', or '2 x 128 px, then 2 x 224 px' for progressive resizing."""
    stretches = fine_tune_stretches(TrainConfig.from_dict(config))
    return ", then ".join(f"{epochs} x {size} px" for size, epochs in stretches)


def _fine_tuned_layers(config: dict) -> str:
    """'all', or 'top 40 of 49' (the weighted backbone layers fine-tuning trained)."""
    from cifar_core.models.transfer import LITE_SHAPES, lite_tunable_layers

    layers, model = config.get("fine_tune_layers") or 0, config.get("model")
    total = lite_tunable_layers(model) if model in LITE_SHAPES else TRANSFER_RECIPE["fine_tune_layers"]
    return "all" if layers >= total else f"top {layers}" + (f" of {total}" if model in LITE_SHAPES else "")


def superseded_table() -> str:
    rows = [[f"[`{run.run_id}`](experiments/{run.run_id}/)", run.metrics["model"], pct(run.metrics["test_accuracy"]),
             pct(run.metrics.get("test_accuracy_tta")), minutes(run.metrics.get("train_seconds")),
             run.metrics.get("epochs_run"), _difference(run)] for run in _records(EXPERIMENTS)]
    return table(["run", "model", "test accuracy", "with flip TTA", "training", "epochs",
                  "what differed from the recipe today"], rows)


def seed_table() -> str:
    """Each preset with replicate seeds: the shipped run and its replicates, mean and spread."""
    by_preset = seed_groups()
    rows = []
    for name, group in by_preset.items():
        figures = {key: [run.metrics.get(key) for run in group] for key in
                   ("test_accuracy", "test_accuracy_tta", "train_seconds")}
        rows.append([f"`{name}`", ", ".join(str(run.config["random_state"]) for run in group), len(group),
                     _spread(figures["test_accuracy"]), _spread(figures["test_accuracy_tta"]),
                     f"{min(figures['train_seconds']) / 60:.1f}–{max(figures['train_seconds']) / 60:.1f} min",
                     ", ".join(sorted({runs.machine_name(run.metrics.get("machine")) or "?" for run in group}))])
    return table(["preset", "seeds", "runs", "test accuracy: mean ± sd (min–max)", "with flip TTA: mean ± sd "
                  "(min–max)", "training", "machine"], rows)


def seed_groups() -> dict[str, list[runs.RunSummary]]:
    """{preset: [shipped run, replicates...]} for every record under docs/seeds/; a record whose config
    is not its shipped run's but for the seed is refused (it would pass for a replicate)."""
    shipped = {preset.shipped_run: name for name, preset in PRESETS.items()}
    preset_runs = [run for run in _records(SHIPPED) if run.run_id in shipped]
    groups: dict[str, list[runs.RunSummary]] = {}
    for record in _records(SEEDS):
        matches = [run for run in preset_runs if _same_but_seed(run, record)]
        if not matches:
            raise SystemExit(f"docs/seeds/{record.run_id}: its config is no shipped run's but for the seed")
        name = shipped[matches[0].run_id]
        groups.setdefault(name, [matches[0]]).append(record)
    return groups


def _same_but_seed(run: runs.RunSummary, record: runs.RunSummary) -> bool:
    """As configs, not JSON: a field newer than the shipped run's config.json counts at its default."""
    shipped, replicate = (TrainConfig.from_dict(r.config) for r in (run, record))
    return (shipped.replace(random_state=0, data=None) == replicate.replace(random_state=0, data=None)
            and shipped.random_state != replicate.random_state)


def _spread(values: list[float]) -> str:
    import statistics

    return (f"**{statistics.mean(values):.2%}** ± {statistics.stdev(values):.2%} "
            f"({min(values):.2%}–{max(values):.2%})")


def _difference(run: runs.RunSummary) -> str:
    from cifar_core.config import TrainConfig, recipe_config

    config = TrainConfig.from_dict(run.config)
    recipe = recipe_config(config.model, input_size=config.input_size).to_dict()
    changed = [f"{key} {value}" for key, value in sorted(config.to_dict().items())
               if key != "data" and value != recipe[key] and not (isinstance(value, list)
                                                                   and tuple(value) == recipe[key])]
    return ", ".join(changed) or "none (the recipe then)"


def curves() -> str:
    parts = []
    for root in (SHIPPED, EXPERIMENTS):
        for run in _records(root):
            history = runs.read_history(run.path)
            if not history:
                continue
            parts += [f"**{run.run_id}** — accuracy against training minutes", "",
                      "| epoch | stage | minutes | train accuracy | val accuracy |", "|---|---|---|---|---|"]
            elapsed = 0.0
            for row in history:
                elapsed += (row["seconds"] or 0) / 60
                parts.append(f"| {row['epoch']} | {row.get('stage') or 'train'} | {elapsed:.1f} | "
                             f"{pct(row['accuracy'])} | {pct(row['val_accuracy'])} |")
            parts.append("")
    return "\n".join(parts)


def analysis_table() -> str:
    """Calibration, robustness and label issues of each shipped run, from its analysis/ files."""
    from cifar_core.analysis import files

    rows = []
    for run in _records(SHIPPED):
        calibration = files.read_analysis(run.path, "calibration") or {}
        robustness = files.read_analysis(run.path, "robustness") or {}
        issues = files.read_analysis(run.path, "labels") or []
        fgsm = {round(r["epsilon"] * 255): r["accuracy"] for r in robustness.get("fgsm", [])}
        rows.append([f"`{run.run_id}`",
                     f"{pct(calibration.get('ece_before'))} → {pct(calibration.get('ece_after'))}",
                     f"{calibration['nll_before']:.3f} → {calibration['nll_after']:.3f}" if calibration else "—",
                     f"{calibration['temperature']:.2f}" if calibration else "—",
                     calibration.get("fitted_on", "—"), pct(robustness.get("clean_accuracy")),
                     pct(robustness.get("mean_corruption_accuracy")), pct(fgsm.get(2)), pct(fgsm.get(8)),
                     sum(bool(i.get("flagged")) for i in issues)])
    return table(["run", "ECE before → after scaling", "NLL before → after", "temperature", "temperature fitted on",
                  "clean (2,000-image subset)", "mean over 40 corruptions", "FGSM 2/255", "FGSM 8/255",
                  "test labels flagged by cleanlab"], rows)


def latency_table() -> str:
    from cifar_core.safeio import read_json_file

    report = read_json_file(LATENCY, 1 << 20, SystemExit)
    rows = [[LATENCY_NAMES[name], f"**{f['p95_s']:.2f} s**", f"{f['budget_s']:.1f} s",
             "yes" if f["within_budget"] else "**no**", len(f["samples_s"]),
             f"{min(f['samples_s']):.2f}–{max(f['samples_s']):.2f} s"] for name, f in report["budgets"].items()]
    lines = [f"Measured {report['measured_at']} on {report['measured_on']}, {report['runs']}, "
             f"{report['browser']} ([docs/latency.json](docs/latency.json)).", ""]
    lines.append(table(["what the presenter waits for", "p95", "budget", "within", "samples", "range"], rows))
    slow = {page: max(times) for page, times in report.get("page_switch_by_page_s", {}).items() if max(times) > 1.5}
    if slow:
        lines.append("Page switches over 1.5 s: " + ", ".join(f"{page} {seconds:.2f} s" for page, seconds in
                                                              sorted(slow.items(), key=lambda item: -item[1])) +
                     " (slowest of two visits each).\n")
    lines.append(f"The models were loaded and traced (sidebar: *Models ready*) {report['models_ready_after_s']:.1f} s "
                 f"after `streamlit run`; the budget is for a warm studio, after that."
                 + (f" Sitting still, the server and its model worker then used "
                    f"{report['server_idle_cpu_share']:.1%} of a core." if "server_idle_cpu_share" in report else "")
                 + "\n")
    lines.append(f"A browser that never opened the studio (downloading its JavaScript first) sees the home page "
                 f"after {report['home_first_view_never_visited_s']:.1f} s; the Dataset page's first visit in "
                 f"the test's first server (which decodes the dataset into the cache if none exists yet) took "
                 f"{report['dataset_first_read_s']:.1f} s.\n")
    return "\n".join(lines)


def _json(path: Path):
    from cifar_core.safeio import read_json_file

    return read_json_file(path, 1 << 22, SystemExit)


def bench_tables() -> str:
    """The machine, its measured peaks, each model's training step against them, and the
    previous recipes timed beside today's, from the last `bench` in docs/bench-results.json."""
    report = _json(BENCH)
    machine, onednn = report["machine"], report.get("onednn") or {}
    lines = [f"Measured {report['measured_at'][:10]} on {machine['cpu']}, {machine['cores']} cores, Keras "
             f"{machine['keras']} on {machine['backend']} ([docs/bench-results.json](docs/bench-results.json)). "
             f"oneDNN: {onednn.get('verdict', 'not checked')}.{_peaks_note(report)}", ""]
    peaks = report.get("peaks") or {}
    lines.append(table(["peak through TensorFlow", *peaks], [
        [f"{PEAK_NAMES[key]}", *(f"{peaks[p][key]:,.0f} GFLOP/s" for p in peaks)] for key in PEAK_NAMES]))
    rows = [[f"`{r['model']}`", r["batch_size"], r["precision"], f"**{r['train_images_per_second']:,.0f}**",
             f"{r['train_gflops_per_second']:,.0f}",
             f"{r['percent_of_conv_peak']:.0f}%" if r.get("percent_of_conv_peak") is not None else "—",
             f"{r['pipeline_images_per_second']:,.0f}" if r.get("pipeline_images_per_second") else "—",
             f"{r['epoch_minutes_50k']:.2f}"] for r in report["training"]]
    lines.append(table(["model", "batch", "precision", "training images/s", "GFLOP/s", "of the conv peak",
                        "input pipeline alone, images/s", "minutes per 50k epoch"], rows))
    for comparison in report.get("comparison") or []:
        if comparison.get("kind") == "transfer":
            lines.append(_transfer_comparison(comparison))
            continue
        base = comparison["steps"][0]["train_images_per_second"]
        lines.append(f"**{comparison['model']}**: from the previous recipe to today's, one change at a time "
                     f"(alternated in one call, best of each): **{comparison['speedup']:.2f}x**\n")
        lines.append(table(["step", "training images/s", "vs previous", "GFLOP/s", "of the conv peak"], [
            [row["step"], f"{row['train_images_per_second']:,.0f}", f"{row['train_images_per_second'] / base:.2f}x",
             f"{row['train_gflops_per_second']:,.0f}",
             f"{row['percent_of_conv_peak']:.0f}%" if row.get("percent_of_conv_peak") is not None else "—"]
            for row in comparison["steps"]]))
    return "\n".join(lines)


def _peaks_note(report: dict) -> str:
    """What the peaks did during the call (bench measures them again at its end; older files did not)."""
    after = report.get("peaks_after")
    if not after:
        return ""
    conv = after.get("mixed_bfloat16", after.get("float32", {})).get("conv_gflops")
    held = "held" if report.get("peaks_held") else "moved by more than 20%, so its rows may not compare"
    return f" The peaks measured again at the call's end {held} (bf16 convolution {conv:,.0f} GFLOP/s)."


def bench_cpus_table() -> str:
    """One row per CPU the bench command ran on (docs/bench-results.json and docs/bench-cpus/): its
    measured peaks, each model's training step against them, and today's recipes against the previous."""
    rows = []
    for path in [BENCH, *sorted(BENCH_CPUS.glob("*.json"))]:
        report = _json(path)
        peaks, steps = report["peaks"], {r["model"]: r for r in report["training"]}
        speedups = {c["model"]: c["speedup"] for c in report.get("comparison") or []}
        rows.append([f"{report['machine']['cpu']} ([{path.name}]({path.relative_to(ROOT).as_posix()}))",
                     report["measured_at"][:10],
                     " / ".join(f"{peaks[p]['conv_gflops']:,.0f}" for p in ("float32", "mixed_bfloat16") if p in peaks),
                     *(f"{steps[m]['train_images_per_second']:,.0f} ({steps[m]['percent_of_conv_peak']:.0f}%)"
                       if m in steps else "—" for m in BENCH_CPU_MODELS),
                     f"{steps['fastnet']['epoch_minutes_50k']:.2f} min" if "fastnet" in steps else "—",
                     ", ".join(f"{m} {x:.2f}x" for m, x in speedups.items()) or "—"])
    return table(["CPU (2 cores)", "measured", "conv peak, float32 / bf16 GFLOP/s",
                  *(f"{m} images/s (of its peak)" for m in BENCH_CPU_MODELS), "a fastnet epoch",
                  "today's recipe vs previous, side by side"], rows)


BENCH_CPU_MODELS = ("fastnet", "g3", "demo", "stage")  # recipes: models' own, and the stage preset


def _transfer_comparison(comparison: dict) -> str:
    """A transfer preset's previous recipe against today's: each fine-tuning stretch's measured step."""
    head = (f"**{comparison['model']}**: the previous recipe's fine-tuning against today's, each stretch's step "
            f"timed (alternated in one call, best of each) and projected over its epochs of "
            f"{comparison['n_train']:,} images: **{comparison['speedup']:.2f}x**\n")
    base = comparison["steps"][0]["fine_tune_minutes"]
    preset = PRESETS.get(comparison["model"])  # the record names the preset; its backbone counts the layers
    backbone = preset.model if preset else comparison["model"]
    rows = [[row["step"], _fine_tuned_layers({"model": backbone, "fine_tune_layers": row["fine_tune_layers"]}),
             " + ".join(f"{s['epochs']} x {s['size']} px at {s['images_per_second']:,.1f} images/s"
                        + (f" ({s['train_gflops_per_second']:,.0f} GFLOP/s, {s['percent_of_conv_peak']:.0f}% of peak)"
                           if s.get("percent_of_conv_peak") is not None else "")
                        for s in row["stretches"]),
             f"{row['fine_tune_minutes']:.1f} min", f"{base / row['fine_tune_minutes']:.2f}x"]
            for row in comparison["steps"]]
    return head + "\n" + table(["recipe", "layers fine-tuned", "fine-tune epochs", "fine-tuning, projected",
                                 "vs previous"], rows)


PEAK_NAMES = {"matmul_gflops": "2048x2048 matmul", "conv_gflops": "3x3 conv, 256x32x32x64 -> 128"}


def export_table() -> str:
    rows = []
    for path in sorted(EXPORTS.glob("*.json")):
        for name, e in sorted(_json(path)["exports"].items()):
            rows.append([f"`{e['run']}`", f"`{name}`", f"{e['size_bytes'] / 1e6:.2f} MB", f"**{pct(e['accuracy'])}**",
                         pct(e["keras_accuracy"]), pct(e["agreement"]), "yes" if e["within_tolerance"] else "**no**",
                         f"{e['latency_ms_p50']:.2f} / {e['latency_ms_p95']:.2f} ms",
                         f"{e['throughput_batch64']:,.0f}", e["runtime"]])
    machines = sorted({e["machine"] for path in EXPORTS.glob("*.json") for e in _json(path)["exports"].values()})
    return (f"Measured on {'; '.join(machines)} (manifests: [docs/exports/](docs/exports/)).\n\n" +
            table(["run", "export", "size", "test accuracy", "Keras model (float32)", "top-1 agreement", "passed",
                   "batch 1 p50 / p95", "batch 64 images/s", "runtime"], rows))


def serve_table() -> str:
    rows = [[r["runs"][0] if len(r["runs"]) == 1 else ", ".join(r["runs"]), r["clients"], f"{r['seconds']:.0f} s",
             f"1 in {r['hostile_every']}" if r.get("hostile_every") else "none",
             f"**{r['requests_per_second']:,.1f}**", f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} / "
             f"{r['latency_ms']['p99']:.0f} ms", ", ".join(f"{k}: {v:,}" for k, v in r["statuses"].items()),
             r["server_errors"], "yes" if r["still_answers"] else "**no**",
             "{start:.0f} → {end:.0f} MB (peak {peak:.0f})".format(**r["server_memory_mb"])]
            for r in _json(SERVE_LOAD)]
    machines = sorted({r["machine"] for r in _json(SERVE_LOAD)})
    return (f"Measured on {'; '.join(machines)} with `tools/load_test.py` ([docs/serve-load.json]"
            f"(docs/serve-load.json)).\n\n" +
            table(["served run", "clients", "for", "hostile requests", "requests/s", "good requests p50 / p95 / p99",
                   "statuses", "5xx", "answers afterwards", "server memory"], rows))


GENERATORS = {"presets": preset_table, "readme-presets": readme_table, "transfer": transfer_table,
              "superseded": superseded_table, "curves": curves, "latency": latency_table,
              "analysis": analysis_table, "bench": bench_tables, "bench-cpus": bench_cpus_table,
              "exports": export_table, "serving": serve_table, "seeds": seed_table}


def render(text: str) -> str:
    def fill(match: re.Match) -> str:
        return f"{match.group(1)}{GENERATORS[match.group('name')]()}{match.group(4)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the documents are up to date")
    args = parser.parse_args(argv)
    stale = []
    texts = {document: document.read_text() for document in (README, BENCHMARKS, EXPERIMENTS_DOC)}
    placed = {match.group("name") for text in texts.values() for match in BLOCK.finditer(text)}
    if set(GENERATORS) - placed:  # a table written for no page is a result nobody can read
        print(f"no document has a block for: {', '.join(sorted(set(GENERATORS) - placed))}")
        return 1
    for document, text in texts.items():
        fresh = render(text)
        if fresh != text:
            stale.append(document.relative_to(ROOT))
            if not args.check:
                document.write_text(fresh)
    if args.check and stale:
        print(f"out of date with the runs: {', '.join(map(str, stale))}; run python -m tools.report")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
