"""Command line: python -m cifar_core {train,evaluate,predict,models,bench,analyze,export,serve,ensemble}.

Every failure a user can cause ends with one line on stderr and a non-zero
exit status; set CIFAR_DEBUG=1 to see tracebacks.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .config import AUGMENTATIONS, FIELD_KINDS, OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES, TrainConfig
from .errors import CifarError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifar_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model into a run folder")
    train.add_argument("--model", help="registry name (see `models`)")
    train.add_argument("--preset", help=f"a named recipe whose run ships with the studio: {', '.join(PRESETS)}")
    train.add_argument("--data", help="'keras', a CIFAR python tarball/folder, or an image folder/archive "
                                      "(default: $CIFAR10_SOURCE or keras)")
    train.add_argument("--n-epochs", "--epochs", type=int, dest="n_epochs")
    train.add_argument("--limit", type=int, help="train on a seeded, stratified subset of N images")
    train.add_argument("--run-dir", type=Path, help="run folder (default: artifacts/runs/<new id>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--muon-scale", type=float,
                       help="muon: conv kernels step by lr x this, relative to their norm "
                            f"(default {TrainConfig.muon_scale})")
    train.add_argument("--schedule", choices=SCHEDULES)
    train.add_argument("--input-size", "--image-size", type=int, dest="input_size",
                       help="model input size in pixels; images are resized on the fly (default: the model's)")
    train.add_argument("--augmentations", "--augment", dest="augment",
                       help=f"comma-separated, from {','.join(AUGMENTATIONS)}; or 'none'")
    train.add_argument("--cutout-size", type=int, help="side of the cutout square in pixels (default 12)")
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--fine-tune-epochs", type=int)
    train.add_argument("--fine-tune-layers", type=int,
                       help="transfer: how many weighted backbone layers, counted from the top, fine-tuning trains")
    train.add_argument("--class-weights", action="store_true", default=None)
    train.add_argument("--random-state", "--seed", type=int, dest="random_state")
    train.add_argument("--precision", choices=PRECISIONS,
                       help="mixed_bfloat16 computes in bf16 (faster on CPUs with bf16 instructions); auto picks "
                            "the faster of the two here by a short probe and saves the choice in the config")
    train.add_argument("--config", type=Path, help="a config.json to start from (e.g. a shipped run's)")
    _add_remaining_config_flags(train)

    evaluate = commands.add_parser("evaluate", help="re-measure a saved run on the test split")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data")
    evaluate.add_argument("--input-size", type=int, help="measure a transfer model at another input size "
                                                         "instead (nothing in the run folder changes)")

    predict = commands.add_parser("predict", help="top-3 classes for images")
    predict.add_argument("--run", type=Path, required=True, dest="run_dir")
    predict.add_argument("images", nargs="+", type=Path)

    commands.add_parser("models", help="list the model registry")

    analyze = commands.add_parser("analyze", help="embedding, calibration, robustness and label issues of a run")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument("--only", help="comma-separated: embedding,calibration,robustness,labels (default: all)")
    analyze.add_argument("--data", help="data source (default: the run's config)")
    analyze.add_argument("--force", action="store_true", help="recompute even if the model has not changed")
    bench = commands.add_parser("bench", help="measure this machine: data, training, inference")
    bench.add_argument("--data", help="data source to time (default: $CIFAR10_SOURCE)")
    bench.add_argument("--output", type=Path, default=Path("benchmarks.json"))
    bench.add_argument("--models", default="g3,fastnet,demo,stage",
                       help="recipes to time: models' own or presets' (e.g. stage)")
    bench.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    bench.add_argument("--batch-sizes", default="", help="also time these batch sizes, e.g. 128,512")
    bench.add_argument("--precisions", default="", help="also time these precisions, e.g. float32,mixed_bfloat16")
    bench.add_argument("--compare", default="",
                       help="time these models' previous recipes beside today's in this call, e.g. fastnet,g3")
    export = commands.add_parser("export", help="export a run's model (SavedModel, LiteRT, ONNX), checked on the "
                                                "test split with the runtime that will run it")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", required=True, choices=("saved_model", "tflite", "onnx"), dest="fmt")
    export.add_argument("--quantize", choices=("int8",), help="post-training INT8, calibrated on training images")
    export.add_argument("--out", type=Path, help="folder for the file and manifest.json (default: RUN_DIR/export)")
    export.add_argument("--data", help="data source for the check (default: the run's config)")
    ensemble = commands.add_parser("ensemble", help="several finished runs' test accuracy as one classifier "
                                                    "(the mean of their saved probabilities)")
    ensemble.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    ensemble.add_argument("--output", type=Path, help="also write the figures as JSON here")

    serve = commands.add_parser("serve", help="an HTTP prediction service (FastAPI; docs at /docs)")
    serve.add_argument("--run", type=Path, action="append", required=True, dest="run_dirs",
                       help="a run folder to serve (repeat for several)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    worker = commands.add_parser("worker", help=argparse.SUPPRESS)  # started by the dashboard's job registry
    worker.add_argument("job_id", type=int)
    worker.add_argument("--resume", action="store_true")
    return parser


def cmd_worker(args) -> int:
    from .jobs import run_worker

    return run_worker(args.job_id, resume=args.resume)


# Every config field is a flag of the same name (--n-epochs for n_epochs); these are not.
_NOT_FLAGS = ("model", "augmentations", "model_options")
_FLAG_TYPES = {"int": int, "int?": int, "float": float, "float?": float, "str": str, "str?": str}
_TRAIN_OVERRIDES = tuple(name for name in FIELD_KINDS if name not in _NOT_FLAGS)


def _add_remaining_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each config field the explicit flags above do not cover, named after the field."""
    covered = {action.dest for action in parser._actions}
    for name, kind in FIELD_KINDS.items():
        if name in covered or name in _NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=name)
        else:
            parser.add_argument(flag, type=_FLAG_TYPES[kind], dest=name)


def config_from_args(args):
    """The TrainConfig that `train` flags describe: a recipe (or --config file) plus the flags given."""
    from .config import preset_config, recipe_config

    overrides = {key: getattr(args, key) for key in _TRAIN_OVERRIDES}
    if args.augment is not None:
        overrides["augmentations"] = () if args.augment == "none" else tuple(
            a.strip() for a in args.augment.split(",") if a.strip())
    if args.preset and (args.model or args.config):
        raise CifarError("--preset names the model and its settings; drop --model and --config")
    if args.preset:
        config = preset_config(args.preset, **overrides)
    elif args.config:
        base = TrainConfig.from_json(_read(args.config)).to_dict()
        base.update({k: v for k, v in overrides.items() if v is not None})
        if args.model:
            base["model"] = args.model
        config = TrainConfig.from_dict(base)
    else:
        if not args.model:
            raise CifarError("train needs --preset NAME, --model NAME or --config FILE; "
                             "see `python -m cifar_core models`")
        config = recipe_config(args.model, **overrides)
    if config.data is None:
        from .data import default_source

        config = config.replace(data=default_source())
    return config


def cmd_train(args) -> int:
    from . import runs
    from .training import resume, train
    from .training.distributed import is_chief

    if args.resume:
        if not args.run_dir:
            raise CifarError("--resume needs --run-dir (the run folder to continue)")
        run_dir = resume(args.run_dir)
        config = runs.read_config(args.run_dir)  # the chief's folder: every worker was given it
    else:
        config = config_from_args(args)
        run_dir = train(config, args.run_dir)
    if not is_chief(config.distribute):
        print("this worker's share is done; the chief writes the run folder and its test accuracy")
        return 0
    metrics = runs.read_metrics(run_dir)
    print(f"run folder: {run_dir}")
    print(_accuracy_line(metrics))
    return 0


def _accuracy_line(metrics: dict) -> str:
    line = f"test accuracy: {metrics['test_accuracy']:.4f}  (loss {metrics['test_loss']:.4f}"
    if "test_accuracy_tta" in metrics:
        line += f"; with flip TTA {metrics['test_accuracy_tta']:.4f}"
    return line + f") on {metrics.get('data', 'the test split')}"


def _read(path: Path) -> bytes:
    from .errors import ConfigError
    from .safeio import read_regular_file

    return read_regular_file(path, 1024 * 1024, ConfigError, what="config file")


def cmd_evaluate(args) -> int:
    from .inference import evaluate_run

    metrics = evaluate_run(args.run_dir, args.data, args.input_size)
    line = _accuracy_line(metrics)
    if "trained_input_size" in metrics:
        line += (f" at {metrics['input_size']} px (the model's own size is {metrics['trained_input_size']} px; "
                 "the run's files are unchanged)")
    print(line)
    return 0


def cmd_predict(args) -> int:
    from .evaluation import top_k
    from .imaging import decode_image_file
    from .inference import classify_arrays, load_run_model

    run = load_run_model(args.run_dir)
    failures = 0
    for path in args.images:
        try:
            image = decode_image_file(path)
        except CifarError as exc:  # one line per bad file; the rest are still classified
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        top = top_k(classify_arrays(run, [image]), run.class_names, 3)[0]
        print(f"{path}: " + ", ".join(f"{name} {prob:.1%}" for name, prob in top))
    return EXIT_USER_ERROR if failures else 0


def cmd_models(args) -> int:
    from .models import get_spec, model_names

    for name in model_names():
        spec = get_spec(name)
        kind = "transfer" if spec.transfer else "homebrew"
        print(f"{name:16s} {kind:9s} {spec.input_size:>4d}px  {spec.description}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmarks

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    run_benchmarks(args.data, args.output, [m for m in args.models.split(",") if m], args.steps, batch_sizes,
                   precisions, [m.strip() for m in args.compare.split(",") if m.strip()])
    print(f"results written to {args.output}")
    return 0


def cmd_analyze(args) -> int:
    from .analysis import analyze, parse_only

    outcome = analyze(args.run_dir, parse_only(args.only), source=args.data, force=args.force,
                      progress=lambda line: print(line, flush=True))
    print(", ".join(f"{name} {state}" for name, state in outcome.items()))
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    entry = export_run(args.run_dir, args.fmt, args.quantize, args.out, args.data,
                       progress=lambda line: print(line, flush=True))
    print(f"{entry['file']}: {entry['size_bytes']:,} bytes; test accuracy {entry['accuracy']:.2%} "
          f"(Keras {entry['keras_accuracy']:.2%}, top-1 agreement {entry['agreement']:.2%}); "
          f"batch 1 {entry['latency_ms_p50']} ms p50, {entry['latency_ms_p95']} ms p95; "
          f"batch 64 {entry['throughput_batch64']:,.0f} images/s on {entry['runtime']}")
    return 0


def cmd_ensemble(args) -> int:
    from .ensemble import measure_ensemble

    result = measure_ensemble(args.run_dirs)
    tta = "test_accuracy_tta" in result
    for row in result["members"]:
        print(f"{row['run']} ({row['model']}): {row['test_accuracy']:.2%}"
              + (f", with flip TTA {row['test_accuracy_tta']:.2%}" if tta else ""))
    print(f"ensemble of {len(result['members'])}: {result['test_accuracy']:.2%}"
          + (f", with flip TTA {result['test_accuracy_tta']:.2%}" if tta else "")
          + f" on {result['n_test']:,} test images")
    agreement = result["agreement_tta" if tta else "agreement"]
    print(f"all members agree on {agreement['unanimous_fraction']:.1%} of the images: "
          f"{_share(agreement['accuracy_unanimous'])} right there, {_share(agreement['accuracy_split'])} elsewhere")
    if args.output:
        from .runs import atomic_write_json

        atomic_write_json(args.output, result)
    return 0


def _share(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.run_dirs, args.host, args.port, progress=lambda line: print(line, flush=True))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "models": cmd_models,
            "bench": cmd_bench, "worker": cmd_worker, "analyze": cmd_analyze, "export": cmd_export,
            "serve": cmd_serve, "ensemble": cmd_ensemble}


def _terminate_as_interrupt(signum, frame):
    # A cancel (SIGTERM from the dashboard) stops training like Ctrl-C, so the
    # run is recorded as interrupted and stays resumable.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    debug = bool(os.environ.get("CIFAR_DEBUG"))
    try:
        return COMMANDS[args.command](args)
    except CifarError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place where anything becomes one line
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with CIFAR_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
