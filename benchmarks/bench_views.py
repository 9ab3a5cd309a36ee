"""Cached augmented views on real data: a frozen head on 1 view vs K views (one random
view per epoch, all views as rows, their mean) vs FroFA-style feature augmentation vs
fine-tuning, few-shot and with more labels; test accuracy with bootstrap 95% intervals
(mean over head seeds) and times.

Usage (from the repository root, after ``pip install .``; the sets as in
``ood_datasets.py``)::

    python benchmarks/bench_views.py --sets fashion,textures --shots 10,100 --views 8 \
        --size 96 --seeds 3 --weights-dir ../shared/weights --json benchmarks/results-views.json

Per set and train size: one ``extract --views K --augment flip,crop,color`` of the split
folders (view 0 is the plain image, so the ``plain`` arm is the ordinary cache), then
``train-head --head dense`` per arm and seed, and one ``fine-tune`` (the default recipe)
from the plain head of the first seed. Every arm is scored on the same test rows (view 0),
so the intervals resample the same rows for all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_datasets import BUILDERS, add_run_arguments, confusion_pairs, run_record, weights_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARMS: dict[str, dict[str, Any]] = {
    "plain": {"views": "plain"},
    "one": {"views": "one"},
    "all": {"views": "all"},
    "mean": {"views": "mean"},
    "frofa": {"views": "plain", "feature_augment": 0.1},
    "one+frofa": {"views": "one", "feature_augment": 0.1},
}
"""Head arms: which cached views train the head, and feature augmentation."""


def interval(runs: list[Any]) -> dict[str, Any]:
    from featcache.heads.metrics import bootstrap_metrics

    return bootstrap_metrics(runs, resamples=1000, seed=0)["acc1"]


def run_case(name: str, shots: int, args: argparse.Namespace, weights: str, work: Path) -> dict:
    from featcache import CacheReader, extract
    from featcache.heads.finetune import fine_tune
    from featcache.heads.metrics import Scored
    from featcache.heads.train import train_head

    classes = {"fashion": 10, "mnist-lt": 10, "textures": 6, "digits": 10}[name]
    data = BUILDERS[name](
        Path(args.data) / f"{name}-{args.size}-{shots}shot",
        args.size, shots * classes, args.val, args.test,
    )  # fmt: skip
    cache = work / f"{name}-{shots}.h5"
    began = time.monotonic()
    extract(data["folder"], backbone="mobilenet", weights=weights, image_size=args.size,
            output=cache, views=args.views, augment=args.augment, progress=False)  # fmt: skip
    out: dict[str, Any] = {"counts": data["counts"], "extract_seconds": time.monotonic() - began}
    reader = CacheReader(cache)
    test_rows = reader.rows_of("test", labelled=True)
    y_true = np.asarray(reader.labels)[test_rows]
    x_test = reader.features(test_rows)
    first_plain: Path | None = None
    for arm in args.arms.split(","):
        runs, seconds = [], []
        for seed in range(args.seeds):
            began = time.monotonic()
            result = train_head(cache, head="dense", hidden=(256,), epochs=args.epochs,
                                seed=seed, output=work / f"{name}-{shots}-{arm}-{seed}",
                                **ARMS[arm])  # fmt: skip
            seconds.append(time.monotonic() - began)
            runs.append(Scored(y_true, result.head.predict(x_test), None))
            if arm == "plain" and first_plain is None:
                first_plain = result.run_dir
        accs = [float((r.y_pred == y_true).mean()) for r in runs]
        out[arm] = {"acc": interval(runs), "per_seed": accs, "seconds": float(np.mean(seconds))}
        print(f"{name} {shots}-shot {arm}: {np.mean(accs):.3f} +- {np.std(accs):.3f}", flush=True)
    if args.finetune and first_plain is not None:
        began = time.monotonic()
        tuned = fine_tune(cache, first_plain, output=work / f"{name}-{shots}-ft")
        report = tuned.report
        run = Scored(*confusion_pairs(report), None)
        out["fine-tune"] = {"acc": interval([run]), "seconds": time.monotonic() - began}
        print(f"{name} {shots}-shot fine-tune: {out['fine-tune']['acc']['value']:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="fashion,textures")
    parser.add_argument("--shots", default="10,100", help="train images per class")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--augment", default="flip,crop,color")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=900)
    parser.add_argument("--no-finetune", dest="finetune", action="store_false")
    add_run_arguments(parser)
    args = parser.parse_args()
    weights = weights_file(args.weights_dir)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; known: {sorted(ARMS)}")
    results: dict[str, Any] = {**run_record(), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            for shots in (int(s) for s in args.shots.split(",")):
                case = run_case(name, shots, args, weights, Path(tmp))
                results["cases"][f"{name}/{shots}"] = case
                if args.json_out:
                    Path(args.json_out).write_text(json.dumps(results, indent=1))
    for key, case in results["cases"].items():
        for arm, got in case.items():
            if isinstance(got, dict) and "acc" in got:
                acc = got["acc"]
                print(f"{key:14s} {arm:10s} {acc['value']:.3f} [{acc['low']:.3f}, "
                      f"{acc['high']:.3f}] sd {acc['std']:.3f}  {got['seconds']:.1f}s")  # fmt: skip


if __name__ == "__main__":
    main()
