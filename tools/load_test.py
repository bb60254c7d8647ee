"""A bounded load test of the prediction service on the loopback interface.

    python -m tools.load_test --run artifacts/runs/fastnet-silu-cifar10 [--run ...] \
        [--clients 8] [--seconds 60] [--hostile-every 10] [--output docs/serve-load.json]

Starts `python -m cifar_core serve` on a free 127.0.0.1 port, waits for /healthz, then runs
`--clients` concurrent clients (threads, each with its own httpx connection) for `--seconds`,
each posting real photos (the shipped CIFAR-10 test sample, as PNG) to /v1/predict. With
`--hostile-every N`, one request in N is hostile instead, in turn: not an image, a truncated PNG,
an oversized body (over the 8 MiB cap), a missing field, a bad top_k. Reports requests/s,
latency p50/p95/p99 of the good requests, status counts, 5xx count, whether the server still
answers afterwards, and its resident memory (start, end, peak, sampled every 0.5 s).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "artifacts" / "samples" / "cifar10-test-sample.npz"
OVERSIZED_BYTES = 9 * 1024 * 1024


def photos() -> list[bytes]:
    from PIL import Image

    with np.load(SAMPLE) as sample:
        images = sample["images"]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def hostile_requests(photo: bytes) -> list[tuple[str, dict, dict]]:
    """(what, files, form) of each hostile kind, sent in turn."""
    return [("not an image", {"image": ("x.png", b"this is not an image" * 20, "image/png")}, {}),
            ("truncated", {"image": ("x.png", photo[: len(photo) // 3], "image/png")}, {}),
            ("oversized", {"image": ("x.png", b"\0" * OVERSIZED_BYTES, "image/png")}, {}),
            ("missing field", {"file": ("x.png", photo, "image/png")}, {}),
            ("bad top_k", {"image": ("x.png", photo, "image/png")}, {"top_k": "many"})]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(run_dirs: list[str], port: int, timeout: float = 180.0) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "cifar_core", "serve", "--port", str(port)]
    for run_dir in run_dirs:
        command += ["--run", run_dir]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server stopped: {server.stdout.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError("the server did not answer /healthz in time")


def run_load(url: str, clients: int, seconds: float, hostile_every: int, server_pid: int | None = None) -> dict:
    import httpx

    good_photos = photos()
    hostile = hostile_requests(good_photos[0])
    latencies: list[float] = []
    statuses: Counter = Counter()
    hostile_statuses: dict[str, Counter] = {what: Counter() for what, _, _ in hostile}
    memory: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(timeout=30) as session:
            count = 0
            while time.monotonic() < stop_at:
                count += 1
                if hostile_every and count % hostile_every == 0:
                    what, files, form = hostile[(count // hostile_every + number) % len(hostile)]
                else:
                    what, files, form = None, {"image": ("photo.png", good_photos[(count + number) % len(
                        good_photos)], "image/png")}, {}
                started = time.perf_counter()
                try:
                    status = session.post(f"{url}/v1/predict", files=files, data=form).status_code
                except httpx.HTTPError as exc:
                    status = f"connection error ({type(exc).__name__})"
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[status] += 1
                    if what:
                        hostile_statuses[what][status] += 1
                    elif status == 200:
                        latencies.append(elapsed)

    def sample_memory() -> None:
        while time.monotonic() < stop_at and server_pid:
            memory.append(rss_mb(server_pid))
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    sampler = threading.Thread(target=sample_memory)
    began = time.perf_counter()
    for thread in [*threads, sampler]:
        thread.start()
    for thread in [*threads, sampler]:
        thread.join()
    wall = time.perf_counter() - began
    total = sum(statuses.values())
    still_answers = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    percentile = (lambda q: round(float(np.percentile(latencies, q)) * 1000, 1)) if latencies else (lambda q: None)
    return {"clients": clients, "seconds": round(wall, 1), "hostile_every": hostile_every or None,
            "requests": total, "requests_per_second": round(total / wall, 1),
            "good_requests_per_second": round(len(latencies) / wall, 1),
            "latency_ms": {"p50": percentile(50), "p95": percentile(95), "p99": percentile(99)},
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "server_errors": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
            "hostile": {what: {str(k): v for k, v in found.items()} for what, found in hostile_statuses.items()
                        if found},
            "still_answers": still_answers,
            "server_memory_mb": {"start": round(memory[0], 1), "end": round(memory[-1], 1),
                                 "peak": round(max(memory), 1)} if memory else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, dest="runs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hostile-every", type=int, default=0, help="one request in N is hostile (0: none)")
    parser.add_argument("--output", type=Path, help="append the report to this JSON file")
    args = parser.parse_args(argv)
    from cifar_core.backend import cpu_name

    port = free_port()
    server = start_server(args.runs, port)
    try:
        report = run_load(f"http://127.0.0.1:{port}", args.clients, args.seconds, args.hostile_every, server.pid)
    finally:
        server.terminate()
        server.wait(20)
    report.update(runs=[Path(r).name for r in args.runs], machine=f"{cpu_name()}, {os.cpu_count()} cores",
                  measured_at=time.strftime("%Y-%m-%d"))
    print(json.dumps(report, indent=2))
    if args.output:
        previous = json.loads(args.output.read_text()) if args.output.exists() else []
        args.output.write_text(json.dumps([*previous, report], indent=2) + "\n")
    return 0 if report["server_errors"] == 0 and report["still_answers"] else 1


if __name__ == "__main__":
    sys.exit(main())
