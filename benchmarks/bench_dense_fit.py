"""The dense head's training input: Keras's own array input (what ``DenseHead.fit`` passed
before) against the head's shuffled-index pipeline (``heads/train_input.py``), side by side.

Usage (from the repository root)::

    python benchmarks/bench_dense_fit.py --repeats 3 --json results-dense-fit.json
    python benchmarks/bench_dense_fit.py --repeats 3 --fresh --json fresh.json  # each fit in
                                                                               # a new process

Per shape (rows x features, epochs), both inputs train the same model (``DenseHead``'s,
built the same way, same seed) on separable Gaussian blobs with a 10% val split, in
alternating order: the seconds ``fit`` takes (building and compiling included), the train
steps taken (the same for both: each epoch is one pass over train) and the val accuracy
reached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from featcache.heads.dense import DenseHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import _cpu_flags
from ood_datasets import run_record

SHAPES = [(150, 64, 20), (2_000, 1024, 30), (20_000, 1024, 5)]
"""(rows, features, epochs): a handful of images, a small data set, a larger one."""


def blobs(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, rows)
    centres = rng.normal(0, 1, (5, features))
    x = centres[labels] + rng.normal(0, np.sqrt(features) / 8, (rows, features))
    return x.astype(np.float32), labels


def fit(x: np.ndarray, y: np.ndarray, epochs: int, ours: bool) -> dict[str, Any]:
    cut = len(x) // 10
    (xv, yv), (xt, yt) = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    head = DenseHead(hidden=(64,), epochs=epochs, patience=0, seed=0)
    started = time.perf_counter()
    if ours:
        model = head.fit(xt, yt, validation_data=(xv, yv)).model_
    else:  # what DenseHead.fit passed Keras before: the arrays
        model = head._build(x.shape[1], 5)
        model.fit(
            xt,
            yt,
            validation_data=(xv, yv),
            epochs=epochs,
            batch_size=head.batch_size,
            shuffle=True,
            verbose=0,
        )
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(np.argmax(np.asarray(model(xv)), axis=1) == yv))
    return {
        "seconds": seconds,
        "steps": int(model.optimizer.iterations.numpy()),
        "val_accuracy": accuracy,
    }


def fresh(rows: int, features: int, epochs: int, ours: bool) -> dict[str, Any]:
    """:func:`fit` in a new Python process (TensorFlow loaded, nothing traced before it)."""
    arm = "ours" if ours else "keras"
    command = [sys.executable, __file__, "--one", str(rows), str(features), str(epochs), arm]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="each fit in a new Python process, as a user's train-head; default: all in one "
        "process after a warm-up fit",
    )
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child of --fresh: one fit, as JSON on the last line
        rows, features, epochs = (int(v) for v in args.one[:3])
        import tensorflow  # noqa: F401  (loaded before the clock, as in the parent's runs)

        print(json.dumps(fit(*blobs(rows, features, 0), epochs, args.one[3] == "ours")))
        return
    if not args.fresh:
        fit(*blobs(100, 8, 0), 1, True)  # TensorFlow's first graph, outside the figures
    results = []
    for rows, features, epochs in SHAPES:
        x, y = blobs(rows, features, 0)
        runs: dict[str, list[dict[str, Any]]] = {"keras arrays": [], "ours": []}
        for repeat in range(args.repeats):
            order = ["keras arrays", "ours"] if repeat % 2 == 0 else ["ours", "keras arrays"]
            for name in order:
                ours = name == "ours"
                runs[name].append(
                    fresh(rows, features, epochs, ours) if args.fresh else fit(x, y, epochs, ours)
                )
        row: dict[str, Any] = {"rows": rows, "features": features, "epochs": epochs}
        for name, done in runs.items():
            row[name] = {
                "seconds_median": round(statistics.median(r["seconds"] for r in done), 3),
                "seconds": [round(r["seconds"], 3) for r in done],
                "steps": sorted({r["steps"] for r in done}),
                "val_accuracy": [round(r["val_accuracy"], 4) for r in done],
            }
        row["ratio"] = round(
            row["ours"]["seconds_median"] / row["keras arrays"]["seconds_median"], 2
        )
        results.append(row)
        print(json.dumps(row))
    if args.json:
        record = {
            **run_record(),
            "cpu": _cpu_flags(),
            "repeats": args.repeats,
            "fresh_process_each": args.fresh,
        }
        args.json.write_text(json.dumps({**record, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
