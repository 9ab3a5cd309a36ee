"""``compare``: every head kind with a small search, as a leaderboard."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from ..errors import DatasetError, FeatcacheError
from ..extractor.options import invalid
from .baselines import GRIDS, fit_baseline, make_baseline
from .data import load_splits
from .dense import DenseHead
from .options import (
    COMPARE_CV_VALIDATION_FRACTION,
    HEAD_KINDS,
    HeadOptions,
    check_options,
    merge_options,
    parse_heads,
)
from .train import DEFAULT_RUNS_DIR, TrainResult, train_head


@dataclass
class Leaderboard:
    """Rows best first, where they were saved, and the best head's run."""

    rows: list[dict[str, Any]]
    folder: Path
    best: TrainResult
    skipped: list[str]
    """Grid points that could not be fitted on this cache, and why."""


def _estimator(kind: str, params: dict[str, Any], seed: int, epochs: int, cv: bool) -> Any:
    if kind == "dense":
        extra: dict[str, Any] = (
            {"validation_fraction": COMPARE_CV_VALIDATION_FRACTION} if cv else {}
        )
        return DenseHead(**params, epochs=epochs, seed=seed, **extra)
    return make_baseline(kind, seed=seed, **params)


def compare(
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    heads: tuple[str, ...] | str = HEAD_KINDS,
    cv: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    *,
    options: HeadOptions | None = None,
) -> Leaderboard:
    """Fit every head kind over its grid, choose by val accuracy (or ``cv``-fold CV on
    train+val), report test accuracy of each kind's best, and keep the overall best run.

    ``heads`` are kinds (a tuple or ``"dense,logreg"``); ``epochs`` (of the dense head),
    ``seed`` and the val fraction come from ``options`` unless given.

    The dense head early-stops on the same val split that scores it, which favours it a
    little over the baselines; ``cv`` avoids that.
    """
    chosen = merge_options(HeadOptions, options, epochs=epochs, seed=seed)
    kinds = parse_heads(heads)
    check_options({"cv": cv})
    epochs, seed = chosen.epochs, chosen.seed
    cache = Path(cache)
    splits = load_splits(cache, val_fraction=chosen.val_fraction, seed=seed)
    x_train, y_train = splits.features(splits.train), splits.train.labels
    early = splits.seen(splits.val)
    x_val, y_val = splits.features(early), early.labels
    x_test, y_test = splits.features(splits.test), splits.test.labels
    if cv:
        _, counts = np.unique(np.concatenate([y_train, y_val]), return_counts=True)
        if cv > counts.min():
            raise invalid("cv", cv, f"the smallest class has only {counts.min()} train+val rows")
    rows, skipped = [], []
    for kind in kinds:
        best: dict[str, Any] | None = None
        for params in GRIDS[kind]:
            if kind == "knn" and params["k"] > len(y_train):
                continue
            began = time.monotonic()
            try:
                if cv:
                    x_all = np.concatenate([x_train, x_val])
                    y_all = np.concatenate([y_train, y_val])
                    score = _cv_score(kind, params, seed, epochs, cv, x_all, y_all)
                else:
                    model = _fit(kind, params, seed, epochs, x_train, y_train, x_val, y_val)
                    score = float(accuracy_score(y_val, model.predict(x_val)))
            except FeatcacheError as exc:
                skipped.append(f"{kind} {params}: {exc}")
                continue
            if best is None or score > best["score"]:
                best = {"params": params, "score": score}
        if best is None:
            continue
        began = time.monotonic()
        model = _fit(kind, best["params"], seed, epochs, x_train, y_train, x_val, y_val)
        fit_seconds = time.monotonic() - began
        predicted = model.predict(x_test)
        present = np.unique(y_test)
        rows.append(
            {
                "head": kind,
                "params": json.dumps(
                    {k: list(v) if isinstance(v, tuple) else v for k, v in best["params"].items()}
                ),
                "selection": f"{cv}-fold cv" if cv else "val",
                "selection_accuracy": round(best["score"], 4),
                "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
                "test_macro_f1": round(
                    float(
                        f1_score(
                            y_test, predicted, labels=present, average="macro", zero_division=0
                        )
                    ),
                    4,
                ),
                "fit_seconds": round(fit_seconds, 3),
            }
        )
    if not rows:
        raise DatasetError(f"{cache}: no head could be fitted: {'; '.join(skipped)}")
    rows.sort(key=lambda r: (-r["selection_accuracy"], r["fit_seconds"]))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output) if output else DEFAULT_RUNS_DIR / f"{cache.stem}-compare-{stamp}"
    top = rows[0]
    params = {
        k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(top["params"]).items()
    }
    if top["head"] == "dense":
        params["epochs"] = epochs
    best_run = train_head(
        cache,
        top["head"],
        folder / f"best-{top['head']}",
        seed=seed,
        val_fraction=chosen.val_fraction,
        stream=False,
        **params,
    )
    with open(folder / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    return Leaderboard(rows, folder, best_run, skipped)


def _fit(
    kind: str,
    params: dict[str, Any],
    seed: int,
    epochs: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
) -> Any:
    model = _estimator(kind, params, seed, epochs, False)
    if kind == "dense":
        return model.fit(x_train, y_train, validation_data=(x_val, y_val))
    return fit_baseline(kind, model, x_train, y_train)


def _cv_score(
    kind: str,
    params: dict[str, Any],
    seed: int,
    epochs: int,
    folds: int,
    x: np.ndarray,
    y: np.ndarray,
) -> float:
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for train_idx, val_idx in splitter.split(x, y):
        model = _estimator(kind, params, seed, epochs, True)
        if kind == "dense":
            model.fit(x[train_idx], y[train_idx])
        else:
            fit_baseline(kind, model, x[train_idx], y[train_idx])
        scores.append(accuracy_score(y[val_idx], model.predict(x[val_idx])))
    return float(np.mean(scores))
