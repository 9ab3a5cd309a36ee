"""The search index at scale: exact against faiss IVF kinds, side by side (issue 28).

Usage (from the repository root)::

    python benchmarks/bench_index.py --rows 100000 --variants exact,ivf-flat,ivf-sq8,ivf-pq
    python benchmarks/bench_index.py --rows 1000000 --variants exact,ivf-sq8,ivf-pq \\
        --json benchmarks/results-index.json

For each row count: writes a real cache (``CacheWriter``) of clustered synthetic features
(a two-level mixture of Gaussians: ``--clusters`` x 20 sub-clusters, see ``features``:
close neighbours among many near candidates, as in real embeddings; uniform noise would
have none, one level would make them trivial to find). Then, one
subprocess per variant (so ``ru_maxrss`` is that variant's peak): build the index through
``open_ann`` (timed), time ``--queries`` row queries through the Python API
``search(cache, row=..., k=10, ...)`` after one warm-up call (p50/p95/p99 ms), and
recall@10 against the exact variant's hits (run first). Then the incremental update: 1%
new rows appended to the cache as ``extract`` resumes, ``search`` updates the index
(timed) against a full rebuild of the same state. ``--usearch PYTHON`` also times usearch
(HNSW, f16) built from the same normalised features, raw (outside featcache), run by that
interpreter (a venv with usearch). ``uptime``'s load average is recorded per variant: the
2-core machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from featcache.store import CacheReader, CacheSettings, CacheWriter

HERE = Path(__file__).resolve()
SESSION_ROWS = 262_144
SUBS = 20
"""Sub-centres per cluster."""


def settings(root: Path) -> CacheSettings:
    return CacheSettings(
        "synthetic", "", "none", "", (32, 32), "stretch", "avg", "", "none", 0,
        dtype="float32", split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(root),
    )  # fmt: skip


def features(start: int, count: int, dim: int, clusters: int, noise: float) -> np.ndarray:
    """Rows ``start..start+count`` of a two-level mixture (each block seeded by its start):
    ``clusters`` unit-norm centres, each with ``SUBS`` sub-centres at spread 0.7, rows at
    ``noise`` around a sub-centre. Cosine within a sub-cluster ~0.85 (noise 0.5), across
    sub-clusters of one cluster ~0.55, across clusters ~0: a neighbour list to find among
    many near candidates, as in real embeddings."""
    top = np.random.default_rng(12345)
    centres = top.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    subs = np.repeat(centres, SUBS, axis=0)
    subs += top.normal(0, 0.7 / np.sqrt(dim), subs.shape).astype(np.float32)
    rng = np.random.default_rng(start + 1)
    pick = rng.integers(0, len(subs), count)
    x = subs[pick] + rng.normal(0, noise / np.sqrt(dim), (count, dim)).astype(np.float32)
    return x.astype(np.float32)


def write_rows(path: Path, start: int, rows: int, total: int, args: argparse.Namespace) -> None:
    """Rows ``start..start+rows`` into ``path`` (a new cache, or appended as on resume),
    in writer sessions of at most :data:`SESSION_ROWS` rows (1 GiB pending at 1,024 wide:
    1M rows in one session would hold 4 GiB and more while committing)."""
    names = [f"img_{i:08d}.png" for i in range(total)]
    order = {n: i for i, n in enumerate(names)}
    for first in range(start, start + rows, SESSION_ROWS):
        last = min(start + rows, first + SESSION_ROWS)
        writer = CacheWriter(path, settings(path.parent), ["a", "b"], order,
                             checkpoint_seconds=1e9, max_pending_bytes=1 << 62)  # fmt: skip
        for s in range(first, last, 65536):
            chunk = names[s : min(last, s + 65536)]
            writer.add(
                chunk,
                [hashlib.sha256(n.encode()).hexdigest() for n in chunk],
                ["a" if i % 2 else "b" for i in range(len(chunk))],
                [0] * len(chunk),
                features(s, len(chunk), args.dim, args.clusters, args.noise),
            )
        writer.commit(final=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's
    peak over fork and exec), memory-mapped file pages included."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> float:
    return os.getloadavg()[0]


def pct(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 95, 99)}


def index_bytes(cache: Path, kind: str) -> int:
    names = [".search.npy"] if kind == "exact" else [".search.faiss", ".search.slots.npz"]
    return sum(cache.with_name(cache.name + n).stat().st_size for n in names)


def run_variant(args: argparse.Namespace) -> None:
    """One variant in this process: build, queries through search(), print JSON."""
    from featcache.audit.search import search
    from featcache.store.ann_index import open_ann

    cache, kind = Path(args.cache), args.variant
    load = load_average()
    started = time.perf_counter()
    _, how = open_ann(CacheReader(cache), kind=kind, exact_below=0, rebuild=True, progress=False)
    build_s = time.perf_counter() - started
    picks = json.loads(Path(args.picks).read_text())
    options = {"k": 10, "index_kind": kind, "exact_below": 0, "progress": False}
    started = time.perf_counter()
    search(cache, row=picks[0], **options)  # opens the cache's rows and the index
    first_s = time.perf_counter() - started
    times, hits = [], []
    for row in picks:
        started = time.perf_counter()
        result = search(cache, row=row, **options)
        times.append(time.perf_counter() - started)
        hits.append([h["row"] for h in result.hits])
    out = {
        "variant": kind,
        "how": how,
        "build_s": build_s,
        "first_query_s": first_s,
        "api": pct(times),
        "peak_rss_mb": peak_rss_mb(),
        "index_mb": index_bytes(cache, kind) / 2**20,
        "hits": hits,
        "load_before": load,
        "load_after": load_average(),
    }
    meta = cache.with_name(cache.name + ".search.ann.json")
    if kind != "exact":
        info = json.loads(meta.read_text())
        out.update({f: info[f] for f in ("factory", "nprobe", "rerank", "recall")})
    print(json.dumps(out))


def run_update(args: argparse.Namespace) -> None:
    """Append 1% rows as extract's resume does; time the update against a full build
    (of the cache before the append; at most 200k rows also of the state after it)."""
    from featcache.audit.search import search

    cache, kind = Path(args.cache), args.variant
    options = {"k": 10, "index_kind": kind, "exact_below": 0, "progress": False}
    started = time.perf_counter()
    search(cache, row=0, rebuild=True, **options)  # a full build of the cache as it is
    build_s = time.perf_counter() - started
    rows = len(CacheReader(cache))
    new = max(1, rows // 100)
    write_rows(cache, rows, new, rows + new, args)
    load = load_average()
    started = time.perf_counter()
    result = search(cache, row=rows + 1, **options)
    update_s = time.perf_counter() - started
    out = {"variant": kind, "rows": rows, "added": new, "full_build_s": build_s,
           "status": result.index_status, "update_s": update_s, "load": load}  # fmt: skip
    if rows <= 200_000:
        started = time.perf_counter()
        again = search(cache, row=rows + 1, rebuild=True, **options)
        out["rebuild_after_s"] = time.perf_counter() - started
        out["rebuild_status"] = again.index_status
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


USEARCH = """
import json, sys, time, numpy as np
from usearch.index import Index
x = np.load(sys.argv[1], mmap_mode="r"); picks = json.loads(open(sys.argv[2]).read())
t = time.perf_counter(); index = Index(ndim=x.shape[1], metric="ip", dtype="f16")
for s in range(0, len(x), 65536):
    index.add(np.arange(s, min(len(x), s + 65536)), np.asarray(x[s : s + 65536]))
build = time.perf_counter() - t
times, hits = [], []
for r in picks:
    t = time.perf_counter(); m = index.search(np.asarray(x[r]), 11)
    times.append(time.perf_counter() - t); hits.append([int(k) for k in m.keys if k != r][:10])
ms = np.asarray(times) * 1000
print(json.dumps({"variant": "usearch-hnsw-f16", "build_s": build, "hits": hits,
    "raw": {f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 95, 99)},
    "peak_rss_mb": [int(v.split()[1]) / 1024 for v in open("/proc/self/status")
                    if v.startswith("VmHWM:")][0],
    "index_mb": index.memory_usage / 2**20}))
"""


def child(argv: list[str], python: str = sys.executable) -> dict:
    done = subprocess.run([python, *argv], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def recall(hits: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(h) & set(t)) / max(1, len(t)) for h, t in zip(hits, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000", help="Comma-separated row counts.")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=1000, help="Top-level clusters.")
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--variants", default="exact,ivf-sq8,ivf-pq")
    parser.add_argument("--update", default="ivf-sq8", help="Variant of the 1%% update run.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--usearch", default=None, help="A Python with usearch installed.")
    parser.add_argument("--real", default=None, help="An existing cache to run instead.")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--picks", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="main", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "variant":
        return run_variant(args)
    if args.mode == "update":
        return run_update(args)
    results = (
        json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    )
    results.setdefault("runs", [])
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in [int(v) for v in args.rows.split(",")] if not args.real else [0]:
            cache = Path(tmp) / f"mix-{rows}.h5"
            started = time.perf_counter()
            if args.real:
                cache = Path(tmp) / Path(args.real).name
                os.link(args.real, cache)  # its indexes go in the temporary folder
                rows = len(CacheReader(cache))
            else:
                write_rows(cache, 0, rows, rows, args)
            write_s = time.perf_counter() - started
            picks = Path(tmp) / "picks.json"
            chosen = np.random.default_rng(7).choice(rows, args.queries, replace=False)
            picks.write_text(json.dumps(sorted(chosen.tolist())))
            common = [str(HERE), "--cache", str(cache), "--picks", str(picks),
                      "--dim", str(args.dim), "--clusters", str(args.clusters),
                      "--noise", str(args.noise)]  # fmt: skip
            run = {"rows": rows, "real": args.real, "dim": args.dim, "clusters": args.clusters,
                   "noise": args.noise, "queries": args.queries, "write_cache_s": write_s,
                   "variants": []}  # fmt: skip
            truth = None
            for kind in args.variants.split(","):
                out = child([*common, "--mode", "variant", "--variant", kind])
                truth = out["hits"] if kind == "exact" else truth
                out["recall_at_10"] = recall(out.pop("hits"), truth) if truth else None
                print(json.dumps(out), flush=True)
                run["variants"].append(out)
            if args.usearch:
                from featcache.store.search_index import index_paths, load_index

                load_index(CacheReader(cache), progress=False)  # normalised float32 .npy
                out = child(["-c", USEARCH, str(index_paths(cache)[0]), str(picks)], args.usearch)
                out["recall_at_10"] = recall(out.pop("hits"), truth) if truth else None
                print(json.dumps(out), flush=True)
                run["variants"].append(out)
            if args.update:
                out = child([*common, "--mode", "update", "--variant", args.update])
                print(json.dumps(out), flush=True)
                run["update"] = out
            run["date"] = datetime.now(UTC).isoformat(timespec="seconds")
            same = [r for r in results["runs"] if (r["rows"], r.get("real")) == (rows, args.real)]
            results["runs"] = [r for r in results["runs"] if r not in same] + [run]
            results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
            for path in Path(tmp).iterdir():
                path.unlink()


if __name__ == "__main__":
    main()
