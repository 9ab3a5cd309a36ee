"""The dense head's accuracy on real caches, trained from Keras's own array input (before)
and from ``heads/train_input.py``'s pipeline (now), same seeds side by side: the input
changes the shuffling's random draws, never what is learned on average.

Usage (from the repository root; the sets as benchmarks/bench_finetune_ood.py builds them)::

    python benchmarks/bench_dense_fit_sets.py --data /tmp/ood/data --weights-dir \
        ../shared/weights --seeds 5 --json results-dense-fit-sets.json

Per set: MobileNet (ImageNet) features extracted once, then ``train-head``'s dense head
(``hidden=(256,)``, 30 epochs, early stopping on val) per seed and input; test accuracy,
balanced accuracy and the seconds ``fit`` takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from featcache import extract, read_cache
from featcache.core.splits import SPLIT_NAMES
from featcache.heads.dense import DenseHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import _cpu_flags
from ood_datasets import BUILDERS, run_record

SETS = {"galaxies": 224, "deepsky": 224, "textures": 96, "mnist-lt": 96}
"""Set -> the image size its benchmarks use."""


def keras_arrays(head: DenseHead, train: tuple, val: tuple) -> DenseHead:
    """``DenseHead.fit`` as it was: the arrays handed to Keras, shuffled by it."""
    x, y = train
    head.classes_, encoded = np.unique(y, return_inverse=True)
    head.n_features_in_ = x.shape[1]
    stats = (x.mean(axis=0), x.var(axis=0)) if head.standardize else None
    head.model_ = head._build(x.shape[1], len(head.classes_), stats)
    head.model_.fit(
        x,
        encoded,
        validation_data=(val[0], head._encode(val[1])),
        epochs=head.epochs,
        batch_size=head.batch_size,
        callbacks=head._callbacks(True),
        shuffle=True,
        verbose=0,
    )
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-dense-fit-sets"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    weights = str(args.weights_dir / "mobilenet_1_0_224_imagenet_notop.weights.h5")
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in args.sets.split(","):
        size, cache = SETS[name], args.work / f"{name}.h5"
        if not cache.exists():
            data = BUILDERS[name](args.data / f"{name}-{size}", size, 1500, 300, 900)
            extract(data["folder"], backbone="mobilenet", weights=weights, image_size=size,
                    output=cache, progress=False)  # fmt: skip
        c = read_cache(cache)
        features, labels = np.asarray(c.features, np.float32), np.asarray(c.labels)
        part = {s: (features[c.mask(s)], labels[c.mask(s)]) for s in SPLIT_NAMES}
        runs: dict[str, list[dict[str, float]]] = {"keras arrays": [], "ours": []}
        for seed in range(args.seeds):
            for arm in runs:
                head = DenseHead(hidden=(256,), epochs=30, seed=seed)
                began = time.perf_counter()
                if arm == "ours":
                    head.fit(*part["train"], validation_data=part["val"])
                else:
                    keras_arrays(head, part["train"], part["val"])
                seconds = time.perf_counter() - began
                truth = part["test"][1]
                predicted = head.predict(part["test"][0])
                runs[arm].append({
                    "accuracy": float(np.mean(predicted == truth)),
                    "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
                    "seconds": seconds,
                })  # fmt: skip
        row = {
            arm: {
                key: round(float(np.mean([r[key] for r in done])), 4)
                for key in ("accuracy", "balanced_accuracy", "seconds")
            }
            | {"accuracy_by_seed": [round(r["accuracy"], 4) for r in done]}
            for arm, done in runs.items()
        }
        row["rows"] = {s: len(p[1]) for s, p in part.items()}
        results[name] = row
        print(name, json.dumps(row))
    if args.json:
        record = {**run_record(), "cpu": _cpu_flags(), "seeds": args.seeds}
        args.json.write_text(json.dumps({**record, "sets": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
