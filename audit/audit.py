"""``audit_cache()``: exact and near duplicates, split leakage, outliers and likely label errors
of one cache, and ``fix_splits()``, which removes the leakage from the cache's splits.

Everything is read through :class:`~featcache.store.CacheReader`; neighbours come
from :mod:`.neighbors` (blocked, exact, no N x N matrix) below
``options.approximate_from`` rows or with ``options.exact``, from :mod:`.ann_neighbors`
(an inverted-file self-join, exact cosines) above.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import MAIN_TAP
from ..core.progress import Status, progress_bar
from ..core.splits import SPLIT_NAMES
from ..store import CacheReader, open_cache
from ..store.opening import with_tap
from .labels import check_labels, out_of_fold_probabilities
from .neighbors import normalize, top_k_neighbors
from .options import THRESHOLD_TABLE, AuditOptions


@dataclass
class Pair:
    a: int
    b: int
    similarity: float
    kind: str
    """``exact`` (same SHA-256) or ``near``."""


@dataclass
class AuditReport:
    """What :func:`audit` found; row numbers index the cache."""

    cache: str
    rows: int
    options: AuditOptions
    duplicate_groups: list[list[int]]
    near_pairs: list[Pair]
    leakage: list[Pair]
    outliers: list[tuple[int, float]]
    """(row, score): score is the mean cosine distance to the row's k nearest neighbours."""
    label_issues: list[dict[str, Any]]
    threshold_table: dict[str, int]
    groups: list[list[int]] = field(default_factory=list)
    """Connected groups of exact and near duplicates (two rows or more)."""
    label_check: dict[str, Any] = field(default_factory=dict)
    """What to expect of the label issues (:class:`~.labels.LabelCheck`'s threshold,
    rows checked, estimated wrong labels, expected precision and recall of the flags)."""
    neighbors_method: dict[str, Any] = field(default_factory=lambda: {"method": "exact"})
    """How the neighbours were found: ``exact``, or ``ivf`` with the index's parameters
    and a one-line ``description``."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of each stage: read, neighbours, pairs, labels."""
    tap: str = MAIN_TAP
    """Whose features were audited: ``main`` (the cache's features) or a tap's name
    (``extract --taps``; ``a+b``: side by side)."""

    def summary(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "tap": self.tap,
            "rows": self.rows,
            "threshold": self.options.threshold,
            "neighbors": self.options.neighbors,
            "exact_duplicate_groups": len(self.duplicate_groups),
            "exact_duplicate_rows": sum(len(g) for g in self.duplicate_groups),
            "near_duplicate_pairs": len(self.near_pairs),
            "leakage_pairs": len(self.leakage),
            "leaking_groups": sum(1 for g in self.groups if len(self._splits(g)) > 1),
            "outliers": len(self.outliers),
            "label_issues": len(self.label_issues),
            **self.label_check,
            "near_pairs_by_threshold": self.threshold_table,
            "neighbors_method": self.neighbors_method.get("description", "exact"),
        }

    split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    """The split of every row when audited."""
    rows_digest: str = ""
    """SHA-256 over the audited rows' paths and hashes: ``fix_splits`` refuses another state."""

    def _splits(self, group: list[int]) -> set[int]:
        return {int(self.split[r]) for r in group}


class _Groups:
    """Union-find over rows."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for row in self.parent:
            out[self.find(row)].append(row)
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: g[0])


def audit_cache(cache: str | os.PathLike[str], options: AuditOptions | None = None) -> AuditReport:
    """Audit one cache: duplicates, near-duplicates, leakage, outliers, label issues.

    ``options.tap`` audits the features of a tap of the cache (``extract --taps``) instead
    of its ``features``: near-duplicates, outliers and label issues are found in that
    tap's space (exact duplicates are the same content whatever the tap).

    >>> report = audit_cache("cache/mobilenet.h5")  # doctest: +SKIP
    >>> report.summary()["leakage_pairs"]  # doctest: +SKIP
    """
    options = options or AuditOptions()
    opened = open_cache(cache)
    tap = options.tap.strip() if options.tapped and options.tap else MAIN_TAP
    reader = opened if tap == MAIN_TAP else with_tap(opened, tap)
    n = len(reader)
    clock = _Clock()
    x = np.empty((n, reader.feature_dim), np.float32)  # the one copy of the features
    with Status(f"audit: reading {n:,} rows", options.progress):
        for rows, block in reader.batches(batch_size=8192):
            x[rows[0] : rows[-1] + 1] = normalize(block)
    content = np.unique(np.asarray(reader.sha256), return_inverse=True)[1].reshape(-1)
    clock.lap("read")
    sims, index, method = _neighbors(x, content, options)
    clock.lap("neighbors")
    by_sha: dict[str, list[int]] = defaultdict(list)
    for row, sha in enumerate(reader.sha256):
        by_sha[sha].append(row)
    duplicate_groups = sorted((g for g in by_sha.values() if len(g) > 1), key=lambda g: g[0])
    exact_pairs = [Pair(g[0], other, 1.0, "exact") for g in duplicate_groups for other in g[1:]]
    a, b, best = _candidate_pairs(sims, index, content, min((*THRESHOLD_TABLE, options.threshold)))
    keep = best >= options.threshold
    near_pairs = [
        Pair(int(i), int(j), float(v), "near") for i, j, v in zip(a[keep], b[keep], best[keep])
    ]
    table = {f"{t:g}": int(np.sum(best >= t)) for t in THRESHOLD_TABLE}
    union = _Groups()
    for pair in (*exact_pairs, *near_pairs):
        union.union(pair.a, pair.b)
    split = reader.split
    leakage = [p for p in (*exact_pairs, *near_pairs) if split[p.a] != split[p.b]]
    outliers = _outliers(sims, options.outlier_fraction)
    clock.lap("pairs")
    issues: list[dict[str, Any]] = []
    check: dict[str, Any] = {}
    if options.label_issues:
        with Status(f"audit: label check ({options.folds} folds)", options.progress):
            issues, check = _label_issues(reader, x, options)
        clock.lap("labels")
    if options.zero_shot:
        from .zero_shot import zero_shot_issues

        with Status("audit: zero-shot opinion", options.progress):
            issues, opinion = zero_shot_issues(reader, x, issues, options.zero_shot_threshold)
        check.update(opinion)
        clock.lap("zero-shot")
    return AuditReport(
        cache=str(opened.path),
        rows=n,
        options=options,
        duplicate_groups=duplicate_groups,
        near_pairs=near_pairs,
        leakage=leakage,
        outliers=outliers,
        label_issues=issues,
        threshold_table=table,
        groups=union.groups(),
        label_check=check,
        split=split,
        rows_digest=_rows_digest(reader),
        neighbors_method=method,
        seconds=clock.seconds,
        tap=tap,
    )


class _Clock:
    """Seconds per stage."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _neighbors(
    x: np.ndarray, content: np.ndarray, options: AuditOptions
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The kNN graph, exact or from the approximate index, and how it was found."""
    n = len(x)
    if not options.approximate(n):
        exact_bar = progress_bar(n, options.progress, "audit: neighbours (exact)", "row")
        try:
            sims, index = top_k_neighbors(
                x, options.neighbors, options.block_bytes, exact_bar.update
            )
        finally:
            exact_bar.close()
        return sims, index, {"method": "exact", "description": "exact (every pair compared)"}
    from .ann_neighbors import ann_top_k_neighbors, describe, plan_index

    plan = plan_index(n, options.probes)
    status = Status("audit: neighbours", options.progress)
    bar: Any = None

    def stage(text: str) -> None:
        status.set(f"audit: neighbours: {text}")

    def progress(rows: int) -> None:
        nonlocal bar
        if bar is None:
            status.close()
            bar = progress_bar(n, options.progress, "audit: neighbours (approximate)", "row")
        bar.update(rows)

    try:
        sims, index = ann_top_k_neighbors(
            x, options.neighbors, plan, content, options.seed, options.block_bytes, progress, stage
        )
    finally:
        status.close()
        if bar is not None:
            bar.close()
    return sims, index, {**plan.to_dict(), "description": describe(plan, n)}


def _rows_digest(reader: CacheReader) -> str:
    digest = hashlib.sha256()
    for path, sha in zip(reader.paths, reader.sha256):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


def _candidate_pairs(
    sims: np.ndarray, index: np.ndarray, content: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs ``a < b`` among each row's neighbours at ``threshold`` or above whose
    content differs (``content``: one id per SHA-256), most similar first (ties by ``a``,
    ``b``): arrays ``a``, ``b``, similarity."""
    rows, cols = np.nonzero(sims >= threshold)
    other = index[rows, cols]
    a, b = np.minimum(rows, other), np.maximum(rows, other)
    value = sims[rows, cols].astype(np.float64)
    differ = content[a] != content[b]
    a, b, value = a[differ], b[differ], value[differ]
    order = np.lexsort((b, a, -value))  # the highest similarity of each pair first
    a, b, value = a[order], b[order], value[order]
    key = a.astype(np.int64) * max(len(sims), 1) + b
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)  # back to similarity order
    return a[first], b[first], value[first]


def _outliers(sims: np.ndarray, fraction: float) -> list[tuple[int, float]]:
    """The ``fraction`` of rows (at least one when fraction > 0) whose mean cosine distance
    to their neighbours is largest, largest first."""
    n = len(sims)
    if n == 0 or sims.shape[1] == 0 or fraction <= 0:
        return []
    score = 1.0 - sims.mean(axis=1)
    count = min(n, max(1, math.ceil(fraction * n)))
    order = np.lexsort((np.arange(n), -score))[:count]
    return [(int(r), float(score[r])) for r in order]


def _label_issues(
    reader: CacheReader, x: np.ndarray, options: AuditOptions
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The flagged labels and what to expect of them (``label_check``)."""
    rows = np.flatnonzero(reader.labels >= 0)
    classes = len(reader.class_names)
    if len(rows) < 4 or classes < 2:
        return [], {}
    labels = reader.labels[rows]
    features = x if len(rows) == len(x) else x[rows]  # no copy when every row is labelled
    probabilities = out_of_fold_probabilities(
        features, labels, classes, options.folds, options.seed, options.label_fit_rows
    )
    found = check_labels(labels, probabilities, options.label_threshold)
    names = reader.class_names
    issues = [
        {
            "row": int(rows[i]),
            "given": names[int(labels[i])],
            "suggested": names[int(s)],
            "self_confidence": float(conf),
        }
        for i, s, conf in zip(found.rows, found.suggested, found.self_confidence)
    ]
    check: dict[str, Any] = {
        "label_threshold": found.threshold,
        "labels_checked": found.checked,
        "label_errors_estimated": _rounded(found.estimated_errors, 1),
        "label_issues_precision": _rounded(found.expected_precision, 3),
        "label_issues_recall": _rounded(found.expected_recall, 3),
    }
    if len(rows) - len(rows) // options.folds > options.label_fit_rows:
        check["label_fit_rows"] = options.label_fit_rows  # each fold's model saw a sample
    return issues, check


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def fixed_splits(report: AuditReport) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The splits with every leaking group moved into one split: each group of exact and
    near duplicates that spans several splits takes the split of its first row (lowest
    row index). Returns the new splits and the moves ``(row, old, new)``."""
    split = report.split.copy()
    moves = []
    for group in report.groups:
        target = int(split[group[0]])
        for row in group[1:]:
            if int(split[row]) != target:
                moves.append((row, int(split[row]), target))
                split[row] = target
    return split, moves


def fix_splits(report: AuditReport) -> list[tuple[int, int, int]]:
    """Write :func:`fixed_splits` into the audited cache (atomically, under its lock) and
    record it in the ``splits_fixed`` attribute. Returns the moves (none: nothing written).
    """
    from ..core.locking import PathLock, lock_path
    from ..errors import CacheError, CacheLockedError
    from ..store.splits_edit import rewrite_splits

    split, moves = fixed_splits(report)
    if not moves:
        return []
    path = Path(report.cache)
    lock = PathLock(lock_path(path))
    if not lock.acquire(blocking=False):
        raise CacheLockedError(f"{path} is being written by another process; retry")
    try:
        now = CacheReader(path)
        same = len(now) == report.rows and _rows_digest(now) == report.rows_digest
        if not same or not np.array_equal(now.split, report.split):
            raise CacheError(f"{path} changed since it was audited; audit it again")
        moved: dict[str, int] = defaultdict(int)
        for _, old, new in moves:
            moved[f"{SPLIT_NAMES[old]}->{SPLIT_NAMES[new]}"] += 1
        note = {
            "rule": "each leaking duplicate group takes the split of its first row",
            "threshold": report.options.threshold,
            **({"tap": report.tap} if report.tap != MAIN_TAP else {}),
            "moved": dict(moved),
        }
        rewrite_splits(path, split, note)
    finally:
        lock.release()
    return moves
