"""``predict_cache``: apply a trained head to another cache's features."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import SettingsMismatchError
from ..extractor.cache import FEATURE_FIELDS, open_h5
from .train import load_head

# the feature settings, less the storage type (a float16 cache suits a float32 head) and
# the weights' name (checked below: a file is identified by its hash, not its path)
_CHECKED = (
    *(f for f in FEATURE_FIELDS if f not in ("dtype", "weights")),
    "feature_dim",
)


def predict_cache(
    run: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    top_k: int = 3,
    batch_size: int = 4096,
) -> Path:
    """Write ``predictions.csv`` (path, label, predicted, probability, top-k) for every row.

    The cache must come from the same backbone settings as the head's training cache.
    """
    head = load_head(run)
    cache = Path(cache)
    names = head.class_names
    out = Path(output) if output is not None else Path(run) / "predictions.csv"
    with open_h5(cache) as handle:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
        _check_settings(head.meta["cache_settings"], attrs, cache)
        labels = handle["labels"][:]
        cache_names = attrs.get("class_names", "[]")
        import json

        cache_classes = json.loads(str(cache_names))
        paths = handle["paths"].asstr()
        features = handle["features"]
        k = max(1, min(top_k, len(head.classes)))
        with open(out, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "label", "predicted", "probability", "top_k"])
            for start in range(0, features.shape[0], batch_size):
                stop = min(start + batch_size, features.shape[0])
                proba = head.predict_proba(features[start:stop])
                order = np.argsort(-proba, axis=1)[:, :k]
                batch_paths = paths[start:stop]
                for i in range(stop - start):
                    best = order[i]
                    label = int(labels[start + i])
                    true = cache_classes[label] if 0 <= label < len(cache_classes) else ""
                    top = "|".join(f"{names[head.classes[j]]}:{proba[i, j]:.4f}" for j in best)
                    writer.writerow(
                        [
                            batch_paths[i],
                            true,
                            names[head.classes[best[0]]],
                            f"{proba[i, best[0]]:.6f}",
                            top,
                        ]
                    )
    return out


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_settings(trained: dict[str, object], attrs: dict[str, object], cache: Path) -> None:
    differ = []
    for key in _CHECKED:
        mine, theirs = trained.get(key), attrs.get(key)
        if isinstance(theirs, np.ndarray):
            theirs = theirs.tolist()
        if isinstance(theirs, np.generic):
            theirs = theirs.item()
        if key == "backbone" and (trained.get("backbone_sha256") or attrs.get("backbone_sha256")):
            continue  # saved-model backbones are compared by hash
        if mine != theirs:
            differ.append(f"{key} {mine!r} (head) vs {theirs!r} (cache)")
    if not trained.get("weights_sha256") and trained.get("weights") != attrs.get("weights"):
        differ.append(
            f"weights {trained.get('weights')!r} (head) vs {attrs.get('weights')!r} (cache)"
        )
    if trained.get("weights") == "none" and trained.get("seed") != _plain(attrs.get("seed")):
        differ.append(
            f"random-weight seed {trained.get('seed')} (head) vs {attrs.get('seed')} (cache)"
        )
    if differ:
        raise SettingsMismatchError(
            f"{cache} was not made with the backbone settings the head was trained on: "
            + "; ".join(differ)
        )
