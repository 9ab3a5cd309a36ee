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

from ..errors import InvalidOptionError
from .baselines import GRIDS, HEAD_KINDS, make_baseline
from .data import load_splits
from .dense import DenseHead
from .train import DEFAULT_RUNS_DIR, TrainResult, train_head


@dataclass
class Leaderboard:
    """Rows best first, where they were saved, and the best head's run."""

    rows: list[dict[str, Any]]
    folder: Path
    best: TrainResult


def _estimator(kind: str, params: dict[str, Any], seed: int, epochs: int, cv: bool) -> Any:
    if kind == "dense":
        extra: dict[str, Any] = {"validation_fraction": 0.15} if cv else {}
        return DenseHead(**params, epochs=epochs, seed=seed, **extra)
    return make_baseline(kind, seed=seed, **params)


def compare(
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    heads: tuple[str, ...] = HEAD_KINDS,
    cv: int | None = None,
    epochs: int = 30,
    seed: int = 0,
) -> Leaderboard:
    """Fit every head kind over its grid, choose by val accuracy (or ``cv``-fold CV on
    train+val), report test accuracy of each kind's best, and keep the overall best run."""
    unknown = [h for h in heads if h not in HEAD_KINDS]
    if unknown:
        raise InvalidOptionError(f"unknown heads {unknown}; expected {', '.join(HEAD_KINDS)}")
    if cv is not None and cv < 2:
        raise InvalidOptionError("--cv must be at least 2")
    cache = Path(cache)
    splits = load_splits(cache, seed=seed)
    x_train, y_train = splits.features(splits.train), splits.train.labels
    x_val, y_val = splits.features(splits.val), splits.val.labels
    x_test, y_test = splits.features(splits.test), splits.test.labels
    rows = []
    for kind in heads:
        best: dict[str, Any] | None = None
        for params in GRIDS[kind]:
            began = time.monotonic()
            if cv:
                score = _cv_score(
                    kind,
                    params,
                    seed,
                    epochs,
                    cv,
                    np.concatenate([x_train, x_val]),
                    np.concatenate([y_train, y_val]),
                )
            else:
                model = _estimator(kind, params, seed, epochs, False)
                if kind == "dense":
                    model.fit(x_train, y_train, validation_data=(x_val, y_val))
                else:
                    model.fit(x_train, y_train)
                score = float(accuracy_score(y_val, model.predict(x_val)))
            seconds = time.monotonic() - began
            if best is None or score > best["score"]:
                best = {"params": params, "score": score, "fit_seconds": seconds}
        assert best is not None
        model = _estimator(kind, best["params"], seed, epochs, False)
        began = time.monotonic()
        if kind == "dense":
            model.fit(x_train, y_train, validation_data=(x_val, y_val))
        else:
            model.fit(x_train, y_train)
        fit_seconds = time.monotonic() - began
        predicted = model.predict(x_test)
        rows.append(
            {
                "head": kind,
                "params": json.dumps(
                    {k: list(v) if isinstance(v, tuple) else v for k, v in best["params"].items()}
                ),
                "selection": f"{cv}-fold cv" if cv else "val",
                "val_accuracy": round(best["score"], 4),
                "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
                "test_macro_f1": round(float(f1_score(y_test, predicted, average="macro")), 4),
                "fit_seconds": round(fit_seconds, 3),
            }
        )
    rows.sort(key=lambda r: (-r["val_accuracy"], r["fit_seconds"]))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output) if output else DEFAULT_RUNS_DIR / f"{cache.stem}-compare-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    top = rows[0]
    params = {
        k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(top["params"]).items()
    }
    if top["head"] == "dense":
        params["epochs"] = epochs
    best_run = train_head(
        cache, top["head"], folder / f"best-{top['head']}", seed=seed, stream=False, **params
    )
    return Leaderboard(rows, folder, best_run)


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
        model.fit(x[train_idx], y[train_idx])
        scores.append(accuracy_score(y[val_idx], model.predict(x[val_idx])))
    return float(np.mean(scores))
