"""Ranking class probabilities: the one top-k of ``predict``, ``predict_cache`` and the
gRPC ``Classify`` call."""

from __future__ import annotations

import numpy as np

from .options import invalid

DEFAULT_TOP_K = 3
"""Classes reported per image by ``predict``, ``predict_cache`` and ``Classify``."""


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` highest values of each row, highest first.

    Equal values keep their column order (a stable sort); ``k`` larger than the number of
    columns gives every column. Returns an int64 array of shape ``(N, min(k, columns))``.

    >>> top_k(np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]]), 2).tolist()
    [[1, 2], [0, 2]]
    """
    if k < 1:
        raise invalid("top_k", k, "must be at least 1")
    scores = np.asarray(probabilities)
    if scores.ndim == 1 and scores.size == 0:
        scores = scores.reshape(0, 0)
    if scores.ndim != 2:
        raise ValueError(f"probabilities of shape {scores.shape} are not (N, classes)")
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, : min(k, scores.shape[1])].astype(np.int64)
