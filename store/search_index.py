"""The search index of a cache and exact cosine top-k over it (``featcache search``, the
``Search`` RPC and ``audit``'s neighbour merge share it; numpy only).

The index is the cache's features, L2-normalised float32, in ``CACHE.search.npy`` (read
memory-mapped) with ``CACHE.search.json`` saying which cache it was built from: the cache's
fingerprint, row count, size and modification time. Any difference rebuilds it, so an
index never answers for another state of the cache. A tap's features (``extract --taps``)
have their own index, ``CACHE.search@TAP.npy``. A query scans the index in blocks.
"""

from __future__ import annotations

import glob
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.files import fresh_file
from ..core.locking import PathLock, lock_path
from ..core.options import MAIN_TAP
from ..core.splits import SPLIT_NAMES
from ..errors import InvalidOptionError

if TYPE_CHECKING:
    from . import CacheReader

DEFAULT_SEARCH_K = 10
"""Rows a search returns unless told."""
MAX_SEARCH_K = 10_000
SCAN_BLOCK_BYTES = 256 << 20
"""Bytes of one block of float32 similarities."""

INDEX_VERSION = 1


def normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as C-contiguous float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def merge_top_k(
    best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` largest of two candidate sets per row."""
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, i], axis=1)
    if all_s.shape[1] > k:
        pick = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        all_s = np.take_along_axis(all_s, pick, axis=1)
        all_i = np.take_along_axis(all_i, pick, axis=1)
    return all_s, all_i


def query_top_k(
    index: np.ndarray, queries: np.ndarray, k: int, exclude: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each normalised query: (similarities, rows) of its ``k`` best rows of ``index``,
    best first (ties by lower row), scanning ``index`` in blocks (it may be memory-mapped).
    ``exclude``: a row never returned (the query's own row)."""
    n = len(index)
    q = np.atleast_2d(np.asarray(queries, np.float32))
    step = max(1, (SCAN_BLOCK_BYTES // 4) // max(1, index.shape[1]))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        s = q @ np.asarray(index[c0:c1]).T
        if exclude is not None and c0 <= exclude < c1:
            s[:, exclude - c0] = -np.inf
        kk = min(k, c1 - c0)
        pick = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s, best_i = merge_top_k(
            best_s, best_i, np.take_along_axis(s, pick, axis=1), pick + c0, k
        )
    for s_row, i_row in zip(best_s, best_i):
        keep = np.isfinite(s_row)
        s_row, i_row = s_row[keep], i_row[keep]
        order = np.lexsort((i_row, -s_row))
        yield s_row[order], i_row[order]


def search_tap(tap: str | None, *, image: bool, text: bool) -> str:
    """The tap a search asks for (None or empty: ``main``), refused in one line for a
    query its space cannot take: a text (a tap is no image-text space). An image on taps
    side by side (``a+b``) is embedded up to each of their layers. ``featcache search`` and
    the ``Search`` RPC share it."""
    if tap is None or not tap.strip() or tap.strip() == MAIN_TAP:
        return MAIN_TAP
    tap = tap.strip()
    if text:
        raise InvalidOptionError(
            f"tap {tap!r}: a text is searched in the image-text space of the cache's "
            "features (a CLIP or SigLIP cache, extract --projection), which a tap is not in; "
            "search the tap by image or row",
            "tap",
        )
    return tap


def index_stem(cache: str | os.PathLike[str], tap: str | None = None) -> Path:
    """``CACHE.search``, the start of the name of every search index file of ``cache``;
    for a tap (``extract --taps``; not ``main``) ``CACHE.search@TAP``, so that the index of
    one tap's features never answers, nor is rebuilt over, another's."""
    path = Path(cache)
    keyed = f"@{tap}" if tap and tap != MAIN_TAP else ""
    return path.with_name(f"{path.name}.search{keyed}")


INDEX_ENDINGS = (".ann.json", ".slots.npz", ".faiss", ".npy", ".json")
"""What follows an index stem (:func:`index_stem`) in the name of each of its files: the
exact index and its identity, the faiss index, its slots and identity (``ann_index``); each
may also have a lock (``.lock`` after it)."""


def drop_gone_tap_indexes(cache: str | os.PathLike[str], taps: Iterable[str]) -> list[Path]:
    """Remove the search index files (and their locks) of taps ``cache`` no longer has,
    after a run rewrote it with other taps or none: no search can ask for those taps again,
    and each index is a full copy of its tap's features. ``taps``: the cache's taps now;
    side-by-side indexes (``a+b``) stay while every part is one of them. Only names made by
    :func:`index_stem` and :data:`INDEX_ENDINGS` are touched. Returns the files removed.
    (A search that has an index memory-mapped keeps reading its pages.)"""
    path = Path(cache)
    prefix = f"{path.name}.search@"
    have = {MAIN_TAP, *taps}
    removed = []
    for file in sorted(path.parent.glob(glob.escape(prefix) + "*")):
        name = file.name.removesuffix(".lock")
        ending = next((e for e in INDEX_ENDINGS if name.endswith(e)), None)
        if ending is None or not file.is_file():
            continue  # not an index file of this cache's
        keyed = name[len(prefix) : -len(ending)]
        if not keyed or all(part in have for part in keyed.split("+")):
            continue
        try:
            file.unlink()
        except OSError:  # gone already, or not ours to remove: leave it
            continue
        removed.append(file)
    return removed


def index_paths(cache: str | os.PathLike[str], tap: str | None = None) -> tuple[Path, Path]:
    """``(CACHE.search.npy, CACHE.search.json)`` (a tap's: ``CACHE.search@TAP.npy``, ...)."""
    stem = index_stem(cache, tap)
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def _identity(reader: CacheReader) -> dict[str, Any]:
    """What an index was built from: the file ``reader`` opened (not whatever file is at its
    path now: a run may have rewritten it since)."""
    _, _, size, mtime_ns = reader.identity
    return {
        "version": INDEX_VERSION,
        "fingerprint": reader.fingerprint,
        "rows": len(reader),
        "feature_dim": reader.feature_dim,
        "cache_size": size,
        "cache_mtime_ns": mtime_ns,
    }


_BUILDING: dict[Path, threading.Lock] = {}
_BUILDING_GUARD = threading.Lock()


def _building_lock(path: Path) -> threading.Lock:
    """One lock per index in this process (threads); the file lock covers processes."""
    with _BUILDING_GUARD:
        return _BUILDING.setdefault(path, threading.Lock())


def _current(array_path: Path, meta_path: Path, want: dict[str, Any]) -> np.ndarray | None:
    """The index, memory-mapped, when its files are whole and were built from the cache's
    present state; None otherwise (missing, stale or damaged: rebuild)."""
    try:
        if json.loads(meta_path.read_text()) != want:
            return None
        index = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, unreadable or damaged
        return None
    if index.shape != (want["rows"], want["feature_dim"]) or index.dtype != np.float32:
        return None
    return index


def load_index(
    reader: CacheReader, rebuild: bool = False, progress: bool | None = None
) -> tuple[np.ndarray, bool]:
    """The normalised features of ``reader``'s cache, memory-mapped, and whether they were
    (re)built now: built when missing, damaged, when ``rebuild``, or when the cache changed.

    Concurrent callers (threads of a server, other processes) build an index once: the
    first builds it under a lock while the others wait, then find it current. A build
    writes under a fresh temporary name and renames it over the index, so a file someone
    has memory-mapped is never truncated or rewritten."""
    array_path, meta_path = index_paths(reader.path, reader.tap_name)
    want = _identity(reader)
    if not rebuild:
        found = _current(array_path, meta_path, want)
        if found is not None:
            return found, False
    with _building_lock(array_path), PathLock(lock_path(array_path)):
        found = _current(array_path, meta_path, want)
        if found is not None and not rebuild:
            return found, False  # another caller built it while this one waited
        _build(reader, array_path, meta_path, want, progress)
        # loaded under the locks: another caller may rebuild it for another state next
        return np.load(array_path, mmap_mode="r"), True


def _build(
    reader: CacheReader,
    array_path: Path,
    meta_path: Path,
    want: dict[str, Any],
    progress: bool | None,
) -> None:
    """Write the index and its identity under fresh temporary names, then rename them
    into place (the identity last: an index without it is never trusted)."""
    from ..core.progress import progress_bar

    meta_path.unlink(missing_ok=True)  # no identity: never trusted, even if the rest fails
    tmp = _temporary(array_path)
    bar = progress_bar(len(reader), progress, "index")
    try:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(reader), reader.feature_dim)
        )
        for rows, block in reader.batches(batch_size=8192):
            out[rows[0] : rows[-1] + 1] = normalize(block)
            bar.update(len(rows))
        out.flush()
        del out
        os.replace(tmp, array_path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    meta_tmp = _temporary(meta_path)
    try:
        meta_tmp.write_text(json.dumps(want))
        os.replace(meta_tmp, meta_path)
    finally:
        meta_tmp.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    """A new empty file next to ``path`` with a random name (``O_EXCL``: never an existing
    file or a planted symlink), for this process to fill and rename."""
    return fresh_file(path.parent, f".{path.name}.", ".tmp")


def rank_rows(
    reader: CacheReader, index: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
) -> list[dict[str, Any]]:
    """The ``k`` rows of ``index`` most similar to one normalised ``query``, best first:
    rank, row, path, class, split, similarity."""
    if len(index) == 0:
        return []
    sims, rows = next(query_top_k(index, np.asarray(query)[None, :], k, exclude))
    return ranked_hits(reader, sims, rows)


def ranked_hits(reader: CacheReader, sims: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """Hits of one query from its best-first ``(similarities, rows)`` (-1 rows skipped):
    rank, row, path, class, split, similarity."""
    keep = np.asarray(rows) >= 0
    sims, rows = np.asarray(sims)[keep], np.asarray(rows)[keep]
    names = reader.label_names(rows)
    return [
        {
            "rank": rank,
            "row": int(r),
            "path": reader.paths[int(r)],
            "class": names[rank - 1],
            "split": SPLIT_NAMES[int(reader.split[int(r)])],
            "similarity": float(s),
        }
        for rank, (r, s) in enumerate(zip(rows.tolist(), sims.tolist()), start=1)
    ]
