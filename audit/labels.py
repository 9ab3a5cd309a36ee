"""Likely label errors from out-of-fold probabilities, with how many to expect.

Out-of-fold probabilities come from k-fold logistic regression on the cache's features
(each row predicted by a model that never saw it). :func:`check_labels` (what ``audit``
reports) flags the rows whose given label gets less than a threshold probability (the
row's *self-confidence*), lowest first, and estimates from the same probabilities how many
labels are wrong and what share of the flags is right. A label given wrongly at random
would get probability ``p_b`` for one of the row's other classes ``b``: the share of those
``p_b`` below the threshold is the share of random label errors it catches (the expected
recall). Below the median ``t0`` of those ``p_b`` lie half of the random errors and few
right labels, so twice the share of rows whose self-confidence is below ``t0`` estimates
the error rate (:data:`ESTIMATE_SHARE`; more precisely, that share divided by the share of
the ``p_b`` below ``t0``); times the recall, over the share flagged, it gives the expected
precision. Both assume that wrong labels look like random ones and right ones rarely fall
under ``t0``; a weak classifier makes them rough (see benchmarks/bench_audit_labels.py).
:func:`find_label_issues` is confident learning (Northcutt et al., 2021) as
cleanlab's ``find_label_issues(filter_by="prune_by_noise_rate")``: for each given class ``a``
and other class ``b``, the ``C[a, b]`` rows given ``a`` with the largest margin
``p_b - p_a``. It flags the rows the classifier finds ambiguous as well (4% of clean
Fashion-MNIST, 11% of the 300-image sample), so ``audit`` no longer uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import DEFAULT_FOLDS, DEFAULT_LABEL_THRESHOLD

ESTIMATE_SHARE = 0.5
"""Share of the random wrong labels' probabilities under the self-confidence ``t0`` from
which the error rate is estimated (see the module)."""


PREDICT_ROWS = 65536
"""Rows predicted at once (bounds the copies of a large fold)."""


@dataclass
class LabelCheck:
    """The labels flagged by :func:`check_labels` and what to expect of them."""

    rows: np.ndarray
    """Flagged rows (indices into the labels given), lowest self-confidence first."""
    self_confidence: np.ndarray
    """Out-of-fold probability of the given label, per flagged row."""
    suggested: np.ndarray
    """The most probable class, per flagged row."""
    threshold: float
    checked: int
    """Rows whose label was checked (classes of one row are not)."""
    estimated_errors: float | None
    """Estimated wrong labels among the checked rows (None: nothing to estimate from)."""
    expected_precision: float | None
    """Estimated share of the flagged rows whose label is wrong."""
    expected_recall: float | None
    """Share of randomly wrong labels that fall under the threshold (on these features)."""


def check_labels(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float = DEFAULT_LABEL_THRESHOLD,
) -> LabelCheck:
    """Flag the labels whose out-of-fold probability is below ``threshold``, with the
    estimates of :class:`LabelCheck` (see the module for how they are made)."""
    y = np.asarray(labels, np.int64)
    p = np.asarray(probabilities, np.float64)
    n, c = p.shape
    counts = np.bincount(y, minlength=c)
    checked = counts[y] >= 2
    confidence = p[np.arange(n), y]
    if np.all(confidence[checked] == 1.0):  # too few rows: nothing was predicted
        checked[:] = False
    flagged = np.flatnonzero(checked & (confidence < threshold))
    rows = flagged[np.argsort(confidence[flagged], kind="stable")]
    others = np.ones((int(checked.sum()), c), bool)
    others[np.arange(len(others)), y[checked]] = False
    mine = p[checked]

    def random_errors_below(t: float) -> float:
        """Share of random wrong labels of the checked rows with a probability below t."""
        return float(((mine < t) & others).sum() / max(others.sum(), 1))

    estimated = precision = recall = None
    if others.any():
        recall = random_errors_below(threshold)
        below = float(np.quantile(mine[others], ESTIMATE_SHARE))
        base = random_errors_below(below)
        if base > 0:
            rate = min(1.0, float(np.mean(confidence[checked] < below)) / base)
            estimated = rate * int(checked.sum())
            if len(rows):
                precision = min(1.0, estimated * recall / len(rows))
    return LabelCheck(
        rows,
        confidence[rows],
        np.argmax(p[rows], axis=1) if len(rows) else np.zeros(0, np.int64),
        threshold,
        int(checked.sum()),
        estimated,
        precision,
        recall,
    )


@dataclass
class LabelIssues:
    rows: np.ndarray
    """Flagged rows (indices into the labels given), lowest self-confidence first."""
    self_confidence: np.ndarray
    """Out-of-fold probability of the given label, per flagged row."""
    suggested: np.ndarray
    """The most probable class, per flagged row."""
    confident_joint: np.ndarray
    """``C[given, likely]`` counts."""


def out_of_fold_probabilities(
    x: np.ndarray,
    labels: np.ndarray,
    classes: int,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    max_fit_rows: int | None = None,
) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from a logistic regression fitted on the
    other folds (stratified; fewer folds when a class has fewer rows). Rows of a class with
    a single row are not checked: their given label has probability 1. ``max_fit_rows``:
    each fold's model is fitted on a seeded sample of at most that many of the other
    folds' rows (time and memory bounded on large caches)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=classes)
    checked = np.flatnonzero(counts[labels] >= 2)  # a class of one row cannot be held out
    out = np.zeros((len(labels), classes), np.float64)
    out[np.arange(len(labels)), labels] = 1.0  # rows not checked keep their label
    present = counts[counts >= 2]
    n_folds = int(min(folds, present.min())) if len(present) else 0
    if n_folds < 2 or len(present) < 2:
        return out
    y = labels[checked]
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    for fit_rows, held in splitter.split(np.zeros((len(y), 1)), y):
        if max_fit_rows is not None and len(fit_rows) > max_fit_rows:
            fit_rows = np.sort(rng.choice(fit_rows, max_fit_rows, replace=False))
        model = LogisticRegression(max_iter=1000, C=1.0)
        model.fit(x[checked[fit_rows]], y[fit_rows])
        for h0 in range(0, len(held), PREDICT_ROWS):
            rows = checked[held[h0 : h0 + PREDICT_ROWS]]
            out[rows] = 0.0
            out[np.ix_(rows, model.classes_)] = model.predict_proba(x[rows])
    return out


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """Confident learning over given ``labels`` (0..C-1) and out-of-fold ``probabilities``."""
    y = np.asarray(labels, np.int64)
    p = np.asarray(probabilities, np.float64)
    n, c = p.shape
    thresholds = np.full(c, np.inf)
    for j in range(c):
        mine = y == j
        if mine.any():
            thresholds[j] = p[mine, j].mean()
    above = p >= thresholds[None, :]
    masked = np.where(above, p, -np.inf)
    likely = np.argmax(masked, axis=1)
    confident = above.any(axis=1)
    joint = np.zeros((c, c), np.int64)
    np.add.at(joint, (y[confident], likely[confident]), 1)
    flagged = np.zeros(n, bool)
    for a in range(c):
        given = np.flatnonzero(y == a)
        for b in range(c):
            count = int(joint[a, b])
            if a == b or count == 0 or len(given) == 0:
                continue
            margin = p[given, b] - p[given, a]
            take = given[np.argsort(-margin, kind="stable")[: min(count, len(given))]]
            flagged[take] = True
    rows = np.flatnonzero(flagged)
    confidence = p[rows, y[rows]]
    order = np.argsort(confidence, kind="stable")
    rows = rows[order]
    return LabelIssues(rows, p[rows, y[rows]], np.argmax(p[rows], axis=1), joint)
