"""audit through the approximate index against the exact path (issue 28): the whole
``audit_cache`` (read, neighbours, pairs and outliers, label check) on caches of clustered
synthetic features with planted exact and near duplicates, per stage, with peak RSS and the
near-duplicate pairs found.

Features: a mixture of Gaussians (one centre per 1,000 rows, unit-norm centres, isotropic
noise of norm 1, so two rows of one cluster have a cosine of about 0.5), labels the
cluster modulo 10 with 2% flipped. Planted: 1% of the rows are exact copies of another row
(same SHA-256), 2% are near copies, their noise set for cosines of 0.98, 0.965, 0.95,
0.935 and 0.91 (around the default threshold, 0.95). Each variant runs in its own
subprocess (its ``ru_maxrss`` is its peak, its user + system CPU seconds say what the
run needs when other jobs share the cores: ``cpu_s``); recall is the share of the exact path's
near-duplicate pairs (at the threshold) that the approximate one finds; where the exact
path is not run, the share of planted pairs whose cosine reaches the threshold.

    python benchmarks/bench_audit_ann.py --rows 10000,100000 --exact-rows 10000,100000
    python benchmarks/bench_audit_ann.py --rows 1000000 --exact-rows ""
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS_PER_CLUSTER = 1000
CHUNK = 65536
NEAR_COSINES = (0.98, 0.965, 0.95, 0.935, 0.91)


def chunk_features(rows: int, dim: int, start: int, stop: int, seed: int):
    """Rows ``start:stop``: features, labels, content keys, planted pairs (a, b, kind)."""
    clusters = max(10, rows // ROWS_PER_CLUSTER)
    centres = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, start])
    n = stop - start
    which = rng.integers(0, clusters, n)
    x = centres[which] + rng.normal(0, 1 / np.sqrt(dim), (n, dim)).astype(np.float32)
    labels = which % 10
    flip = rng.random(n) < 0.02
    labels[flip] = (labels[flip] + rng.integers(1, 10, int(flip.sum()))) % 10
    keys = [f"row-{start + i}" for i in range(n)]
    picks = rng.choice(n, 2 * (3 * n // 100), replace=False)
    sources, copies = np.split(picks, 2)
    pairs = []
    for j, (src, dst) in enumerate(zip(sources, copies)):
        if j % 3 == 0:
            x[dst], keys[dst], labels[dst] = x[src], keys[src], labels[src]
            kind = "exact"
        else:
            cos = NEAR_COSINES[j % len(NEAR_COSINES)]
            scale = np.sqrt(1 / cos**2 - 1) * np.linalg.norm(x[src]) / np.sqrt(dim)
            x[dst] = x[src] + rng.normal(0, scale, dim).astype(np.float32)
            kind = "near"
        pairs.append((start + int(min(src, dst)), start + int(max(src, dst)), kind))
    return x, labels, keys, pairs


def write_cache(path: Path, rows: int, dim: int, seed: int) -> None:
    """The synthetic cache, and ``PATH.planted.json`` (the planted pairs)."""
    from featcache.store import CacheSettings, CacheWriter

    settings = CacheSettings(
        "synthetic", "", "none", "", (32, 32), "stretch", "avg", "", "none", seed,
        dtype="float32", split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(path.parent),
    )  # fmt: skip
    names = [f"c{i % 10}/img_{i:08d}.png" for i in range(rows)]
    classes = [f"c{i}" for i in range(10)]
    writer = CacheWriter(path, settings, classes, {n: i for i, n in enumerate(names)},
                         checkpoint_seconds=1e9, max_pending_bytes=1 << 62)  # fmt: skip
    planted = []
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        x, labels, keys, pairs = chunk_features(rows, dim, start, stop, seed)
        split = [int(hashlib.sha256(k.encode()).digest()[0]) % 10 for k in keys]
        writer.add(
            names[start:stop],
            [hashlib.sha256(k.encode()).hexdigest() for k in keys],
            [classes[c] for c in labels],
            [0 if s < 8 else 1 if s == 8 else 2 for s in split],
            x,
        )
        planted += pairs
    writer.commit(final=True)
    Path(f"{path}.planted.json").write_text(json.dumps(planted))


def run_variant(cache: Path, method: str, out: Path) -> None:
    """One audit in this process; its result (and near pairs) into ``out``."""
    from featcache.audit.audit import audit_cache
    from featcache.audit.options import AuditOptions

    load = os.getloadavg()
    started = time.perf_counter()
    exact = method == "exact"
    report = audit_cache(cache, AuditOptions(exact=exact, approximate_from=2, progress=False))
    total = time.perf_counter() - started
    pairs = [[p.a, p.b, p.similarity] for p in report.near_pairs]
    summary = report.summary()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.write_text(json.dumps({
        "method": method, "rows": report.rows, "seconds": total, "stages": report.seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gib": usage.ru_maxrss / 2**20,
        "load_before": load, "load_after": os.getloadavg(),
        "index": report.neighbors_method,
        "near_pairs": len(pairs), "duplicate_groups": len(report.duplicate_groups),
        "leakage_pairs": summary["leakage_pairs"], "outliers": summary["outliers"],
        "label_issues": summary["label_issues"],
        "label_errors_estimated": summary.get("label_errors_estimated"),
        "pairs": pairs,
    }))  # fmt: skip


def planted_recall(cache: Path, found: set[tuple[int, int]], threshold: float) -> dict:
    """Share of the planted near pairs whose cosine reaches ``threshold`` that were found."""
    from featcache.audit.neighbors import normalize
    from featcache.store import CacheReader

    planted = [p for p in json.loads(Path(f"{cache}.planted.json").read_text()) if p[2] == "near"]
    reader = CacheReader(cache)
    wanted = np.zeros(len(reader), bool)
    wanted[[r for a, b, _ in planted for r in (a, b)]] = True
    x = {}
    for rows, block in reader.batches(batch_size=CHUNK):  # sequential: scattered reads crawl
        pick = wanted[rows]
        x.update(zip(rows[pick].tolist(), normalize(block[pick])))
    reach = [(a, b) for a, b, _ in planted if float(x[a] @ x[b]) >= threshold]
    hit = sum(1 for pair in reach if pair in found)
    return {"planted_at_threshold": len(reach), "found": hit, "recall": hit / max(len(reach), 1)}


def subprocess_json(args: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, __file__, *args, "--out", str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--exact-rows", default="10000,100000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="Where the caches go (else a temp dir).")
    parser.add_argument("--json", default="benchmarks/results-audit-ann.json")
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="ann", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:  # child: write one cache
        started = time.perf_counter()
        write_cache(Path(args.write), int(args.rows), args.dim, args.seed)
        Path(args.out).write_text(json.dumps({"write_s": time.perf_counter() - started}))
        return
    if args.run:  # child: one audit
        run_variant(Path(args.run), args.method, Path(args.out))
        return
    from featcache.audit.options import DEFAULT_THRESHOLD

    exact_rows = {int(v) for v in args.exact_rows.split(",") if v}
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for rows in [int(v) for v in args.rows.split(",")]:
            cache = Path(tmp) / f"synthetic-{rows}.h5"
            out = Path(tmp) / "out.json"
            write = ["--write", str(cache), "--rows", str(rows), "--dim", str(args.dim)]
            wrote = subprocess_json([*write, "--seed", str(args.seed)], out)
            entry: dict = {
                "rows": rows,
                "dim": args.dim,
                "write_cache_s": wrote["write_s"],
                "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            for method in ("ann", *(("exact",) if rows in exact_rows else ())):
                got = subprocess_json(["--run", str(cache), "--method", method], out)
                pairs = {(a, b) for a, b, _ in got.pop("pairs")}
                got["planted"] = planted_recall(cache, pairs, DEFAULT_THRESHOLD)
                entry[method] = got
                entry[f"{method}_pairs"] = pairs
                print(json.dumps({k: v for k, v in got.items()}), flush=True)
            if "exact" in entry:
                want, have = entry["exact_pairs"], entry["ann_pairs"]
                entry["pair_recall_vs_exact"] = len(want & have) / max(len(want), 1)
                entry["extra_pairs_vs_exact"] = len(have - want)
            entry.pop("exact_pairs", None)
            entry.pop("ann_pairs", None)
            print(json.dumps({k: v for k, v in entry.items() if k not in ("ann", "exact")}))
            results = [r for r in results if r["rows"] != rows] + [entry]
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
            for path in (cache, Path(f"{cache}.planted.json")):
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
