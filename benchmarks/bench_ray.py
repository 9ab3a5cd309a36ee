"""The Ray engine against the local engine, side by side in one run.

Usage (from the repository root, after ``pip install '.[ray]'``)::

    python benchmarks/bench_ray.py --images 600 --weights-dir ../shared/weights \
        --json benchmarks/results-ray.json

Every row extracts the same Fashion-MNIST JPEG folder into a fresh cache with the real
MobileNet at 224 px: the local engine, then ``--engine ray`` with one actor of 2 CPUs and
with two actors of 1 CPU each. Each Ray row starts (and stops) its own local Ray
instance, as the CLI does. From the progress callbacks we take the time to the first
embedded shard (start-up: hashing, Ray, actors, model load; TensorFlow is imported by the
benchmark before the local row) and the steady rate after it; the Ray
overhead per image is the difference of the steady per-image times against the local
engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"


def run(data: Path, out: Path, weights: str, engine: str, actors: int, cpus: float) -> dict:
    """One extraction; wall time, start-up and steady images/s from the progress calls."""
    from featcache import RayOptions, extract

    marks: list[tuple[float, int]] = []
    options = RayOptions(actors=actors, cpus_per_actor=cpus) if engine == "ray" else None
    began = time.monotonic()
    summary = extract(
        data,
        output=out,
        backbone="mobilenet",
        weights=weights,
        batch_size=32,
        engine=engine,
        ray_options=options,
        progress=False,
        on_progress=lambda p: marks.append((time.monotonic() - began, p.embedded)),
    )
    wall = time.monotonic() - began
    shards = [(t, n) for t, n in marks if n > 0]
    first_t, first_n = shards[0]
    last_t, last_n = shards[-1]
    steady = (last_n - first_n) / (last_t - first_t) if last_t > first_t else float("nan")
    return {
        "engine": engine if engine == "local" else f"ray {actors}x{cpus:g} CPU",
        "images": summary.new,
        "wall_seconds": round(wall, 2),
        "images_per_second": round(summary.new / wall, 2),
        "startup_seconds": round(first_t, 2),
        "steady_images_per_second": round(steady, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--weights-dir", default=None, help="Folder with the MobileNet weights.")
    parser.add_argument("--json", default=None, help="Write the results here too.")
    args = parser.parse_args()
    weights = str(Path(args.weights_dir) / WEIGHTS) if args.weights_dir else "none"
    import tensorflow  # noqa: F401 - imported once up front, as a Ray actor imports it once

    with tempfile.TemporaryDirectory() as tmp:
        data = write_jpeg_folder(Path(tmp) / "data", args.images, 224)
        rows = []
        for k, (engine, actors, cpus) in enumerate(
            [("local", 0, 0.0), ("ray", 1, 2.0), ("ray", 2, 1.0)]
        ):
            rows.append(run(data, Path(tmp) / f"c{k}.h5", weights, engine, actors, cpus))
            print(json.dumps(rows[-1]), flush=True)
    local = rows[0]
    for row in rows[1:]:
        row["vs_local_steady"] = round(
            row["steady_images_per_second"] / local["steady_images_per_second"], 3
        )
        row["overhead_ms_per_image"] = round(
            1000 / row["steady_images_per_second"] - 1000 / local["steady_images_per_second"], 2
        )
        row["extra_startup_seconds"] = round(row["startup_seconds"] - local["startup_seconds"], 2)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": " ".join(sys.argv),
        "weights": "pretrained" if args.weights_dir else "random",
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
