"""Latency of ``featcache search`` (exact cosine top-k) on synthetic features (issue 17).

Usage (from the repository root)::

    python benchmarks/bench_search.py --rows 10000,1000000 --dim 1024 --json results-search.json

For each row count: writes a real cache of random float32 features through ``CacheWriter``
(``--dtype`` storage), builds the search index once (``CACHE.search.npy``, timed: the first
query's extra cost), then times ``--queries`` row queries through the Python API
``search(cache, row=..., k=...)`` (index memory-mapped, page cache warm after the first)
and, separately, the bare scan ``query_top_k`` over the index held in RAM. Prints median
and 95th percentile milliseconds. 1M x 1024 float32 is 4 GiB of cache and 4 GiB of index:
give ``--dir`` a disk with room (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from featcache.audit.neighbors import query_top_k
from featcache.audit.search import index_paths, load_index, search
from featcache.store import CacheReader, CacheSettings, CacheWriter


def write_synthetic(path: Path, rows: int, dim: int, dtype: str, seed: int = 0) -> None:
    settings = CacheSettings(
        "synthetic", "", "none", "", (32, 32), "stretch", "avg", "", "none", seed,
        dtype=dtype, split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(path.parent),
    )  # fmt: skip
    names = [f"img_{i:08d}.png" for i in range(rows)]
    writer = CacheWriter(path, settings, ["a", "b"], {n: i for i, n in enumerate(names)},
                         checkpoint_seconds=1e9, max_pending_bytes=1 << 62)  # fmt: skip
    rng = np.random.default_rng(seed)
    step = 65536
    for start in range(0, rows, step):
        chunk = names[start : start + step]
        writer.add(
            chunk,
            [hashlib.sha256(n.encode()).hexdigest() for n in chunk],
            ["a" if i % 2 else "b" for i in range(len(chunk))],
            [0] * len(chunk),
            rng.normal(size=(len(chunk), dim)).astype(np.float32),
        )
    writer.commit(final=True)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,1000000", help="Comma-separated row counts.")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--dir", default=None, help="Folder for the caches (needs room).")
    parser.add_argument("--json", default=None, help="Write the rows to this JSON file.")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in [int(v) for v in args.rows.split(",")]:
            cache = Path(tmp) / f"synthetic-{rows}.h5"
            started = time.perf_counter()
            write_synthetic(cache, rows, args.dim, args.dtype)
            write_s = time.perf_counter() - started
            started = time.perf_counter()
            index, _ = load_index(CacheReader(cache), progress=False)
            build_s = time.perf_counter() - started
            rng = np.random.default_rng(1)
            picks = rng.integers(0, rows, args.queries).tolist()
            api = []
            for row in picks:
                started = time.perf_counter()
                search(cache, row=row, k=args.k, progress=False)
                api.append(time.perf_counter() - started)
            in_ram = np.asarray(index)
            scan = []
            for row in picks:
                started = time.perf_counter()
                next(query_top_k(in_ram, in_ram[row][None, :], args.k, row))
                scan.append(time.perf_counter() - started)
            row_out = {
                "rows": rows,
                "dim": args.dim,
                "dtype": args.dtype,
                "k": args.k,
                "queries": args.queries,
                "write_cache_s": write_s,
                "build_index_s": build_s,
                "search_api": percentiles(api),
                "scan_in_ram": percentiles(scan),
            }
            print(json.dumps(row_out))
            results.append(row_out)
            del index, in_ram
            for path in (cache, *index_paths(cache)):
                path.unlink(missing_ok=True)
    if args.json:
        payload = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
