"""gRPC service throughput and latency against in-process batched extraction.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_service.py --images 240 --clients 1,4,16 \
        --weights-dir ../shared/weights --json /tmp/bench-service.json

A ``featcache serve`` subprocess (MobileNet, preloaded) answers N client threads, each
sending one JPEG per ``Embed`` call, back to back, for ``--images`` calls in all; once
with dynamic batching (``--max-batch 32 --max-delay-ms 5``) and once with
``--no-batching``. The server decodes and resizes, as ``extract`` does. The reference is
in-process batched extraction in the same run: ``extract`` over the same files (batches
of 32, JPEG files to an HDF5 cache), model load excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"


def _drain(stream) -> None:
    """Keep reading the server's log so that it never blocks on a full pipe."""
    for _ in stream:
        pass


def start_server(
    weights_dir: str | None, batching: bool, size: int
) -> tuple[subprocess.Popen, int]:
    """``featcache serve`` on a free port; returns once health says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    preload = f"mobilenet={WEIGHTS}@{size}" if weights_dir else f"mobilenet=none@{size}"
    command = [sys.executable, "-m", "featcache.cli", "serve", "--port", "0"]
    command += ["--preload", preload, "--max-batch", "32", "--max-delay-ms", "5"]
    if weights_dir:
        command += ["--weights-root", weights_dir]
    if not batching:
        command.append("--no-batching")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    port = 0
    for line in process.stderr:
        if "listening on" in line:
            port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
            break
    if not port:
        raise SystemExit("the server did not start")
    threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while (
            health.Check(health_pb2.HealthCheckRequest(), timeout=60).status
            != health_pb2.HealthCheckResponse.SERVING
        ):
            time.sleep(0.2)
    return process, port


def clients_run(port: int, files: list[bytes], clients: int, weights: str, size: int) -> dict:
    """``clients`` threads, one image per call, ``len(files)`` calls in all."""
    from featcache.service.client import Client

    connections = [Client(f"127.0.0.1:{port}") for _ in range(clients)]
    settings = {"weights": weights, "image_size": size}
    for connection in connections:  # connect and warm up
        connection.embed([files[0]], "mobilenet", **settings)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(len(files)))
    barrier = threading.Barrier(clients + 1)

    def work(connection) -> None:
        barrier.wait()
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            began = time.perf_counter()
            connection.embed([files[index]], "mobilenet", **settings)
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=work, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    for connection in connections:
        connection.close()
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "images": len(latencies),
        "seconds": seconds,
        "images_per_second": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def in_process(folder: Path, weights: str, size: int) -> dict:
    from featcache import extract

    with tempfile.TemporaryDirectory() as tmp:
        extract(folder, backbone="mobilenet", weights=weights, image_size=size,
                output=Path(tmp) / "warm.h5", progress=False)  # fmt: skip
        summary = extract(folder, backbone="mobilenet", weights=weights, image_size=size,
                          output=Path(tmp) / "c.h5", progress=False)  # fmt: skip
    seconds = summary.seconds - summary.load_seconds
    return {"images": summary.new, "seconds": seconds, "images_per_second": summary.new / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240, help="calls per client setting")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()

    weights_dir = (
        args.weights_dir
        if args.weights_dir and (Path(args.weights_dir) / WEIGHTS).is_file()
        else None
    )
    folder = write_jpeg_folder(Path(args.data) / f"jpeg{args.size}-{args.images}", args.images,
                               args.size)  # fmt: skip
    paths = sorted(folder.rglob("*.jpg"))
    files = [p.read_bytes() for p in paths]
    local_weights = str(Path(weights_dir) / WEIGHTS) if weights_dir else "none"
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": len(files),
        "size": args.size,
        "weights": Path(local_weights).name,
        "runs": [],
    }
    reference = in_process(folder, local_weights, args.size)
    results["in_process"] = reference
    print(f"in-process extract: {reference['images_per_second']:.1f} img/s", flush=True)
    for batching in (True, False):
        process, port = start_server(weights_dir, batching, args.size)
        try:
            for clients in [int(c) for c in args.clients.split(",")]:
                remote_weights = WEIGHTS if weights_dir else "none"
                row = clients_run(port, files, clients, remote_weights, args.size)
                row["batching"] = batching
                row["vs_in_process"] = row["images_per_second"] / reference["images_per_second"]
                results["runs"].append(row)
                print(
                    f"batching {'on ' if batching else 'off'} {clients:>2} clients: "
                    f"{row['images_per_second']:.1f} img/s ({row['vs_in_process']:.2f}x), "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(60)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
