"""A 4-shard manifest against the same rows in one cache (issue 28): opening, train-head,
search.

Usage (from the repository root)::

    python benchmarks/bench_manifest.py --rows 100000 --dim 512 --shards 4 --json out.json

Writes ``--rows`` synthetic labelled rows (10 separable classes, splits train/val/test
80/10/10) as one cache and as ``--shards`` caches of the same rows (every n-th row, as
``extract --shard`` spreads a folder), plus their manifest. Then times, for each layout:
opening (``open_cache``: the manifest checks settings and that no row is in two shards);
``train_head`` with a logistic-regression head (features loaded in memory) and with the
dense head streamed from disk (``stream=True``: shuffled batches across every shard);
``search`` by row: building the index (``rebuild``) and the median of ``--queries`` later
calls (each opens the cache or manifest again). Each measure runs ``--repeat`` times, the
two layouts in turn (a busy machine slows both alike), after one warm-up training (the
TensorFlow import); the median is printed, one JSON line per measure with the ratio
manifest / one cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featcache import search, train_head
from featcache.store import CacheSettings, CacheWriter, open_cache
from featcache.store.opening import create_manifest

CLASSES = [f"c{i}" for i in range(10)]


def write_cache(path: Path, names: list[str], labels: np.ndarray, x: np.ndarray) -> None:
    settings = CacheSettings(
        "synthetic", "", "none", "", (32, 32), "stretch", "avg", "", "none", 0,
        dtype="float16", split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(path.parent),
    )  # fmt: skip
    writer = CacheWriter(path, settings, CLASSES, {n: i for i, n in enumerate(names)},
                         checkpoint_seconds=1e9, max_pending_bytes=1 << 62)  # fmt: skip
    split = np.asarray([0] * 8 + [1, 2])[np.arange(len(names)) % 10]
    step = 65536
    for start in range(0, len(names), step):
        chunk = slice(start, start + step)
        writer.add(
            names[chunk],
            [hashlib.sha256(n.encode()).hexdigest() for n in names[chunk]],
            [CLASSES[v] for v in labels[chunk]],
            split[chunk].tolist(),
            x[chunk],
        )
    writer.commit(final=True)


def timed(run: Callable[[], Any], repeat: int = 1) -> float:
    """Median seconds of ``repeat`` calls."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2, help="Dense head epochs (streamed).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each measure (median).")
    parser.add_argument("--dir", default=None, help="Folder for the caches.")
    parser.add_argument("--json", default=None, help="Write the rows to this JSON file.")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), args.rows)
    centres = rng.normal(0, 1, (len(CLASSES), args.dim))
    x = (centres[labels] + rng.normal(0, 2, (args.rows, args.dim))).astype(np.float32)
    names = [f"{CLASSES[v]}/img_{i:08d}.png" for i, v in enumerate(labels)]
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        one = root / "one.h5"
        write_cache(one, names, labels, x)
        parts = []
        for i in range(args.shards):
            at = np.arange(i, args.rows, args.shards)
            parts.append(root / f"part-{i}.h5")
            write_cache(parts[-1], [names[j] for j in at], labels[at], x[at])
        manifest = root / "all.featcache.json"
        create_manifest(manifest, parts)
        layouts = {"one_cache": one, "manifest": manifest}
        picks = rng.integers(0, args.rows, args.queries).tolist()
        made = iter(range(1 << 30))

        def fresh(stem: str) -> Path:
            return root / "runs" / f"{stem}-{next(made)}"

        train_head(manifest, head="dense", epochs=1, output=root / "warm-up", progress=False)
        runs: dict[str, Callable[[Path, str], Any]] = {
            "open_s": lambda cache, name: open_cache(cache),
            "train_logreg_s": lambda cache, name: train_head(
                cache, head="logreg", output=fresh(f"lr-{name}")
            ),
            "train_dense_streamed_s": lambda cache, name: train_head(
                cache,
                head="dense",
                epochs=args.epochs,
                stream=True,
                output=fresh(f"dense-{name}"),
                progress=False,
            ),
            "search_first_s": lambda cache, name: search(
                cache, row=0, k=10, rebuild=True, progress=False
            ),
        }
        measured: dict[str, dict[str, list[float]]] = {name: {} for name in layouts}
        for key, run in runs.items():
            for _ in range(args.repeat):  # layouts interleaved: a busy machine slows both
                for name, cache in layouts.items():
                    seconds = timed(lambda: run(cache, name))  # noqa: B023
                    measured[name].setdefault(key, []).append(seconds)
        for r in picks:
            for name, cache in layouts.items():
                seconds = timed(lambda: search(cache, row=r, k=10, progress=False))  # noqa: B023
                measured[name].setdefault("search_s", []).append(seconds)
        for key in measured["one_cache"]:
            row = {
                "measure": key,
                "rows": args.rows,
                "dim": args.dim,
                "shards": args.shards,
                "one_cache_s": round(statistics.median(measured["one_cache"][key]), 4),
                "manifest_s": round(statistics.median(measured["manifest"][key]), 4),
            }
            row["ratio"] = round(row["manifest_s"] / row["one_cache_s"], 3)
            print(json.dumps(row))
            results.append(row)
    if args.json:
        payload = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
