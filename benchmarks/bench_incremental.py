"""Incremental reruns: a full ``extract``, then 1% new files and a rerun, each in a fresh process.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_incremental.py --images 2000 --backbone mobilenet \
        --weights-dir examples/weights --json benchmarks/results-incremental.json

The images are Fashion-MNIST JPEGs at their native 28 px (``--file-size``), embedded at
``--input-size`` (224). A copy of them gets a full run; then ``--new-percent`` (1%) more
images are added and the rerun starts from a copy of the full run's cache, alternately
without and with ``--rehash`` (``--repeats`` times each; the median is reported).

Each run is a fresh process that imports TensorFlow first, then featcache, then calls
``extract``: the report separates the TensorFlow import, ``load_seconds`` (building the model,
loading its weights, tracing its graph) and ``extract``'s own seconds, and gives the ratio
rerun / full three ways (whole process, ``extract`` alone, ``extract`` less ``load_seconds``).
A separate process without TensorFlow times the read stage of the rerun on its own: listing
the folder, then the stat-only pass over the cached files, and the hashing pass ``--rehash``
does instead (page cache warm: the files were just written or read).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

_STARTED = time.monotonic()
WEIGHT_FILES = {"mobilenet": "mobilenet_1_0_224_imagenet_notop.weights.h5"}


def _weights(backbone: str, weights_dir: str | None) -> str:
    if weights_dir and backbone in WEIGHT_FILES:
        path = Path(weights_dir) / WEIGHT_FILES[backbone]
        if path.is_file():
            return str(path.resolve())
    return "none"


def one_extract(args: argparse.Namespace) -> dict:
    """One ``extract`` in this (fresh) process, TensorFlow imported first and timed."""
    began = time.monotonic()
    import tensorflow  # noqa: F401

    tf_import = time.monotonic() - began
    began = time.monotonic()
    from featcache import extract

    featcache_import = time.monotonic() - began
    summary = extract(
        args.data,
        backbone=args.backbone,
        weights=args.weights_one,
        image_size=args.input_size,
        output=args.output,
        batch_size=args.batch_size,
        rehash=args.rehash,
        progress=False,
    )
    return {
        "new": summary.new,
        "reused": summary.reused,
        "rows": summary.rows,
        "extract_seconds": summary.seconds,
        "load_seconds": summary.load_seconds,
        "tf_import_seconds": tf_import,
        "featcache_import_seconds": featcache_import,
        "in_process_seconds": time.monotonic() - _STARTED,
    }


def one_read_stage(args: argparse.Namespace) -> dict:
    """The rerun's read stage alone (no TensorFlow): list, then stat (or hash) every file
    against the full run's cache, as ``extract`` does before embedding anything."""
    from featcache.core.options import ExtractOptions
    from featcache.extractor.reader import read_items
    from featcache.extractor.sources import scan_dataset
    from featcache.store import CacheReader, CacheWriter

    began = time.monotonic()
    dataset = scan_dataset(args.data)
    listing = time.monotonic() - began
    out: dict = {"files": len(dataset.items), "listing_seconds": listing}
    options = ExtractOptions()
    cache = CacheReader(args.output)
    order = {item.path: i for i, item in enumerate(dataset.items)}
    for rehash in (False, True):
        writer = CacheWriter(args.output, cache.settings, dataset.class_names, order)
        known = writer.index(rehash)
        began = time.monotonic()
        results = list(read_items(dataset, known, options.threads, options.window))
        seconds = time.monotonic() - began
        key = "hash" if rehash else "stat"
        out[f"{key}_seconds"] = seconds
        out[f"{key}_reused"] = sum(1 for each in results if each.reused)
    out["hashed_mib"] = sum((dataset.root / i.path).stat().st_size for i in dataset.items) / 2**20
    return out


def _fresh(mode: str, args: argparse.Namespace, data: Path, output: Path, rehash: bool) -> dict:
    """``--one MODE`` in a fresh process; adds the process's wall time seen from here."""
    command = [sys.executable, __file__, "--one", mode, "--data", str(data)]
    command += ["--output", str(output), "--backbone", args.backbone]
    command += ["--weights-one", args.weights_one, "--input-size", str(args.input_size)]
    command += ["--batch-size", str(args.batch_size)] + (["--rehash"] if rehash else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": wall}


def _median(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["process_seconds"])
    middle = ordered[len(ordered) // 2]
    return {**middle, "all_process_seconds": [r["process_seconds"] for r in runs]}


def _ratios(rerun: dict, full: dict) -> dict:
    steady_full = full["extract_seconds"] - full["load_seconds"]
    steady_rerun = rerun["extract_seconds"] - rerun["load_seconds"]
    return {
        "process": rerun["process_seconds"] / full["process_seconds"],
        "extract": rerun["extract_seconds"] / full["extract_seconds"],
        "extract_less_load": steady_rerun / steady_full if steady_full > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--new-percent", type=float, default=1.0)
    parser.add_argument("--file-size", type=int, default=28, help="pixels of the JPEG files")
    parser.add_argument("--input-size", type=int, default=224, help="the backbone's input")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="reruns of each kind")
    parser.add_argument(
        "--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench-incremental")
    )
    parser.add_argument("--json", dest="json_out", default=None, help="also write results here")
    parser.add_argument("--one", choices=("extract", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--weights-one", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--rehash", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child of _fresh
        row = one_extract(args) if args.one == "extract" else one_read_stage(args)
        print(json.dumps(row))
        return

    args.weights_one = _weights(args.backbone, args.weights_dir)
    new = max(1, round(args.images * args.new_percent / 100))
    root = Path(args.data)
    base = write_jpeg_folder(
        root / f"jpeg{args.file_size}-{args.images}", args.images, args.file_size
    )
    extra = write_jpeg_folder(
        root / f"jpeg{args.file_size}-new-{args.images}-{new}",
        new,
        args.file_size,
        offset=args.images,
    )
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp) / "data"
        shutil.copytree(base, work)
        full_cache = Path(tmp) / "full.h5"
        full = _fresh("extract", args, work, full_cache, rehash=False)
        print(
            f"full run: {full['new']} images, process {full['process_seconds']:.1f} s "
            f"(TF import {full['tf_import_seconds']:.1f} s, load "
            f"{full['load_seconds']:.1f} s, extract {full['extract_seconds']:.1f} s)",
            flush=True,
        )
        shutil.copytree(extra, work, dirs_exist_ok=True)  # the 1% new files
        runs: dict[str, list[dict]] = {"stat": [], "rehash": []}
        for _ in range(args.repeats):
            for kind in runs:  # alternate, each from a copy of the full run's cache
                cache = Path(tmp) / f"rerun-{kind}.h5"
                shutil.copyfile(full_cache, cache)
                run = _fresh("extract", args, work, cache, rehash=kind == "rehash")
                if (run["new"], run["reused"]) != (new, args.images):
                    raise SystemExit(f"rerun embedded {run['new']}, reused {run['reused']}")
                runs[kind].append(run)
        read_stage = _fresh("read", args, work, full_cache, rehash=False)
    stat, rehash = _median(runs["stat"]), _median(runs["rehash"])
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": args.images,
        "new_images": new,
        "file_size": args.file_size,
        "input_size": args.input_size,
        "backbone": args.backbone,
        "weights": Path(args.weights_one).name,
        "full": full,
        "rerun": stat,
        "rerun_rehash": rehash,
        "ratio": _ratios(stat, full),
        "ratio_rehash": _ratios(rehash, full),
        "read_stage": read_stage,
        "runs": runs,
    }
    for name, run in (("rerun", stat), ("rerun --rehash", rehash)):
        ratio = _ratios(run, full)
        print(
            f"{name}: process {run['process_seconds']:.2f} s (TF import "
            f"{run['tf_import_seconds']:.2f} s, load {run['load_seconds']:.2f} s, "
            f"extract {run['extract_seconds']:.2f} s); rerun/full: process "
            f"{ratio['process']:.3f}, extract {ratio['extract']:.3f}, extract less load "
            f"{ratio['extract_less_load']:.3f}",
            flush=True,
        )
    print(
        f"read stage of the rerun ({read_stage['files']} files): listing "
        f"{read_stage['listing_seconds']:.3f} s, stat pass {read_stage['stat_seconds']:.3f} s, "
        f"hash pass {read_stage['hash_seconds']:.3f} s ({read_stage['hashed_mib']:.1f} MiB)",
        flush=True,
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
