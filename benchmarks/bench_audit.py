"""Seconds of audit's exact all-neighbours step (blocked products, top-k per row) on
synthetic normalised features (issue 17): the step is O(N^2 D) work in O(N D + block)
memory, so the seconds grow with the square of the rows.

Usage (from the repository root)::

    python benchmarks/bench_audit.py --rows 10000,100000 --dim 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from featcache.audit.neighbors import normalize, top_k_neighbors
from featcache.audit.options import DEFAULT_BLOCK_BYTES, DEFAULT_NEIGHBORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("-k", type=int, default=DEFAULT_NEIGHBORS)
    parser.add_argument("--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES)
    args = parser.parse_args()
    for rows in [int(v) for v in args.rows.split(",")]:
        x = normalize(np.random.default_rng(0).normal(size=(rows, args.dim)).astype(np.float32))
        started = time.perf_counter()
        top_k_neighbors(x, args.k, args.block_bytes)
        seconds = time.perf_counter() - started
        gflop = 2.0 * rows * rows * args.dim / 1e9
        print(json.dumps({
            "rows": rows, "dim": args.dim, "k": args.k, "seconds": seconds,
            "gflop_per_s": gflop / seconds, "cpus": os.cpu_count(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
