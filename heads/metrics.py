"""Test metrics of the probe protocols, with seeded bootstrap 95% intervals.

acc@1, acc@5 (more than 5 classes), balanced accuracy (mean per-class recall) and macro F1
are the ones :func:`featcache.heads.report.metrics` reports, which gives the point values;
the bootstrap resamples compute the same definitions (classes absent from the true labels
left out of the two means) from confusion counts, vectorised, so that a thousand resamples of
the test rows take milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .options import DEFAULT_BOOTSTRAP, DEFAULT_SEED, check_options
from .report import metrics

METRICS = ("acc1", "acc5", "balanced_accuracy", "macro_f1")
"""Metric names of a probe row (``acc5`` only with more than 5 classes)."""
TOP_K = 5
_CHUNK = 64
"""Resamples computed at once (memory: CHUNK x rows integers)."""


@dataclass(frozen=True)
class Scored:
    """One model's test outputs: the true labels, the predicted labels and whether the
    true label is among the 5 highest scores (None with 5 classes or fewer)."""

    y_true: np.ndarray
    y_pred: np.ndarray
    top5: np.ndarray | None

    @classmethod
    def of(cls, y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> Scored:
        """From class scores (one column per entry of ``classes``, higher is better)."""
        classes = np.asarray(classes)
        scores = np.asarray(scores)
        y_true = np.asarray(y_true, dtype=np.int64)
        y_pred = classes[np.argmax(scores, axis=1)].astype(np.int64)
        top5 = None
        if len(classes) > TOP_K:
            best = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
            top5 = (classes[best] == y_true[:, None]).any(axis=1)
        return cls(y_true, y_pred, top5)


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Confusion counts of each row of ``y_true``/``y_pred`` (R, rows) -> (R, n, n)."""
    resamples = y_true.shape[0]
    codes = y_true * n + y_pred + (np.arange(resamples) * n * n)[:, None]
    counts = np.bincount(codes.ravel(), minlength=resamples * n * n)
    return counts.reshape(resamples, n, n)


def _from_confusions(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of each confusion matrix (R, n, n),
    over the classes with true rows (as ``report.metrics``)."""
    counts = counts.astype(np.float64)
    hits = np.diagonal(counts, axis1=1, axis2=2)
    support = counts.sum(axis=2)
    predicted = counts.sum(axis=1)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    classes = np.maximum(present.sum(axis=1), 1)
    return {
        "acc1": hits.sum(axis=1) / np.maximum(support.sum(axis=1), 1),
        "balanced_accuracy": (recall * present).sum(axis=1) / classes,
        "macro_f1": (f1 * present).sum(axis=1) / classes,
    }


def _values(scored: Scored, picks: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Every metric of ``scored`` on each row of resampled indices ``picks`` (R, rows)."""
    out = _from_confusions(_confusions(scored.y_true[picks], scored.y_pred[picks], n))
    if scored.top5 is not None:
        out["acc5"] = scored.top5[picks].mean(axis=1)
    return out


def point_metrics(scored: Scored) -> dict[str, float]:
    """The metrics on all test rows: acc@1, balanced accuracy and macro F1 from
    :func:`featcache.heads.report.metrics` itself (the resamples use the vectorised
    equivalent, which the tests check against it)."""
    n = int(max(scored.y_true.max(initial=0), scored.y_pred.max(initial=0))) + 1
    reported = metrics(scored.y_true, scored.y_pred, [str(i) for i in range(n)])
    out = {
        "acc1": reported["accuracy"],
        "balanced_accuracy": reported["balanced_accuracy"],
        "macro_f1": reported["macro_f1"],
    }
    if scored.top5 is not None:
        out["acc5"] = float(scored.top5.mean())
    return out


def bootstrap_metrics(
    runs: Sequence[Scored],
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Each metric's value (the mean over ``runs`` when several models, e.g. few-shot
    seeds, scored the same test rows), its spread over the runs (``std``, 0 for one run)
    and a ``level`` percentile bootstrap interval (``low``, ``high``): the test rows are
    resampled with replacement ``resamples`` times (seeded), the same resample for every
    run, and the metric averaged over the runs. ``resamples=0``: no interval (None).
    """
    check_options({"bootstrap": resamples, "seed": seed})
    first = runs[0]
    rows = len(first.y_true)
    if any(len(r.y_true) != rows or not np.array_equal(r.y_true, first.y_true) for r in runs):
        raise ValueError("every run must score the same test rows")
    n = int(max(max(r.y_true.max(initial=0), r.y_pred.max(initial=0)) for r in runs)) + 1
    points = [point_metrics(r) for r in runs]
    names = [m for m in METRICS if m in points[0]]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = np.asarray([p[name] for p in points])
        out[name] = {
            "value": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "low": None,
            "high": None,
        }
    if resamples == 0 or rows == 0:
        return out
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, resamples, _CHUNK):
        picks = rng.integers(0, rows, size=(min(_CHUNK, resamples - start), rows))
        per_run = [_values(r, picks, n) for r in runs]
        for name in names:
            draws[name].append(np.mean([v[name] for v in per_run], axis=0))
    tail = (1 - level) / 2 * 100
    for name in names:
        every = np.concatenate(draws[name])
        low, high = np.percentile(every, [tail, 100 - tail])
        out[name]["low"], out[name]["high"] = float(low), float(high)
    return out
