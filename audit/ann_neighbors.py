"""Approximate all-neighbours of every row (an inverted-file self-join), for large caches.

The rows are clustered (faiss spherical k-means on a sample) into ``cells``; every row
belongs to its nearest centroid's cell. Each cell's rows are then compared, as one block
of float32 matrix products, with the rows of the ``probes`` cells whose centroids are
nearest its own (its own first), and each row keeps its top ``k``. Similarities are exact
float32 cosines, so what the index changes is only which rows are compared: a pair is
missed only when neither row's cell probes the other's. Rows with the same content (one
id per SHA-256) are always each other's neighbours. The return contract is that of
:func:`~.neighbors.top_k_neighbors`.

Products over whole cells use BLAS, several times faster per comparison than a per-query
inverted-list scan (faiss ``IndexIVFFlat.search``); faiss is used for what it does best,
k-means and the nearest-centroid assignment. Memory is the features, the centroids, the
``N x k`` result and one block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .options import DEFAULT_BLOCK_BYTES, DEFAULT_PROBES

__all__ = ["IndexPlan", "ann_top_k_neighbors", "plan_index"]

POINTS_PER_CELL = 500
"""Rows per cell the index aims at: cells = N / 500 (at least 8)."""
TRAIN_POINTS_PER_CELL = 32
"""Sample rows per centroid that k-means is trained on."""
KMEANS_ITERATIONS = 10
SPILL = 2


@dataclass(frozen=True)
class IndexPlan:
    """The index's parameters, as the report states them."""

    method: str
    cells: int
    probes: int
    spill: int
    """Cells each row is listed in (its nearest ones), so a row near a cell's border is
    found from both sides."""
    train_rows: int
    kmeans_iterations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_index(rows: int, probes: int = DEFAULT_PROBES, spill: int = SPILL) -> IndexPlan:
    """The cells and probes for ``rows`` rows (``probes``, ``spill`` capped at the cells)."""
    cells = max(8, min(rows // 4 or 1, round(rows / POINTS_PER_CELL)))
    cells = min(cells, max(rows, 1))
    train = min(rows, cells * TRAIN_POINTS_PER_CELL)
    return IndexPlan("ivf", cells, min(probes, cells), min(spill, cells), train, KMEANS_ITERATIONS)


def ann_top_k_neighbors(
    x: np.ndarray,
    k: int,
    plan: IndexPlan | None = None,
    content: np.ndarray | None = None,
    seed: int = 0,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Callable[[int], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (approximately) ``k`` most similar other rows of every row of normalised ``x``.

    Returns ``(similarity, index)`` as :func:`~.neighbors.top_k_neighbors` does: each
    ``(N, min(k, N - 1))``, sorted by descending similarity, ties by lower index, never
    the row itself. ``content``: one id per row (equal for equal SHA-256); rows sharing one
    are always among each other's neighbours (up to ``k``, lowest rows first).
    ``progress`` is called with the rows finished; ``stage`` with the step starting.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = int(min(k, max(n - 1, 0)))
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    plan = plan or plan_index(n)
    if stage is not None:
        stage(f"clustering into {plan.cells:,} cells")
    centroids = _train_centroids(x, plan, seed)
    if stage is not None:
        stage("assigning rows to cells")
    near = _nearest(centroids, x, plan.spill)
    order, starts = _lists(near[:, 0], plan.cells)  # each row is a query in its nearest cell
    listed, list_starts = _lists(near.reshape(-1), plan.cells)
    listed //= plan.spill  # rows listed in each of their ``spill`` nearest cells
    probes = _nearest(centroids, centroids, plan.probes)
    if stage is not None:
        stage("comparing rows within nearby cells")
    sims = np.full((n, k), -np.inf, np.float32)
    index = np.full((n, k), -1, np.int64)
    for c in range(plan.cells):
        own = order[starts[c] : starts[c + 1]]
        if len(own) == 0:
            continue
        pool = np.unique(
            np.concatenate([listed[list_starts[p] : list_starts[p + 1]] for p in probes[c]])
        )
        candidates = np.concatenate([own, pool[~np.isin(pool, own, assume_unique=True)]])
        _join(x, own, candidates, k, block_bytes, sims, index)
        if progress is not None:
            progress(len(own))
    _fill_short_rows(x, sims, index)
    if content is not None:
        _add_same_content(x, content, sims, index)
    _finish(sims, index)
    return sims, index


def _lists(cell: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions grouped by cell (stable) and each cell's start in them."""
    order = np.argsort(cell, kind="stable")
    return order, np.searchsorted(cell[order], np.arange(cells + 1))


def _train_centroids(x: np.ndarray, plan: IndexPlan, seed: int) -> np.ndarray:
    """Spherical k-means centroids from a seeded sample of ``plan.train_rows`` rows."""
    import faiss

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), plan.train_rows, replace=False))
    kmeans = faiss.Kmeans(
        x.shape[1],
        plan.cells,
        niter=plan.kmeans_iterations,
        spherical=True,
        seed=seed,
        max_points_per_centroid=TRAIN_POINTS_PER_CELL,
        min_points_per_centroid=1,
    )
    kmeans.train(x[sample])
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _nearest(centroids: np.ndarray, queries: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` centroids of largest inner product with each query (blocks of rows)."""
    import faiss

    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    out = np.empty((len(queries), count), np.int64)
    step = 65536
    for r0 in range(0, len(queries), step):
        _, found = flat.search(queries[r0 : r0 + step], count)
        out[r0 : r0 + step] = found
    return out


def _join(
    x: np.ndarray,
    own: np.ndarray,
    candidates: np.ndarray,
    k: int,
    block_bytes: int,
    sims: np.ndarray,
    index: np.ndarray,
) -> None:
    """Top ``k`` of ``candidates`` (whose first ``len(own)`` are ``own``) for each row of
    ``own``, written into ``sims`` / ``index``: faiss's exact inner-product search (BLAS
    products, a top-k heap per row) over the candidates, ``k + 1`` deep to drop the row
    itself; queries in blocks whose similarities fit ``block_bytes``."""
    import faiss

    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x[candidates])
    step = max(1, min(len(own), (block_bytes // 4) // max(len(candidates), 1)))
    depth = min(k + 1, len(candidates))
    for r0 in range(0, len(own), step):
        rows = own[r0 : r0 + step]
        found_s, found = flat.search(x[rows], depth)
        self_hit = found == np.arange(r0, r0 + len(rows))[:, None]
        missing = found < 0
        # each row's first k hits that are neither itself nor missing
        keep = np.argsort(self_hit | missing, axis=1, kind="stable")[:, :k]
        found_s = np.take_along_axis(found_s, keep, axis=1)
        found = np.take_along_axis(found, keep, axis=1)
        bad = (found < 0) | (found == np.arange(r0, r0 + len(rows))[:, None])
        width = found.shape[1]
        sims[rows, :width] = np.where(bad, -np.inf, found_s)
        index[rows, :width] = np.where(bad, -1, candidates[np.maximum(found, 0)])


def _fill_short_rows(x: np.ndarray, sims: np.ndarray, index: np.ndarray) -> None:
    """Rows whose cells held fewer than ``k`` other rows get their neighbours by an exact
    scan (rare: tiny or very unbalanced cells)."""
    from ..store.search_index import query_top_k

    k = sims.shape[1]
    for row in np.flatnonzero(index[:, -1] < 0):
        s, i = next(query_top_k(x, x[row], k, exclude=int(row)))
        sims[row, : len(s)], index[row, : len(i)] = s, i


def _add_same_content(
    x: np.ndarray, content: np.ndarray, sims: np.ndarray, index: np.ndarray
) -> None:
    """Merge into each row's neighbours the other rows of its content (exact cosines)."""
    k = sims.shape[1]
    ids = np.asarray(content).reshape(-1)
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(np.diff(ids[order])) + 1
    for group in np.split(order, bounds):
        if len(group) < 2:
            continue
        group = np.sort(group)
        g = x[group]
        exact = g @ g.T
        for j, row in enumerate(group):
            others = np.delete(np.arange(len(group)), j)[:k]
            extra_i = group[others]
            fresh = ~np.isin(extra_i, index[row])
            if not fresh.any():
                continue
            all_s = np.concatenate([sims[row], exact[j, others][fresh]])
            all_i = np.concatenate([index[row], extra_i[fresh]])
            top = np.lexsort((all_i, -all_s))[:k]
            sims[row], index[row] = all_s[top], all_i[top]


def _finish(sims: np.ndarray, index: np.ndarray) -> None:
    """Sort each row by descending similarity, ties by lower index (in place); a row with
    fewer than ``k`` other rows in all keeps ``-inf`` / ``-1`` at its end."""
    key_i = np.where(index < 0, np.iinfo(np.int64).max, index)
    order = np.lexsort((key_i, -sims), axis=1)
    sims[:] = np.take_along_axis(sims, order, axis=1)
    index[:] = np.take_along_axis(index, order, axis=1)


def expected_comparisons(rows: int, plan: IndexPlan) -> float:
    """Row pairs compared, at most (balanced cells): rows x probes x spill x rows / cells."""
    return rows * plan.probes * plan.spill * rows / max(plan.cells, 1) if rows else 0.0


def describe(plan: IndexPlan, rows: int) -> str:
    """One line for the report."""
    share = expected_comparisons(rows, plan) / max(rows * rows, 1)
    return (
        f"approximate (inverted file: {plan.cells:,} cells, each row listed in its "
        f"{plan.spill} nearest, {plan.probes} probed per row, at most "
        f"{math.ceil(min(share, 1) * 1000) / 10:g}% of pairs compared, cosines exact)"
    )
