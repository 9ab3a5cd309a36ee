"""One searchable index per cache: exact below a row count, a faiss IVF index above it.

``open_ann(reader)`` gives an object with ``.kind`` and ``.search(queries, k, exclude)
-> (similarities, rows)`` whatever answers: the exact scan over ``CACHE.search.npy``
(:mod:`.search_index`) or a faiss index (``CACHE.search.faiss``, its slot table
``CACHE.search.slots.npz`` and its identity ``CACHE.search.ann.json``, written last); a
tap's features (``extract --taps``) have their own, ``CACHE.search@TAP.*``.

A faiss index holds rows under *slot* ids; the slot table gives each slot's cache row and
the first 64 bits of its content SHA-256. When the cache changed (``extract`` added,
removed or re-read images; rows may move, the writer keeps dataset order), rows are
matched to slots by content: only new contents are embedded into the index and removed
ones dropped (``remove_ids``), unless more than :data:`REBUILD_FRACTION` of the rows
changed since the index was trained, or the cache grew past :data:`REBUILD_GROWTH` times
its rows then: a full rebuild (the k-means lists would no longer fit the data).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core.locking import PathLock, lock_path
from .ann_plan import DEFAULT_EXACT_BELOW, DEFAULT_INDEX_MEMORY, IndexPlan, plan_index
from .search_index import (
    _building_lock,
    _temporary,
    index_stem,
    load_index,
    merge_top_k,
    normalize,
    query_top_k,
)

if TYPE_CHECKING:
    from . import CacheReader

ANN_VERSION = 1
TARGET_RECALL = 0.97
"""recall@10 against exact that the build tunes ``nprobe`` for (on held-out rows)."""
REBUILD_FRACTION = 0.25
REBUILD_GROWTH = 4.0
TRAIN_PER_LIST = 40
"""Rows k-means trains on per IVF list (faiss asks for 39), read as random runs of 1,024
rows: 40,960 for the 1,024 lists of 1M rows."""
PLATEAU = 0.002
"""Recall gained by doubling ``nprobe`` under which tuning stops."""
PROBE_QUERIES = 256
TABLE_BYTES = 256 << 20
"""An ``ivf-pq`` build keeps its probes' similarity to every row (float16) in this many
bytes at most (fewer probes for more rows: 134 at 1M), to tune re-ranking without
reading rows back from the cache."""
BLOCK_ROWS = 32 * 1024
RERANK = (4, 16, 64)
"""An ``ivf-pq`` search fetches R x k candidates and re-ranks them exactly from the
cache's features: the first R of these reaching the target recall at some ``nprobe``.
``ivf-sq8`` tries without re-ranking first; its 8-bit codes swap near-ties, which capped
recall@10 at 0.947 on 1M x 1,024 clustered rows, so it re-ranks when that is short."""
RERANKED = ("ivf-sq8", "ivf-pq")
"""Kinds whose build keeps the probes' exact similarities, to tune re-ranking."""


def _faiss() -> Any:
    """The faiss module (imported on first use; typed loosely: its stubs lag its API)."""
    import faiss

    return faiss


Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(queries, candidate rows (q, c)) -> exact similarities (q, c)``."""


class Searcher(Protocol):
    """What :func:`open_ann` returns."""

    kind: str

    def search(
        self, queries: np.ndarray, k: int, exclude: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def row_vector(self, row: int) -> np.ndarray: ...


def ann_paths(cache: str | os.PathLike[str], tap: str | None = None) -> tuple[Path, Path, Path]:
    """``(CACHE.search.faiss, CACHE.search.slots.npz, CACHE.search.ann.json)``; a tap's
    (``extract --taps``) are ``CACHE.search@TAP.faiss``, ... (:func:`.index_stem`)."""
    stem = index_stem(cache, tap)
    return tuple(stem.with_name(stem.name + s) for s in (".faiss", ".slots.npz", ".ann.json"))  # type: ignore[return-value]


class ExactIndex:
    """The exact blocked scan over the normalised features (memory-mapped)."""

    kind = "exact"

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def search(
        self, queries: np.ndarray, k: int, exclude: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, rows)`` of shape (queries, k), best first; -1 rows (and -inf)
        pad where the cache has fewer rows."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        return _padded(query_top_k(self.array, q, k, exclude), len(q), k)

    def row_vector(self, row: int) -> np.ndarray:
        return np.asarray(self.array[row])


class AnnIndex:
    """A faiss IVF index over one state of a cache (its slot table maps ids to rows)."""

    def __init__(
        self, loaded: _Loaded, reader: CacheReader, vectors: np.ndarray | None = None
    ) -> None:
        self.kind: str = loaded.meta["kind"]
        self.nprobe: int = loaded.meta["nprobe"]
        self.rerank: int = loaded.meta.get("rerank", 0)
        self.recall: float = loaded.meta["recall"]
        self._loaded, self._reader, self._vectors = loaded, reader, vectors

    def search(
        self, queries: np.ndarray, k: int, exclude: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ExactIndex.search`, approximately (recall@10 ~ :attr:`recall`)."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        return _padded(
            _ann_query(self._loaded, q, k, exclude, self._rescore, self.nprobe, self.rerank),
            len(q),
            k,
        )

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact similarities of candidate rows, from the memory-mapped exact index."""
        if self._vectors is None:
            return _reader_rescore(self._reader)(q, rows)
        return np.einsum("qkd,qd->qk", self._vectors[np.maximum(rows, 0)], q)

    def row_vector(self, row: int) -> np.ndarray:
        """Row ``row``'s normalised features: from the index's codes (exact for
        ``ivf-flat``, 8-bit for ``ivf-sq8``: reading one row of an HDF5 cache costs about
        10 ms), from the memory-mapped exact index beside ``ivf-pq``'s 4-bit codes."""
        if self._vectors is not None:
            return np.asarray(self._vectors[row])
        slot = self._loaded.slot_of(row, len(self._reader))
        if slot < 0:
            return normalize(self._reader.features(np.array([row])))[0]
        return normalize(self._loaded.index.reconstruct(slot)[None, :])[0]


def open_ann(
    reader: CacheReader,
    exact: bool = False,
    memory: int = DEFAULT_INDEX_MEMORY,
    exact_below: int = DEFAULT_EXACT_BELOW,
    rebuild: bool = False,
    progress: bool | None = None,
    kind: str = "auto",
) -> tuple[Searcher, str]:
    """The index that answers searches of ``reader``'s cache, and how it came:
    ``loaded`` (current on disk or in this process), ``built`` or ``updated`` (only
    the rows the cache gained or lost since, added to or removed from the index).

    Builds are one at a time per index (a lock per index for threads, a file lock for
    processes); every file is written under a fresh name and renamed into place, the
    identity last, so a reader never sees half an index, and one holding the old index
    keeps it. ``kind``: ``auto`` (by rows and ``memory``, :func:`.ann_plan.plan_index`)
    or one of ``exact``, ``ivf-flat``, ``ivf-sq8``, ``ivf-pq``."""
    plan = plan_index(len(reader), reader.feature_dim, memory, exact_below, exact, kind)
    if plan.kind == "exact":
        array, built = load_index(reader, rebuild, progress)
        return ExactIndex(array), "built" if built else "loaded"
    found, how = _open_faiss(reader, plan, rebuild, progress)
    vectors = None
    if found.meta.get("rerank", 0):  # re-ranks from the exact index, memory-mapped (on disk)
        vectors = load_index(reader, rebuild, progress)[0]
    return AnnIndex(found, reader, vectors), how


def _open_faiss(
    reader: CacheReader, plan: IndexPlan, rebuild: bool, progress: bool | None
) -> tuple[_Loaded, str]:
    """:func:`open_ann`'s faiss index: loaded, built or updated."""
    paths = ann_paths(reader.path, reader.tap_name)
    want = _identity(reader)
    if not rebuild:
        found = _current(paths, want, plan.kind)
        if found is not None:
            return found, "loaded"
    with _building_lock(paths[0]), PathLock(lock_path(paths[0])):
        found = _current(paths, want, plan.kind)
        if found is not None and not rebuild:
            return found, "loaded"
        how = "built"
        previous = None if rebuild else _previous(paths, want, plan)
        if previous is not None and _update(reader, previous, paths, want, progress):
            how = "updated"
        else:
            _build(reader, plan, paths, want, progress)
        found = _current(paths, want, plan.kind)
        if found is None:  # pragma: no cover - only if the files were removed under the lock
            raise OSError(f"{paths[2]}: the index just written is gone")
        return found, how


class _Loaded:
    """An index read into memory with its slot table and identity."""

    def __init__(self, meta: dict[str, Any], index: Any, rows: np.ndarray, keys: np.ndarray):
        self.meta, self.index, self.rows, self.keys = meta, index, rows, keys
        self._slots: np.ndarray | None = None

    def slot_of(self, row: int, rows: int) -> int:
        """The slot holding cache row ``row`` (-1: none)."""
        if self._slots is None:
            slots = np.full(rows, -1, np.int64)
            live = np.flatnonzero(self.rows >= 0)
            slots[self.rows[live]] = live
            self._slots = slots
        return int(self._slots[row]) if 0 <= row < len(self._slots) else -1


_LOADED: OrderedDict[Path, _Loaded] = OrderedDict()
_LOADED_GUARD = threading.Lock()
HELD_INDEXES = 2
"""Indexes this process keeps in memory (the most recently used caches')."""


def _hold(path: Path, loaded: _Loaded) -> None:
    with _LOADED_GUARD:
        _LOADED[path] = loaded
        _LOADED.move_to_end(path)
        while len(_LOADED) > HELD_INDEXES:
            _LOADED.popitem(last=False)


def _identity(reader: CacheReader) -> dict[str, Any]:
    _, _, size, mtime_ns = reader.identity
    return {
        "version": ANN_VERSION,
        "fingerprint": reader.fingerprint,
        "rows": len(reader),
        "feature_dim": reader.feature_dim,
        "cache_size": size,
        "cache_mtime_ns": mtime_ns,
    }


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _load(paths: tuple[Path, Path, Path], meta: dict[str, Any]) -> _Loaded | None:
    """The files of the build ``meta`` names, from this process's copy when it holds
    that build; None when they are missing, damaged or of another build."""
    with _LOADED_GUARD:
        held = _LOADED.get(paths[0])
    if held is not None and held.meta["build"] == meta["build"]:
        return held
    faiss = _faiss()
    try:
        with np.load(paths[1]) as slots:
            build, rows, keys = str(slots["build"]), slots["rows"], slots["keys"]
        index = faiss.read_index(str(paths[0]))
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile):
        return None  # missing, damaged or half-written: rebuilt
    if build != meta["build"] or index.ntotal != meta["live"] or len(rows) != len(keys):
        return None
    if _read_meta(paths[2]) != meta:  # replaced while these were read
        return None
    loaded = _Loaded(meta, index, rows, keys)
    _hold(paths[0], loaded)  # one index per cache: the latest
    return loaded


def _current(paths: tuple[Path, Path, Path], want: dict[str, Any], kind: str) -> _Loaded | None:
    """The index on disk when it is of ``kind`` and was built from the cache's state."""
    meta = _read_meta(paths[2])
    if meta is None or meta.get("cache") != want or meta.get("kind") != kind:
        return None
    return _load(paths, meta)


def _previous(
    paths: tuple[Path, Path, Path], want: dict[str, Any], plan: IndexPlan
) -> _Loaded | None:
    """The index of an earlier state of the cache when it can be updated: same features
    (fingerprint, width) and the kind the plan asks for."""
    meta = _read_meta(paths[2])
    if meta is None or meta.get("version") != ANN_VERSION or meta.get("kind") != plan.kind:
        return None
    cache = meta.get("cache", {})
    if any(cache.get(f) != want[f] for f in ("version", "fingerprint", "feature_dim")):
        return None
    return _load(paths, meta)


def content_keys(sha256: list[str]) -> np.ndarray:
    """The first 64 bits of each row's content SHA-256."""
    if not sha256:
        return np.zeros(0, np.uint64)
    return np.frombuffer(bytes.fromhex("".join(s[:16] for s in sha256)), ">u8").astype(np.uint64)


def match_rows(
    slot_keys: np.ndarray, slot_rows: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (with content ``keys``) matched to the live slots of an index by content:
    ``(new slot rows, rows with no slot, slots with no row)``; the same content twice
    takes two slots."""
    free: dict[int, list[int]] = {}
    live = np.flatnonzero(slot_rows >= 0)
    for slot, key in zip(live.tolist(), slot_keys[live].tolist()):
        free.setdefault(key, []).append(slot)
    rows_of = np.full(len(slot_rows), -1, np.int64)
    missing = []
    for row, key in enumerate(keys.tolist()):
        taken = free.get(key)
        if taken:
            rows_of[taken.pop()] = row
        else:
            missing.append(row)
    dead = [slot for slots in free.values() for slot in slots]
    return rows_of, np.asarray(missing, np.int64), np.asarray(sorted(dead), np.int64)


def _update(
    reader: CacheReader,
    previous: _Loaded,
    paths: tuple[Path, Path, Path],
    want: dict[str, Any],
    progress: bool | None,
) -> bool:
    """Bring ``previous`` to the cache's state by adding and removing rows; False (and
    nothing written) when a rebuild is due instead."""
    faiss = _faiss()
    from ..core.progress import progress_bar

    keys = content_keys(reader.sha256)
    rows_of, new_rows, dead = match_rows(previous.keys, previous.rows, keys)
    meta = previous.meta
    changed = meta["changed"] + len(new_rows) + len(dead)
    if changed > REBUILD_FRACTION * meta["trained_rows"] or len(reader) > (
        REBUILD_GROWTH * meta["trained_rows"]
    ):
        return False
    started = time.perf_counter()
    index = faiss.read_index(str(paths[0]))  # a copy: searches go on on the held one
    if len(dead):
        index.remove_ids(dead)
    first = len(rows_of)
    bar = progress_bar(len(new_rows), progress, "index")
    try:
        for start in range(0, len(new_rows), BLOCK_ROWS):
            pick = new_rows[start : start + BLOCK_ROWS]
            index.add_with_ids(
                normalize(reader.features(pick)), first + start + np.arange(len(pick))
            )
            bar.update(len(pick))
    finally:
        bar.close()
    slot_rows = np.concatenate([rows_of, new_rows])
    slot_keys = np.concatenate([previous.keys, keys[new_rows]])
    done = dict(meta, cache=want, changed=changed, live=int(index.ntotal))
    done["added"], done["removed"] = len(new_rows), len(dead)
    done["update_seconds"] = time.perf_counter() - started
    _write(index, slot_rows, slot_keys, paths, done)
    return True


def _build(
    reader: CacheReader,
    plan: IndexPlan,
    paths: tuple[Path, Path, Path],
    want: dict[str, Any],
    progress: bool | None,
) -> None:
    """Train on a sample, add every row in blocks, tune ``nprobe``, write."""
    faiss = _faiss()
    from ..core.progress import progress_bar

    started = time.perf_counter()
    n, dim = len(reader), reader.feature_dim
    rng = np.random.default_rng(0)
    train = normalize(reader.features(_sample_rows(n, min(n, TRAIN_PER_LIST * plan.nlist), rng)))
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    _train(index, train, plan.kind)
    probes_n = min(n, PROBE_QUERIES)
    if plan.kind in RERANKED:  # keep the probes' similarity to every row: re-ranking reads it
        probes_n = min(probes_n, max(32, TABLE_BYTES // (2 * n)))
    probe_rows = np.sort(rng.choice(n, probes_n, replace=False))
    probes = normalize(reader.features(probe_rows))
    table = np.zeros((probes_n, n if plan.kind in RERANKED else 0), np.float16)
    del train
    kk = 11  # the probe itself and its 10 neighbours
    best_s = np.full((len(probes), 0), -np.inf, np.float32)
    best_i = np.zeros((len(probes), 0), np.int64)
    bar = progress_bar(n, progress, "index")
    try:
        for rows, block in reader.batches(batch_size=BLOCK_ROWS):
            x = normalize(block)
            index.add_with_ids(x, rows.astype(np.int64))
            s = probes @ x.T
            if table.shape[1]:
                table[:, rows] = s
            best_s, best_i = merge_top_k(best_s, best_i, s, np.broadcast_to(rows, s.shape), kk)
            bar.update(len(rows))
    finally:
        bar.close()
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # row queries read their codes
    truth = [set(i.tolist()) - {r} for i, r in zip(best_i, probe_rows)]
    keys = content_keys(reader.sha256)
    loaded = _Loaded({"kind": plan.kind}, index, np.arange(n, dtype=np.int64), keys)
    nprobe, rerank, recall = _tune(loaded, table, probes, probe_rows, truth, plan.nlist)
    meta = {
        "version": ANN_VERSION,
        "kind": plan.kind,
        "factory": plan.factory,
        "nlist": plan.nlist,
        "nprobe": nprobe,
        "rerank": rerank,
        "recall": recall,
        "trained_rows": n,
        "changed": 0,
        "live": int(index.ntotal),
        "build_seconds": time.perf_counter() - started,
        "cache": want,
    }
    _write(index, loaded.rows, keys, paths, meta)


def _train(index: Any, train: np.ndarray, kind: str) -> None:
    """``index.train``; a PQ trains one thread (its many small k-means stall OpenMP
    threads on busy cores: 4.4 s on two threads against 0.3 s on one, 16 x 4-bit)."""
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    if kind == "ivf-pq":
        faiss.omp_set_num_threads(1)
    try:
        index.train(train)
    finally:
        faiss.omp_set_num_threads(threads)


def _sample_rows(n: int, count: int, rng: np.random.Generator, run: int = 1024) -> np.ndarray:
    """About ``count`` rows as random runs of ``run`` consecutive rows (cheap to read)."""
    if count >= n:
        return np.arange(n)
    starts = rng.choice(max(1, n // run), max(1, count // run), replace=False) * run
    return np.unique(np.concatenate([np.arange(s, min(n, s + run)) for s in starts]))


def _tune(
    loaded: _Loaded,
    table: np.ndarray,
    probes: np.ndarray,
    probe_rows: np.ndarray,
    truth: list[set[int]],
    nlist: int,
) -> tuple[int, int, float]:
    """The smallest ``nprobe`` (and ``ivf-pq``'s re-rank factor) reaching
    :data:`TARGET_RECALL` recall@10 on the probes: ``(nprobe, rerank, recall)``; else the
    best seen, once doubling ``nprobe`` stops helping (the codes' precision limits
    recall: 8-bit codes swap near-ties; probing every list would only cost time)."""
    best = (nlist, 0, 0.0)
    kind = loaded.meta["kind"]
    for rerank in {"ivf-pq": RERANK, "ivf-sq8": (0, *RERANK)}.get(kind, (0,)):
        nprobe, previous = 1, -1.0
        while True:
            found = _ann_query(
                loaded, probes, 10, None, _table_rescore(table), nprobe, rerank, probe_rows
            )
            _, got = _padded(found, len(probes), 10)
            hit = [len(t & set(g.tolist())) / max(1, len(t)) for t, g in zip(truth, got)]
            recall = float(np.mean(hit))
            if recall > best[2]:
                best = (nprobe, rerank, recall)
            if recall >= TARGET_RECALL:
                return nprobe, rerank, recall
            if nprobe >= nlist or (nprobe >= 8 and recall < previous + PLATEAU):
                break
            nprobe, previous = min(nlist, nprobe * 2), recall
    return best


def _table_rescore(table: np.ndarray) -> Rescore:
    """Exact similarities of the probes from the build's table."""
    return lambda q, rows: table[np.arange(len(rows))[:, None], np.maximum(rows, 0)].astype(
        np.float32
    )


def _reader_rescore(reader: CacheReader) -> Rescore:
    """Exact similarities read from the cache's features, all candidates in one read."""

    def rescore(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        wanted = np.unique(rows[rows >= 0])
        if not len(wanted):
            return np.zeros(rows.shape, np.float32)
        vectors = normalize(reader.features(wanted))
        return np.einsum("qkd,qd->qk", vectors[np.searchsorted(wanted, np.maximum(rows, 0))], q)

    return rescore


def _ann_query(
    loaded: _Loaded,
    q: np.ndarray,
    k: int,
    exclude: int | None,
    rescore: Rescore,
    nprobe: int,
    rerank: int = 0,
    excludes: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """faiss search, slots to rows, the excluded row dropped; with ``rerank``, R x k
    candidates re-ranked exactly from the cache's features."""
    faiss = _faiss()
    fetch = k + 1 + rerank * k
    sims, slots = loaded.index.search(q, fetch, params=faiss.SearchParametersIVF(nprobe=nprobe))
    rows = np.where(slots >= 0, loaded.rows[np.maximum(slots, 0)], -1)
    drop = np.full(len(q), -2 if exclude is None else exclude) if excludes is None else excludes
    rows[rows == drop[:, None]] = -1
    if rerank:  # 4-bit codes rank roughly: exact similarities of the candidates
        sims = rescore(q, rows)
    out = []
    for s, r in zip(sims, rows):
        live = r >= 0
        s, r = s[live], r[live]
        order = np.lexsort((r, -s))[:k]
        out.append((s[order].astype(np.float32), r[order]))
    return out


def _padded(found: Any, queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = np.full((queries, k), -np.inf, np.float32)
    rows = np.full((queries, k), -1, np.int64)
    for j, (s, r) in enumerate(found):
        sims[j, : len(s)], rows[j, : len(r)] = s, r
    return sims, rows


def _write(
    index: Any,
    slot_rows: np.ndarray,
    slot_keys: np.ndarray,
    paths: tuple[Path, Path, Path],
    meta: dict[str, Any],
) -> None:
    """Index, slot table, then identity, each under a fresh name renamed into place; the
    old identity goes first, so no state of the files is ever trusted half-written."""
    faiss = _faiss()
    meta = dict(meta, build=secrets.token_hex(8))
    paths[2].unlink(missing_ok=True)
    temporaries = [_temporary(p) for p in paths]
    try:
        faiss.write_index(index, str(temporaries[0]))
        with open(temporaries[1], "wb") as out:
            np.savez(out, build=np.array(meta["build"]), rows=slot_rows, keys=slot_keys)
        temporaries[2].write_text(json.dumps(meta))
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    _hold(paths[0], _Loaded(meta, index, slot_rows, slot_keys))
