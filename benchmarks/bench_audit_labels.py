"""How many labels ``audit`` flags, and how right the flags are: clean Fashion-MNIST and
the same images with a share of labels flipped at random (to another class), on features
of the real MobileNet. Confident learning (the flags before issue 26) against the
self-confidence threshold with its estimates (after).

    python benchmarks/bench_audit_labels.py --images 3000 --size 128 \\
        --weights examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5
    python benchmarks/bench_audit_labels.py --sample --size 224 --weights ...   # the 300 PNGs

Each rate refits the out-of-fold probabilities (5-fold logistic regression).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featcache import extract
from featcache.audit.labels import check_labels, find_label_issues, out_of_fold_probabilities
from featcache.audit.neighbors import normalize
from featcache.audit.options import DEFAULT_LABEL_THRESHOLD
from featcache.store import CacheReader

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datasets import write_jpeg_folder  # noqa: E402


def _scores(flagged: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    hits = int(np.sum(flagged & flipped))
    return {
        "flagged": int(flagged.sum()),
        "flagged_fraction": round(float(flagged.mean()), 4),
        "precision": round(hits / max(int(flagged.sum()), 1), 3),
        "recall": round(hits / max(int(flipped.sum()), 1), 3) if flipped.any() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="the 300 PNGs of examples/")
    parser.add_argument("--rates", default="0,0.02,0.05,0.1")
    parser.add_argument("--threshold", type=float, default=DEFAULT_LABEL_THRESHOLD)
    parser.add_argument("--cache", help="reuse (or write) the cache here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache or Path(tmp) / "c.h5")
        if not cache.exists():
            data = HERE.parent / "examples" / "fashion-mnist"
            if not args.sample:
                data = write_jpeg_folder(Path(tmp) / "data", args.images, 28, fmt="PNG")
            extract(data, output=cache, weights=args.weights, image_size=args.size,
                    progress=False)  # fmt: skip
        reader = CacheReader(cache)
        x, y = normalize(reader.features()), reader.labels.astype(np.int64)
    classes = len(reader.class_names)
    rng = np.random.default_rng(0)
    for rate in [float(r) for r in args.rates.split(",")]:
        given = y.copy()
        flip = rng.choice(len(y), round(rate * len(y)), replace=False)
        given[flip] = (y[flip] + rng.integers(1, classes, len(flip))) % classes
        flipped = given != y
        started = time.perf_counter()
        p = out_of_fold_probabilities(x, given, classes)
        seconds = time.perf_counter() - started
        before = np.zeros(len(y), bool)
        before[find_label_issues(given, p).rows] = True
        check = check_labels(given, p, args.threshold)
        after = np.zeros(len(y), bool)
        after[check.rows] = True
        print(json.dumps({
            "rows": len(y), "size": args.size, "flipped": int(flipped.sum()), "rate": rate,
            "oof_accuracy": round(float(np.mean(p.argmax(1) == given)), 3),
            "before_confident_learning": _scores(before, flipped),
            "after_threshold": {**_scores(after, flipped), "threshold": args.threshold},
            "estimated_errors": None if check.estimated_errors is None
            else round(check.estimated_errors, 1),
            "expected_precision": check.expected_precision and round(check.expected_precision, 3),
            "expected_recall": check.expected_recall and round(check.expected_recall, 3),
            "oof_seconds": round(seconds, 1),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
