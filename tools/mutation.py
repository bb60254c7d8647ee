"""Mutation testing of the trust-critical modules, with a per-module report.

    python -m tools.mutation                      # every module in [tool.mutmut] only_mutate
    python -m tools.mutation imaging runs         # some of them (module names or paths)
    python -m tools.mutation --report-only        # rewrite the report from the last run

mutmut (configured in pyproject.toml) plants one small change at a time in a
copy of the code under mutants/ and runs the fast tests that reach the changed
function; a mutant the tests still pass "survived". This script runs it from a
clean copy, then writes docs/mutation.json and docs/mutation.md: the share of
mutants killed per module, each survivor with its diff, and the reason for each
survivor listed in EQUIVALENT below (a change no test can see, because the code
behaves the same). The target is at least 85% killed in every module.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
REPORT_JSON = ROOT / "docs" / "mutation.json"
REPORT_MD = ROOT / "docs" / "mutation.md"
TARGET = 0.85
MUTMUT = [sys.executable, "-m", "mutmut"]

# Survivors that are not bugs: the mutated code behaves exactly like the original. Each
# class is matched on the line the mutant adds (mutmut's names change with the code;
# the shape of an equivalent change does not) and says why no test can tell.
EQUIVALENT: list[tuple[str, str]] = [
    (r'execute\("(pragma journal_mode=wal|PRAGMA JOURNAL_MODE=WAL)"\)|"(insert into jobs|INSERT INTO JOBS) \(|'
     r'execute\("(select count\(\*\) from jobs|SELECT COUNT\(\*\) FROM JOBS)"\)',
     "SQL keywords and names are case-insensitive"),
    (r'fields\["UPDATED_AT"\]', "SQLite column names are case-insensitive"),
    (r'(en|de)code\("(LATIN1|UTF-8|ASCII)"|encoding="UTF-8"|encoding=None\) as handle', "codec names are "
     "case-insensitive, and /proc files are ASCII"),
    (r'stacklevel=|warnings\.warn\(problem, \)|"started \(run folders are untouched\)", \)|'
     r'f"\{MAX_LISTED_JOBS:,\} in all", \)',
     "only changes which line a warning is attributed to; the message is what is shown"),
    (r'keras\.models\.load_model\(path, (compile=(True|None), |safe_mode=True\))',
     "check_model_file refuses optimizers, so the files it passes hold no compile configuration to act on"),
    (r'keras\.models\.load_model\(path, (compile=False, )?(safe_mode=(False|None))?\)',
     "the bounding check before it (check_model_file, check_checkpoint_file) has already refused every class "
     "safe_mode refuses: Lambda layers and anything outside its allow-list (and safe_mode defaults to True)"),
    (r'state\.get\("training_done", True\)',
     "either default is a bool, so an absent field passes the flag check the same way"),
    (r'order="[fc]"|order="F" if fortran_order else "c"', "numpy accepts order letters in either case"),
    (r'image\.draft\(', "draft() only lets the JPEG decoder scale by 1/2..1/8; the mode is a hint, and "
     "convert('RGB') follows either way"),
    (r'input_size or 3[0-9]', "every default up to 64 px gives the same batch of 256"),
    (r'os\.read\(fd, min\(|while total <= limit', "the chunk size and one more empty read change nothing "
     "read"),
    (r'_read_at_most\(fd, max_bytes \+ 2\)', "reading two bytes past the cap refuses the same files as one"),
    (r'1000001\.0', "the megapixel figure is rounded to whole numbers either way"),
    (r'gzip\.open\(path, \)', "'rb' is gzip.open's default mode"),
    (r'tops == tops\[1\]|members\[1\]\.(y_true|class_names)|zeros_like\(arrays\[1\]\)', "every member has been "
     "checked to share the first's labels and classes (so its probabilities' shape), and 'all alike' compares the "
     "same against any member"),
    (r'tarfile\.open\(None if \(gzipped\) and False else path|tarfile\.open\(None if gzipped else path, fileobj=source'
     r'|mode="r\|" if \(gzipped\) and False else "r\|\*"',
     "with a file object given, tarfile takes the path as a name only, and 'r' or 'r|*' read the GzipFile's "
     "plain tar as 'r|' does"),
    (r'stream\.read\((2 << 20|1 << 21)\)', "the block size changes how the budget is counted off, not what it "
     "allows"),
    (r'allowed = None|allow_pickle=None\)\)', "None and False are both refusals"),
    (r'max\(label, -2\)', "any negative label is refused; -1 and -2 are equally out of range"),
    (r'os\.ftruncate\(fd, 1\)', "the pid written next overwrites the one byte kept"),
    (r'self\._fd(: int \| None)? = ""', "__exit__ runs only after __enter__ set the descriptor, and once"),
    (r'\[:21\]|os\.pread\(fd, 21, 0\)', "a pid is never 20 characters long"),
    (r'kind="STABLE"', "numpy reads sort kinds in either case"),
    (r'json\.dumps\((stamps|data), (indent=(None|2))?\)', "indentation only changes whitespace; every reader "
     "parses the JSON"),
    (r'get_label_quality_scores\(labels, probs, \)', "self_confidence is cleanlab's default method; it is named "
     "for the reader"),
    (r'np\.load\(stream, (allow_pickle=(True|None))?\)', "check_npy_header has already refused every "
     "array of Python objects (and anything that is not a .npy), the only kinds allow_pickle decides"),
    (r'hexdigest\(\)\[:25\]', "the cache key's length only names the cache file"),
    (r'dtype=None\)\)|for n in names\[split\]\], \)\)', "numpy 2's default integer is int64, as the labels "
     "are made"),
    (r'reshape\(-2\)', "numpy reads any negative size as 'the rest'"),
    (r'os\.walk\(root, (followlinks=None)?\)', "not following links is os.walk's default; it is spelt out for "
     "the reader"),
    (r'file\.read\((None|2 << 20|1 << 21)\)', "the hash of a file is the same whatever block size reads it"),
    (r'input_shape\[2\] is None:|int\(input_shape\[2\]\)', "the input is checked square first "
     "(input_shape[1] == input_shape[2]), so either side reads the same"),
    (r'^\s*tmp = ""$', "an empty name reaches only the unlink under suppress(OSError), which swallows its "
     "FileNotFoundError"),
    (r'_field\(config, "(kernel_size|depth_multiplier|groups|filters)", (None|2)\)|_field\(config, "units", 1\)',
     "Keras writes kernel_size, depth_multiplier, groups and filters or units in every config of the layers "
     "that use them, and its constructors refuse a config without them, so the default never counts a "
     "layer that loads"),
    (r'\(channels / max\(', "Keras builds only convolutions whose channels divide by their groups, where / and "
     "// agree"),
    (r'base\.__name__ in ALLOWED_LAYERS or base\.__module__', "each layer this package registers reaches its "
     "built-in ancestor before any other Keras class, or extends none"),
    (r'zip\(value\.size, value\.stride, (strict=(None|False))?\)', "as_strided refuses a shape and strides of "
     "different lengths next, as the same one-line error"),
    (r'^\s*if n < size:$', "at n == size the seeded draw of every point, sorted, is every point in order"),
    (r'random_state=None\)\.fit_transform\(reduced\)', "t-SNE started from the PCA layout (init='pca') draws "
     "nothing at random"),
    (r'return TSNE\(perplexity=', "two components is TSNE's default; it is spelt out for the reader"),
    (r'np\.argsort\(-similarity, \)|take_along_axis\(similarity, order, \)', "the default axis of argsort and "
     "take_along_axis is the last, the rows' own"),
    (r'astype\(int\) - 1, 0, (None|n_bins \+ 1)\)', "a probability is at most 1, so ceil(n_bins x confidence) - 1 "
     "never passes the last bin"),
    (r'astype\(None\) - 1, 0, n_bins - 1\)', "the bins are picked with ==, which whole numbers pass alike as floats"),
    (r'^\s*options=\{"xatol": 1e-4\}\)$|method=(None|"BOUNDED"), options=', "minimize_scalar takes the bounded method "
     "whenever bounds are given, and reads its name in either case"),
    (r'method="bounded", (options=None|options=\{"(XXxatolXX|XATOL)": 1e-4\})?\)$', "without xatol the search "
     "stops at scipy's tighter default (1e-5), a temperature that agrees to 1e-4: only more steps"),
    (r'headers\.get\("ACCEPT", ""\)|headers\.get\("accept", "XXXX"\)', "Starlette's headers are "
     "case-insensitive, and a request without an Accept header holds no text/html whatever the default"),
    (r'segno\.make\(text, error="M"\)|kind="PNG"', "segno reads error levels and image kinds in either case"),
    (r'\.save\(encoded, format="png"\)', "Pillow reads format names in either case"),
    (r'popitem\(last=None\)', "None is falsy: the oldest entry goes either way"),
    (r'os\.open\(path\.parent, os\.O_RDONLY & os\.O_DIRECTORY\)', "the folder was just made (mkdir refuses a "
     "file or FIFO by that name), and Linux opens a folder read-only with or without O_DIRECTORY"),
    (r'timeout: float = 11\.0|time\.sleep\(1\.05\)|time\.monotonic\(\) >= deadline|_thread\.join\((None|11)\)',
     "how long start() waits for a server that never listens, how often it looks, and how long stop() waits for "
     "a stuck one: when, not what, and no test can time it without racing the server"),
    (r'limit_concurrency=64, \)$', "uvicorn's default keep-alive is the same 5 s; it is spelt out for the reader"),
    (r'\b5 \* n_images \* n_classes\)', "_sound then refuses every array but float32 of the expected shape, so a "
     "looser cap changes only which check refuses a larger file"),
    (r'\(overrides\.get\("input_size"\) or 1\) > LARGE_INPUT', "no size and 1 px are both far below the "
     "large-input threshold"),
    (r'int\(entry\["input"\]\["shape"\]\[2\]\)', "read_manifest keeps only square inputs, so either side "
     "reads the same"),
    (r'image = image\.convert\(None\)$', "convert() without a mode takes a palette image to RGBA where it has "
     "transparency and to RGB where not: the alpha step that follows makes the same pixels of either"),
    (r'kernel\[None, :, :, None\], \)', "'reflect' is scipy's convolve default; it is spelt out for the reader"),
    (r'radius \*\* 2\)\.astype\(None\)|images\.astype\(None\) / 255\.0', "numpy's default float is the float64 "
     "spelt out"),
    (r'format="jpeg", quality', "Pillow reads format names in either case"),
    (r'getvalue\(\)\)\)\.convert\(None\)', "a JPEG this code wrote decodes as RGB, which convert() without a "
     "mode keeps"),
    (r'headers\.get\("content-length", "XXXX"\)', "a missing size is refused as not digits, whatever the "
     "default"),
    (r'open\(f"/proc/\{pid\}/stat", \) as handle', "codec names are case-insensitive, and /proc files are ASCII"),
    (r'FastAPI\((docs_url=None, )?(redoc_url=None, )?openapi_url=None\)', "FastAPI serves /docs and /redoc only "
     "beside an OpenAPI schema, which openapi_url=None turns off; they are turned off by name for the reader"),
]


def modules_to_mutate() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["mutmut"]["only_mutate"])


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def run_mutmut(paths: list[str]) -> float:
    """A fresh run over the given files; returns the seconds it took."""
    shutil.rmtree(MUTANTS, ignore_errors=True)
    patterns = [f"{module_name(path)}.*" for path in paths]
    started = time.perf_counter()
    subprocess.run([*MUTMUT, "run", *patterns], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def results() -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    listing = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout
    statuses = {}
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name.startswith("cifar_core."):
            statuses[name] = status
    return statuses


def diff(name: str) -> str:
    shown = subprocess.run([*MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True).stdout
    return "\n".join(line for line in shown.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def equivalence(diff_text: str) -> str | None:
    """Why a survivor is equivalent, if its added line matches a known class; else None."""
    added = [line[1:] for line in diff_text.splitlines() if line.startswith("+")]
    for pattern, reason in EQUIVALENT:
        if any(re.search(pattern, line) for line in added):
            return reason
    return None


def summarise(paths: list[str], statuses: dict[str, str], seconds: float | None) -> dict:
    modules = {}
    for path in paths:
        name = module_name(path)
        own = {m: s for m, s in statuses.items() if m.rsplit(".", 1)[0] == name}
        counts = Counter(own.values())
        checked = sum(n for status, n in counts.items() if status != "not checked")
        # A test run that crashed (mutmut's "segfault": the process died by a signal) did not pass:
        # the mutant is caught as surely as by a failing assertion, as CI would be red.
        crashed = counts["segfault"]
        killed = counts["killed"] + counts["timeout"] + crashed
        survivors = sorted(m for m, s in own.items() if s in ("survived", "no tests"))
        diffs = {m: diff(m) for m in survivors}
        reasons = {m: equivalence(diffs[m]) for m in survivors}
        equivalent = [m for m in survivors if reasons[m]]
        modules[name] = {
            "path": path, "mutants": checked, "killed": killed, "crashed": crashed, "survived": len(survivors),
            "equivalent": len(equivalent), "score": round(killed / checked, 4) if checked else None,
            "score_without_equivalent": round(killed / (checked - len(equivalent)), 4) if checked else None,
            "survivors": [{"name": m, "diff": diffs[m], "equivalent": reasons[m],
                           "no_tests": own[m] == "no tests"} for m in survivors],
        }
    return {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds, "target": TARGET,
            "modules": modules}


def merge_into(previous: dict, report: dict, seconds: float | None) -> dict:
    """The full report with this run's modules updated. A module the last mutmut run did not mutate (a
    partial run, or --report-only after one) keeps its previous measurement: "not run" never overwrites one."""
    measured = {name: row for name, row in report["modules"].items() if row["mutants"]}
    if measured.keys() == report["modules"].keys() >= previous.get("modules", {}).keys():
        return report  # every module measured afresh: a whole new report
    merged = {**previous, "modules": {**report["modules"], **previous.get("modules", {}), **measured}}
    if seconds is not None and measured:  # --report-only re-reads the last run; it measures nothing new
        merged["remeasured"] = [*previous.get("remeasured", []), {"modules": sorted(measured),
                                                                   "at": report["measured_at"], "seconds": seconds}]
    return merged


def write_report(report: dict) -> None:
    REPORT_JSON.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Mutation testing: how many planted bugs the tests catch", "",
             "Generated by `python -m tools.mutation` (mutmut, configured in `pyproject.toml`); do not edit by hand.",
             f"Measured {report['measured_at']}" + (f", {report['seconds'] / 60:.1f} min on 2 CPU cores"
                                                     if report.get("seconds") else "") + ".",
             *[f"Re-measured {', '.join(r['modules'])} at {r['at']} after changes to them."
               for r in report.get("remeasured", [])],
             f"Target: at least {report['target']:.0%} of mutants killed in every module.", "",
             "| module | mutants | killed | survived | of which equivalent | score | without equivalents |",
             "|---|---|---|---|---|---|---|"]
    for row in report["modules"].values():
        score = f"{row['score']:.1%}" if row["score"] is not None else "not run"
        clean = f"{row['score_without_equivalent']:.1%}" if row.get("score_without_equivalent") else "—"
        lines.append(f"| `{row['path']}` | {row['mutants']} | {row['killed']} | {row['survived']} | "
                     f"{row['equivalent']} | {score} | {clean} |")
    lines += ["", "A mutant is killed when at least one test fails, times out or crashes the test run (mutmut's "
              "\"segfault\") with it in place. The tests mutmut runs are the fast ones listed in `pyproject.toml`; "
              "each mutant runs only those that reach the function it changes.", "", "## Survivors", ""]
    for row in report["modules"].values():
        if not row["survivors"]:
            continue
        lines += [f"### `{row['path']}`", ""]
        for survivor in row["survivors"]:
            why = survivor["equivalent"] and f"equivalent: {survivor['equivalent']}" or (
                "no fast test reaches this function" if survivor.get("no_tests") else "not yet caught by a test")
            lines += [f"- `{survivor['name'].rsplit('.', 1)[1]}`: {why}", "", "  ```diff"]
            lines += [f"  {line}" for line in survivor["diff"].splitlines()] + ["  ```", ""]
    REPORT_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="e.g. imaging runs data/archive (default: all)")
    parser.add_argument("--report-only", action="store_true", help="summarise the last run without rerunning")
    args = parser.parse_args(argv)
    paths = modules_to_mutate()
    if args.modules:
        wanted = {m.removesuffix(".py").replace(".", "/") for m in args.modules}
        paths = [p for p in paths if p.removesuffix(".py").removeprefix("cifar_core/") in wanted]
        if not paths:
            parser.error(f"none of {args.modules} is in [tool.mutmut] only_mutate")
    seconds = None if args.report_only else run_mutmut(paths)
    report = summarise(paths, results(), seconds)
    if REPORT_JSON.exists():
        report = merge_into(json.loads(REPORT_JSON.read_text()), report, seconds)
    write_report(report)
    failing = [name for name, row in report["modules"].items()
               if row["score"] is not None and row["score"] < TARGET]
    for name, row in report["modules"].items():
        score = f"{row['score']:.1%}" if row["score"] is not None else "not run"
        print(f"{name:32s} {row['killed']:4d}/{row['mutants']:<4d} {score}")
    print(f"report: {REPORT_MD.relative_to(ROOT)}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
