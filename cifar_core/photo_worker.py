"""The dashboard's model worker: a child process that loads, warms and runs the models.

Why a process and not a thread: importing TensorFlow takes about 3.5 s of CPU
holding Python's global lock. In a thread of the Streamlit server it would
freeze every page for those seconds; in its own process it runs on the other
core while the first page is drawn, and the models are traced and warm before
anyone drops a photo. A crash in it (out of memory on a huge model) leaves the
dashboard up: the next request starts a fresh worker.

The protocol is pickles over a private socket pair between this package's own
two processes (never over the network): ("warm", [run_dir, ...], (run_dir, image) or None),
("read", run_dir, [uint8 image, ...]) -> ("ok", PhotoReading) and
("augment", images, config dict, [seed, ...]) -> ("ok", [images, ...]), ("inspect", run_dir, image)
-> ("ok", Inspection) and ("status",) -> ("ok", warm?);
or ("error", kind, message).
The Augmentation page uses it too, so no page of the dashboard imports TensorFlow.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection

import numpy as np

from . import errors
from .errors import CifarError

WORKER_FD_ENV = "CIFAR_PHOTO_WORKER_FD"
READ_TIMEOUT_SECONDS = 300.0
WORKER_NICENESS = 10  # a first load of a large model on a slow laptop, with margin


class PhotoWorker:
    """The dashboard side: one worker process, one request at a time (sessions take turns)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._warm: tuple | None = None  # the last warm request, sent again to a replacement worker
        self._warm_known = False  # the worker has said it is warm (reset when it is replaced)

    def warm(self, run_dirs: list[str], inspection: tuple[str, np.ndarray] | None = None) -> None:
        """Start the worker (if needed) and have it load and trace these runs in the background, then
        inspect one photo with one run (the Inside page's default); it is warm when all of that is done."""
        with self._lock:
            self._warm = ("warm", [str(d) for d in run_dirs], inspection)
            self._send(self._warm)

    def read(self, run_dir: str, images: list) -> object:
        """The run's PhotoReading for these images; CifarError with the worker's message on failure."""
        return self._call(("read", str(run_dir), images))

    def inspect(self, run_dir: str, image) -> object:
        """The run's Inspection of one photo: feature maps, first filters, Grad-CAM, occlusion."""
        return self._call(("inspect", str(run_dir), image))

    def augment(self, images, config: dict, random_states: list[int]) -> list:
        """The training pipeline's augmentations of `images`, one draw per random state."""
        return self._call(("augment", images, config, random_states))

    def is_warm(self) -> bool:
        """True once the worker has done all it was asked to warm (models, then the inspection). Asked of the
        worker only until it says yes (every page asks; a yes holds until the worker is replaced),
        so a page never waits behind another visitor's photo just to draw the sidebar."""
        if self._warm_known or self._process is None:
            return self._warm_known
        try:
            self._warm_known = bool(self._call(("status",)))
        except CifarError:
            return False
        return self._warm_known

    def _call(self, request: tuple) -> object:
        with self._lock:
            for attempt in (1, 2):  # a worker that died (killed, out of memory) is replaced once
                try:
                    self._send(request)
                    if not self._connection.poll(READ_TIMEOUT_SECONDS):
                        self._stop()
                        raise CifarError(f"the model worker took more than {READ_TIMEOUT_SECONDS:.0f} s; "
                                         "it was restarted")
                    reply = self._connection.recv()
                    break
                except (EOFError, OSError) as exc:
                    self._stop()
                    if attempt == 2:
                        raise CifarError(f"the model worker stopped: {errors.one_line(exc)}") from None
                    if self._warm:
                        self._send(self._warm)
        if reply[0] == "ok":
            return reply[1]
        _, kind, message = reply
        raise _error_class(kind)(message)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _send(self, message) -> None:
        if self._process is None or self._process.poll() is not None:
            self._start()
        self._connection.send(message)

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, **{WORKER_FD_ENV: str(theirs.fileno())})
        self._process = subprocess.Popen([sys.executable, "-m", "cifar_core.photo_worker"], env=env,
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        # Below the dashboard and the browser: warming up must never slow a page being drawn.
        os.setpriority(os.PRIO_PROCESS, self._process.pid, WORKER_NICENESS)
        self._connection = Connection(ours.detach())

    def _stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process, self._connection = None, None
        self._warm_known = False


_warmed = threading.Event()  # set in the worker once its warm-up has finished
_import_lock = threading.Lock()


def _import_tensorflow() -> None:
    """Import TensorFlow and Keras once, whole, before any thread uses them: two threads importing
    TensorFlow at once can see its modules half-initialised (AttributeError deep inside tf.data)."""
    with _import_lock:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def warm_up_runs(run_dirs: list[str], inspection: tuple[str, np.ndarray] | None = None) -> threading.Thread:
    """Load and trace these runs in a background thread, in order, then inspect the photo with its run:
    the first photo a visitor drops is then answered without loading or tracing anything, and the
    Inside page's default opens from the cache. Only then is the worker warm: work still under way
    after "Models ready" would slow the pages a presenter opens next (the Inside page's Grad-CAM and
    occlusion on Lite2 took seconds of both cores)."""
    from .config import TrainConfig
    from .data.pipeline import augment_preview
    from .explain import warm_up
    from .inference import shared_run

    def warm() -> None:
        _import_tensorflow()
        # The Augmentation page's default pipeline first: it costs little once TensorFlow is in.
        augment_preview(np.zeros((1, 32, 32, 3), np.uint8), TrainConfig(augmentations=("flip", "translate")), 0)
        for run_dir in run_dirs:
            try:
                warm_up(shared_run(run_dir))
            except Exception:  # noqa: BLE001 - a bad run shows its own error when a page loads it
                continue
        if inspection is not None:
            try:
                inspect_cached(*inspection)
            except Exception:  # noqa: BLE001 - the page shows its own error when it asks
                pass
        _warmed.set()

    thread = threading.Thread(target=warm, name="studio-warm-up", daemon=True)
    thread.start()
    return thread


_inspections: OrderedDict = OrderedDict()  # (run folder, model version, photo digest) -> Inspection, the latest few
# One inspection at a time: a page asking for the photo the warm-up is inspecting waits for that answer
# instead of computing it a second time beside it.
_inspections_lock = threading.Lock()
MAX_INSPECTIONS = 16


def inspect_cached(run_dir: str, image: np.ndarray):
    """inspect_photo, remembered per run and photo: the Inside page reruns on every widget change."""
    from .explain import inspect_photo
    from .inference import shared_run

    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()
    with _inspections_lock:
        run = shared_run(run_dir)
        key = (run_dir, run.model_stamp, digest)  # a replaced model is inspected afresh, never answered from the old
        if key not in _inspections:
            _inspections[key] = inspect_photo(run, image)
        _inspections.move_to_end(key)  # the least recently viewed goes first: the default photo stays
        while len(_inspections) > MAX_INSPECTIONS:
            _inspections.popitem(last=False)
        return _inspections[key]


def _error_class(name: str) -> type[CifarError]:
    """The worker's error kind as this package's class of that name (CifarError if none)."""
    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, CifarError) else CifarError


def _answer(request: tuple):
    from .config import TrainConfig
    from .data.pipeline import augment_preview
    from .explain import read_photos
    from .inference import shared_run

    if request[0] == "status":
        return _warmed.is_set()
    _import_tensorflow()  # waits for the warm-up thread's import if one is under way
    if request[0] == "read":
        return read_photos(shared_run(request[1]), request[2])
    if request[0] == "inspect":
        return inspect_cached(request[1], request[2])
    if request[0] == "augment":
        config = TrainConfig.from_dict(request[2])
        return [augment_preview(request[1], config, random_state=seed) for seed in request[3]]
    raise CifarError(f"unknown request {request[0]!r}")


def serve(connection: Connection) -> None:
    """The worker side: warm requests run in a background thread; the others answer in order."""
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            # The dashboard went away: leave at once, even mid-import in the warm-up thread
            # (a normal exit would wait for it and hold a core for seconds).
            os._exit(0)
        if request[0] == "warm":
            warm_up_runs(*request[1:])
            continue
        try:
            reply = ("ok", _answer(request))
        except CifarError as exc:
            reply = ("error", type(exc).__name__, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is one line on the page, never a dead worker
            reply = ("error", "CifarError", f"{type(exc).__name__}: {errors.one_line(exc)}")
        connection.send(reply)


if __name__ == "__main__":
    serve(Connection(int(os.environ[WORKER_FD_ENV])))
