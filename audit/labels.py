"""Likely label errors by confident learning (Northcutt et al., 2021), without cleanlab.

Out-of-fold probabilities come from k-fold logistic regression on the cache's features
(each row predicted by a model that never saw it). The per-class thresholds, the confident
joint and the prune-by-noise-rate rule follow cleanlab's ``find_label_issues`` with
``filter_by="prune_by_noise_rate"``: for each given class ``a`` and other class ``b``, the
``C[a, b]`` rows given ``a`` with the largest margin ``p_b - p_a`` are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import DEFAULT_FOLDS


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
    x: np.ndarray, labels: np.ndarray, classes: int, folds: int = DEFAULT_FOLDS, seed: int = 0
) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from a logistic regression fitted on the
    other folds (stratified; fewer folds when a class has fewer rows). Rows of a class with
    a single row are not checked: their given label has probability 1."""
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
    for fit_rows, held in splitter.split(x[checked], y):
        model = LogisticRegression(max_iter=1000, C=1.0)
        model.fit(x[checked[fit_rows]], y[fit_rows])
        rows = checked[held]
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
