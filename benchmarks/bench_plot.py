"""Seconds of ``featcache plot`` by method and point count, on synthetic clustered features.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/bench_plot.py --rows 1000,3000,5000 --methods pca,tsne

For each row count: writes a real cache through ``CacheWriter`` (10 classes, ``--dim``
float32 features: class centres plus noise), then times ``plot_cache`` (read, normalise,
project, map.png, map.html, points.csv) once per method. The image files do not exist, so
the thumbnails cost only their failed lookups. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from featcache.audit.plot import plot_cache
from featcache.store import CacheSettings, CacheWriter

CLASSES = [f"class_{k}" for k in range(10)]


def write_clustered(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    settings = CacheSettings(
        "synthetic", "", "none", "", (32, 32), "stretch", "avg", "", "none", seed,
        dtype="float32", split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(path.parent),
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), rows)
    centres = rng.normal(0, 1, (len(CLASSES), dim))
    x = centres[labels] + rng.normal(0, 1.5, (rows, dim))
    names = [f"{CLASSES[c]}/img_{i:07d}.png" for i, c in enumerate(labels)]
    writer = CacheWriter(path, settings, CLASSES, {n: i for i, n in enumerate(names)})
    writer.add(
        names,
        [hashlib.sha256(n.encode()).hexdigest() for n in names],
        [CLASSES[c] for c in labels],
        [0 if i % 10 < 8 else 1 + i % 2 for i in range(rows)],
        x.astype(np.float32),
    )
    writer.commit(final=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,3000,5000")
    parser.add_argument("--methods", default="pca,tsne")
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for rows in [int(r) for r in args.rows.split(",")]:
            cache = Path(folder) / f"c{rows}.h5"
            write_clustered(cache, rows, args.dim)
            for method in args.methods.split(","):
                started = time.perf_counter()
                result = plot_cache(cache, Path(folder) / f"{rows}-{method}", method=method)
                seconds = time.perf_counter() - started
                line = {
                    "rows": rows,
                    "dim": args.dim,
                    "method": result.method,
                    "seconds": round(seconds, 2),
                    "html_bytes": Path(result.files["html"]).stat().st_size,
                    "machine": platform.machine(),
                }
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
