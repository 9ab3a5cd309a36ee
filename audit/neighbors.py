"""Exact cosine nearest neighbours without an N x N matrix.

Features are L2-normalised to float32 once; similarities are computed block by block
(``rows x columns`` bounded by ``block_bytes``) and only the top ``k`` of each row are kept
(``argpartition``), so memory is the features, one block and ``N x k`` results. A brute
force ``X @ X.T`` is what this equals (tests check it on small matrices).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..store.search_index import merge_top_k, normalize, query_top_k
from .options import DEFAULT_BLOCK_BYTES

__all__ = ["block_shape", "brute_force", "normalize", "query_top_k", "top_k_neighbors"]


def block_shape(rows: int, k: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[int, int]:
    """(row block, column block) whose float32 similarities fit in ``block_bytes``."""
    cells = max(1, block_bytes // 4)
    columns = int(min(max(rows, 1), max(4 * k, 1 << 16)))
    return max(1, min(max(rows, 1), cells // columns)), columns


def top_k_neighbors(
    x: np.ndarray,
    k: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of every row of normalised ``x``.

    Returns ``(similarity, index)``, each ``(N, min(k, N - 1))``, sorted by descending
    similarity (ties by lower index). A row is never its own neighbour; an exact duplicate
    row is (similarity 1). ``progress`` is called with the rows finished per row block.
    """
    n = len(x)
    k = int(min(k, max(n - 1, 0)))
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    row_block, col_block = block_shape(n, k, block_bytes)
    sims = np.empty((n, k), np.float32)
    index = np.empty((n, k), np.int64)
    for r0 in range(0, n, row_block):
        r1 = min(n, r0 + row_block)
        best_s = np.full((r1 - r0, 0), -np.inf, np.float32)
        best_i = np.zeros((r1 - r0, 0), np.int64)
        for c0 in range(0, n, col_block):
            c1 = min(n, c0 + col_block)
            s = x[r0:r1] @ x[c0:c1].T
            overlap = range(max(r0, c0), min(r1, c1))
            if len(overlap):
                own = np.arange(overlap.start, overlap.stop)
                s[own - r0, own - c0] = -np.inf
            kk = min(k, c1 - c0)
            if kk < c1 - c0:
                pick = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            else:
                pick = np.broadcast_to(np.arange(c1 - c0), s.shape)
            cand_s = np.take_along_axis(s, pick, axis=1)
            best_s, best_i = merge_top_k(best_s, best_i, cand_s, pick + c0, k)
        order = np.lexsort((best_i, -best_s), axis=1)
        sims[r0:r1] = np.take_along_axis(best_s, order, axis=1)
        index[r0:r1] = np.take_along_axis(best_i, order, axis=1)
        if progress is not None:
            progress(r1 - r0)
    return sims, index


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same as :func:`top_k_neighbors` with the full ``N x N`` matrix (tests, small N)."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    k = min(k, max(len(x) - 1, 0))
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order.astype(np.int64)
