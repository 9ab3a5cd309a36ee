"""compare's protocols on a real cache: quick vs linear-probe vs knn (issue 16).

Usage (from the repository root)::

    python benchmarks/bench_probe.py --images 2000 --size 96 \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5

Writes ``--images`` Fashion-MNIST train images (bicubic to ``--size`` px, JPEG) in class
folders, extracts them once with the real ImageNet MobileNet (split 0.7/0.15/0.15 by hash),
then runs ``compare`` on the cache with each protocol in turn: ``quick`` (today's small
grids; ``--quick-heads``, default ``logreg,knn``, the counterparts of the two probes),
``linear-probe`` (``--c-grid``, default 45 log-spaced C in [1e-6, 1e5]) and ``knn``
(cosine-weighted, T = 0.07, k in {10, 20, 100, 200}). Prints test accuracy with the 95%
bootstrap interval (the probes) and the seconds each protocol took, and ``--json`` writes
the rows. The split, val and test rows are the same for every protocol.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument(
        "--weights",
        default="../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5",
        help="MobileNet (no top) weights file.",
    )
    parser.add_argument("--work", type=Path, default=None, help="Folder for images and cache.")
    parser.add_argument("--quick-heads", default="logreg,knn")
    parser.add_argument("--c-grid", default=None, help="[default: 1e-6:1e5:45]")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30, help="Of the dense head (quick).")
    parser.add_argument("--json", type=Path, default=None, help="Write the rows here.")
    args = parser.parse_args()

    from featcache import extract
    from featcache.heads.compare import compare
    from featcache.heads.probe import ProbeSettings

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-probe-"))
    images = write_jpeg_folder(work / f"fmnist-{args.images}-{args.size}", args.images, args.size)
    cache = work / f"mobilenet-{args.images}-{args.size}.h5"
    began = time.monotonic()
    extract(
        images,
        output=cache,
        backbone="mobilenet",
        weights=str(Path(args.weights).resolve()),
        image_size=args.size,
        split="0.7,0.15,0.15",
        progress=False,
    )
    extract_seconds = time.monotonic() - began
    print(f"extract: {args.images} images at {args.size} px in {extract_seconds:.1f} s")

    rows = []
    probe_values = {"bootstrap": args.bootstrap}
    if args.c_grid:
        probe_values["c_grid"] = args.c_grid
    for protocol in ("quick", "linear-probe", "knn"):
        began = time.monotonic()
        if protocol == "quick":
            board = compare(
                cache, work / f"compare-{protocol}", heads=args.quick_heads, epochs=args.epochs
            )
        else:
            board = compare(
                cache,
                work / f"compare-{protocol}",
                protocol=protocol,
                probe=ProbeSettings(**probe_values),  # type: ignore[arg-type]
            )
        seconds = time.monotonic() - began
        for row in board.rows:
            name = row.get("protocol") or f"quick {row['head']}"
            rows.append(
                {
                    "protocol": name,
                    "params": row["params"],
                    "selection_accuracy": row["selection_accuracy"],
                    "test_acc1": row.get("test_acc1", row.get("test_accuracy")),
                    "test_acc1_low": row.get("test_acc1_low"),
                    "test_acc1_high": row.get("test_acc1_high"),
                    "test_acc5": row.get("test_acc5"),
                    "test_balanced_accuracy": row.get("test_balanced_accuracy"),
                    "test_macro_f1": row.get("test_macro_f1"),
                    "fit_seconds": row["fit_seconds"],
                    "protocol_seconds": round(seconds, 2),
                }
            )
    print(f"{'protocol':<14} {'val':>6} {'test acc@1':>11} {'95% interval':>16} {'s':>8}  params")
    for row in rows:
        interval = (
            f"[{row['test_acc1_low']:.3f}, {row['test_acc1_high']:.3f}]"
            if row["test_acc1_low"] is not None
            else "-"
        )
        print(
            f"{row['protocol']:<14} {row['selection_accuracy']:>6.3f} {row['test_acc1']:>11.4f} "
            f"{interval:>16} {row['protocol_seconds']:>8.2f}  {row['params']}"
        )
    print("s: the whole compare call of that protocol (quick: every head of --quick-heads)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "images": args.images,
                    "size": args.size,
                    "extract_seconds": round(extract_seconds, 2),
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
