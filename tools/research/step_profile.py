"""Where a homebrew recipe's training step goes on this machine: TensorFlow's own profiler around
a few full steps (bench's timing: the augmentation pipeline, random images), its host-op events
summed per op type. Each row is milliseconds per step; nested events (an XLA launch inside its
op) are counted where they run, so rows can add up to more than the step.

    python -m tools.research.step_profile [recipe] [steps] [--stock kernel,kernel]

`--stock` builds the named training kernels (models/layers.py TRAINING_KERNELS) as Keras' own
layers, to see what each one takes off the step.
"""
from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

# Ops that stand for work done elsewhere (the executor's own bookkeeping, the step as a whole).
WRAPPER_EVENTS = {"Process", "RunAsync", "ExecutorDoneCallback", "BlockUntilReady"}


def op_type(event_name: str) -> str:
    """'block1_conv1/Conv2D:_MklNativeConv2D' -> '_MklNativeConv2D'; a bare name stays as it is."""
    return event_name.rsplit(":", 1)[-1]


def milliseconds_per_op(space, steps: int) -> dict[str, tuple[float, float]]:
    """{op type: (ms per step, calls per step)} over the host's TensorFlow threads of an XSpace."""
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_"):
                continue  # the Python thread and the profiler's own lines
            for event in line.events:
                kind = op_type(names[event.metadata_id].name)
                if kind in WRAPPER_EVENTS:
                    continue
                total[kind] += event.duration_ps / 1e9
                calls[kind] += 1
    return {kind: (ms / steps, calls[kind] / steps) for kind, ms in total.most_common()}


def profile(recipe: str, steps: int, stock: tuple[str, ...] = ()) -> tuple[float, dict]:
    """(images/s of the profiled steps, milliseconds_per_op) for `steps` steps after 3 warm-up ones."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from cifar_core import backend, bench
    from cifar_core.config import named_recipe
    from cifar_core.training.precision import resolve_precision

    backend.configure()
    config = resolve_precision(named_recipe(recipe))
    model = bench.compiled_training_model(config, stock)
    bench.time_steps(model, config, 2, 3)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        images_per_second, _ = bench.time_steps(model, config, steps, 0)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    return images_per_second, milliseconds_per_op(space, steps)


def main(argv: list[str] | None = None) -> None:
    from cifar_core import backend

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="fastnet")
    parser.add_argument("steps", nargs="?", type=int, default=5)
    parser.add_argument("--stock", default="", help="training kernels to build as Keras' own, comma-separated")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    stock = tuple(name for name in args.stock.split(",") if name)
    rate, table = profile(args.recipe, args.steps, stock)
    print(f"{args.recipe} on {backend.cpu_name()}: {rate:.1f} images/s while profiled"
          + (f", built with Keras' own {', '.join(stock)}" if stock else ""))
    for kind, (ms, calls) in list(table.items())[:args.rows]:
        print(f"{ms:8.1f} ms/step {calls:6.1f} calls  {kind}")


if __name__ == "__main__":
    main()
