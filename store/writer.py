"""Crash-safe writing of a cache.

A cache is only ever replaced atomically: every checkpoint writes a complete file
next to it (``NAME.tmp-PID``), reopens it to check that it holds the rows meant, flushes
it to disk and renames it over the old one. A process killed at any moment therefore
leaves either the previous checkpoint or the new one, never a torn file; a checkpoint
that fails (a full disk, a copy that did not come out whole) leaves the previous file
as it was and raises :class:`CacheError`.

Each row records the stat its file had when it was hashed (``file_*`` datasets): for new
rows the one the read stage noted with the hash (:class:`~..known.Known`), for reused rows
whose content was hashed again under another stat, that one.
"""

from __future__ import annotations

import errno
import glob
import itertools
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from ..core.files import fresh_file
from ..core.options import DEFAULT_CHECKPOINT_SECONDS
from ..core.settings import CacheSettings
from ..errors import CacheError, SettingsMismatchError
from .format import (
    BAD_FILES_ATTR,
    FILE_STAT_DATASETS,
    FILE_STAT_DTYPE,
    FORMAT,
    FORMAT_VERSION,
    STRING,
    TAPS_GROUP,
    UNKNOWN_STAT,
    VIEWS_DATASET,
    bad_records,
    bad_records_json,
    damaged,
    file_stats,
    first_line,
    fsync_dir,
    guarded,
    is_disk_full,
    layout_problem,
    open_h5,
    read_rows,
    strings,
    tap_order,
    versions,
)
from .known import FileStat, Known

_COPY_CHUNK_BYTES = 32 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class _Pending:
    paths: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    classes: list[str | None] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    stats: list[tuple[int, int, int, int]] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    views: list[np.ndarray] = field(default_factory=list)
    taps: list[dict[str, np.ndarray]] = field(default_factory=list)
    nbytes: int = 0


def cached_settings(path: str | os.PathLike[str]) -> CacheSettings | None:
    """The settings an existing cache records (None when there is no file at ``path``);
    a file that is no readable cache raises :class:`CacheError`, as the writer would."""
    if not Path(path).exists():
        return None
    with open_h5(path) as handle, guarded(path):
        return CacheSettings.from_attrs(handle.attrs)


class CacheWriter:
    """Appends rows to a cache and commits them with atomic checkpoints.

    The caller holds the cache's lock. Rows of the existing file stay until
    :meth:`drop` marks them; nothing reaches the disk before :meth:`commit`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: CacheSettings,
        class_names: list[str],
        order: dict[str, int],
        overwrite: bool = False,
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
        max_pending_bytes: int = 256 << 20,
    ) -> None:
        self.path = Path(path)
        self.settings = settings
        self.class_names = list(class_names)
        self.order = order
        self.checkpoint_seconds = checkpoint_seconds
        self.max_pending_bytes = max_pending_bytes
        self.feature_dim = 0
        self.tap_dims: dict[str, int] = {}
        """Width of each tap (``taps/LAYER``), in order: the file's, else the first rows'."""
        self.created = _now()
        self._pending = _Pending()
        self._last_commit = time.monotonic()
        self._commit_cost = 0.0
        self._dirty = False
        self._legacy = False
        """The file keeps its bad-file records in the old ``bad/`` group: any write moves them,
        and a final commit that changes nothing else moves them when it can (see commit)."""
        for stale in self.path.parent.glob(glob.escape(self.path.name) + ".tmp-*"):
            if _leftover_checkpoint(stale):  # of a killed writer: we hold the cache's lock
                stale.unlink(missing_ok=True)
        self.base_paths: list[str] = []
        self.base_sha: list[str] = []
        self.base_split = np.zeros(0, np.uint8)
        self.base_labels = np.zeros(0, np.int32)
        self.base_stats = np.zeros(0, FILE_STAT_DTYPE)
        self.bad: dict[str, str] = {}
        self._known: Known | None = None
        self._base_classes: list[str] = list(class_names)
        self._has_base = self.path.exists() and not overwrite
        if self._has_base:
            self._load_base()
        self.keep = np.ones(len(self.base_paths), dtype=bool)
        self._base_rows = {path: row for row, path in enumerate(self.base_paths)}
        self._rewrite = not self._has_base or self._base_classes != self.class_names

    def _load_base(self) -> None:
        with open_h5(self.path) as handle, guarded(self.path):
            theirs = CacheSettings.from_attrs(handle.attrs)
            differ = theirs.differences(self.settings)
            if differ:
                raise SettingsMismatchError(
                    f"{self.path} was made with other settings: {'; '.join(differ)}. "
                    "overwrite replaces it (--overwrite), or write another output (-o)"
                )
            self.created = str(handle.attrs.get("created", self.created))
            self.feature_dim = int(handle.attrs.get("feature_dim", 0))
            self.tap_dims = {
                name: int(handle[f"{TAPS_GROUP}/{name}"].shape[1]) for name in tap_order(handle)
            }
            self.base_paths = strings(handle["paths"])
            self.base_sha = [v.decode() for v in handle["sha256"][:]]
            self.base_split = handle["split"][:].astype(np.uint8)
            self.base_labels = handle["labels"][:].astype(np.int32)
            self.base_stats = file_stats(handle)
            self._base_classes = json.loads(handle.attrs.get("class_names", "[]"))
            self.bad = dict(bad_records(handle))
            self._legacy = BAD_FILES_ATTR not in handle.attrs  # the bad/ group: move it

    # -- bookkeeping -----------------------------------------------------------------

    def index(self, rehash: bool = False) -> Known:
        """Path -> (SHA-256, class name) of the rows already in the file, with the stats
        recorded for them; the stats the read stage notes in it are written with the rows.
        ``rehash``: files are read and hashed whatever their stat."""
        rows = {
            path: (sha, self._base_classes[label] if label >= 0 else None)
            for path, sha, label in zip(self.base_paths, self.base_sha, self.base_labels.tolist())
        }
        stats = {
            path: FileStat(*stat)
            for path, stat in zip(self.base_paths, self.base_stats.tolist())
            if stat[0] >= 0
        }
        self._known = Known(rows, stats, rehash)
        return self._known

    def _stat_of(self, path: str, sha256: str) -> tuple[int, int, int, int]:
        """The stat noted when this content of ``path`` was hashed (unknown if none was)."""
        noted = self._known.hashed.pop(path, None) if self._known is not None else None
        if noted is None or noted[0] != sha256:  # (Ray's actors hash their own read)
            return UNKNOWN_STAT
        stat = noted[1]
        return (stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode)

    def _take_confirmed(self) -> None:
        """Record the stats under which cached rows were hashed again to the same content."""
        if self._known is None:
            return
        confirmed = self._known.confirmed
        while confirmed:
            try:  # popitem is atomic: reader threads may add entries meanwhile
                path, (sha, stat) = confirmed.popitem()
            except KeyError:
                break
            row = self._base_rows.get(path)
            if row is None or not self.keep[row] or self.base_sha[row] != sha:
                continue
            self.base_stats[row] = (stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode)
            self._dirty = True

    def kept_rows(self) -> Iterator[tuple[str, str, str | None, int]]:
        """``(path, sha256, class, split)`` of the existing rows not dropped."""
        classes = self._base_classes
        for row in np.flatnonzero(self.keep).tolist():
            label = int(self.base_labels[row])
            name = classes[label] if label >= 0 else None
            yield self.base_paths[row], self.base_sha[row], name, int(self.base_split[row])

    def drop(self, paths: Iterable[str]) -> None:
        """Drop existing rows (deleted or changed files)."""
        for path in paths:
            row = self._base_rows.get(path)
            if row is not None and self.keep[row]:
                self.keep[row] = False
                self._rewrite = self._dirty = True

    def forget_bad(self, keep: Iterable[str]) -> None:
        """Keep bad-file records only for these paths (the dataset's current files)."""
        keep = set(keep)
        before = len(self.bad)
        self.bad = {p: r for p, r in self.bad.items() if p in keep}
        self._dirty |= len(self.bad) != before

    def set_bad(self, path: str, reason: str | None) -> None:
        """Record (or, with None, clear) why a file could not be used."""
        if reason is not None and self._known is not None:
            self._known.hashed.pop(path, None)
        if self.bad.get(path) != reason:
            self._dirty = True
            if reason is None:
                self.bad.pop(path, None)
            else:
                self.bad[path] = reason

    def add(
        self,
        paths: list[str],
        sha256: list[str],
        classes: list[str | None],
        split: list[int],
        features: np.ndarray,
        views: np.ndarray | None = None,
        taps: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Queue new rows; commits by itself when a checkpoint is due.

        ``views``: ``(len(paths), views - 1, D)`` embeddings of the augmented views, for a
        cache whose settings have ``views > 1`` (and only then). ``taps``: layer ->
        ``(len(paths), dim)`` features of each tap, for a cache whose settings have taps
        (the same layers and widths for every batch)."""
        if features.ndim != 2 or len(features) != len(paths):
            raise ValueError("features must be (len(paths), D)")
        self._check_views(features, views)
        self._check_taps(len(paths), taps)
        if self.feature_dim and features.shape[1] != self.feature_dim:
            raise CacheError(
                f"{self.path}: features of width {features.shape[1]}, cache has {self.feature_dim}"
            )
        self.feature_dim = features.shape[1]
        pending = self._pending
        stored = features.astype(self.settings.dtype, copy=False)
        pending.paths += paths
        pending.sha256 += sha256
        pending.classes += classes
        pending.split += split
        pending.stats += [self._stat_of(path, sha) for path, sha in zip(paths, sha256)]
        pending.features.append(stored)
        pending.nbytes += stored.nbytes
        if views is not None:
            stored_views = views.astype(self.settings.dtype, copy=False)
            pending.views.append(stored_views)
            pending.nbytes += stored_views.nbytes
        if taps:
            stored_taps = {
                name: taps[name].astype(self.settings.dtype, copy=False) for name in self.tap_dims
            }
            pending.taps.append(stored_taps)
            pending.nbytes += sum(each.nbytes for each in stored_taps.values())
        self._dirty = True
        if self.due():
            self.commit()

    def _check_views(self, features: np.ndarray, views: np.ndarray | None) -> None:
        extra = self.settings.views - 1
        if extra == 0:
            if views is not None:
                raise ValueError("views given for a cache without views")
            return
        shape = (len(features), extra, features.shape[1])
        if views is None or views.shape != shape:
            got = "none" if views is None else str(views.shape)
            raise ValueError(f"views must be {shape}, got {got}")

    def _check_taps(self, rows: int, taps: Mapping[str, np.ndarray] | None) -> None:
        """Taps come exactly for a cache with taps, the same layers and widths each time."""
        if not self.settings.taps:
            if taps:
                raise ValueError("taps given for a cache without taps")
            return
        if not taps:
            raise ValueError(f"{self.path}: the cache has taps; features of its taps missing")
        dims = {name: int(array.shape[1]) for name, array in taps.items()}
        if any(array.ndim != 2 or len(array) != rows for array in taps.values()):
            raise ValueError("taps must be (len(paths), dim) each")
        if self.tap_dims and dims != self.tap_dims:
            have = ", ".join(f"{n} {d}" for n, d in self.tap_dims.items())
            got = ", ".join(f"{n} {d}" for n, d in dims.items())
            raise CacheError(f"{self.path}: taps {got}; the cache has taps {have}")
        self.tap_dims = dims

    def due(self) -> bool:
        """True when the pending rows should be checkpointed now."""
        if not self._pending.paths:
            return False
        waited = time.monotonic() - self._last_commit
        interval = max(self.checkpoint_seconds, 10.0 * self._commit_cost)
        return waited >= interval or self._pending.nbytes >= self.max_pending_bytes

    # -- committing ------------------------------------------------------------------

    def commit(self, final: bool = False) -> bool:
        """Write everything so far as the new cache file; False when nothing changed."""
        self._take_confirmed()
        nothing_new = self._has_base and not self._dirty and not self._rewrite
        upgrade_only = nothing_new and (not final or self._in_order())
        if upgrade_only and not (final and self._legacy and _writable(self.path)):
            return False
        if not self._has_base and not self._pending.paths and not final:
            return False
        started = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_temporary(self.path)
        try:
            try:
                if self._rewrite or (final and not self._in_order()):
                    rows = self._write_fresh(tmp)
                else:
                    rows = self._write_appended(tmp)
                self._verify(tmp, rows)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            except (OSError, RuntimeError) as exc:  # HDF5 reports failed flushes as either
                if upgrade_only and isinstance(exc, OSError):  # only the layout upgrade
                    return False  # failed: the file reads as it is
                if isinstance(exc, RuntimeError) and not is_disk_full(exc):
                    raise
                raise self._write_failed(exc) from None
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        self._after_commit()
        self._commit_cost = time.monotonic() - started
        self._last_commit = time.monotonic()
        return True

    def _verify(self, tmp: Path, rows: int) -> None:
        """Reopen the new file: its datasets must fit together and hold ``rows`` rows, and
        its last row must read back (past its chunk's checksum)."""
        with h5py.File(tmp, "r") as handle:
            problem = layout_problem(handle, rows)
            if problem is None and rows:
                handle["features"][rows - 1]
                handle["paths"][rows - 1]
                if VIEWS_DATASET in handle:
                    handle[VIEWS_DATASET][rows - 1]
                for name in tap_order(handle):
                    handle[f"{TAPS_GROUP}/{name}"][rows - 1]
        if problem is not None:
            raise CacheError(
                f"{self.path}: the new checkpoint did not come out whole ({problem}); "
                "the previous cache file is unchanged"
            )

    def _write_failed(self, exc: BaseException) -> CacheError:
        """The error for a checkpoint that could not be written (the old file stays)."""
        text = first_line(exc)
        pending = len(self._pending.paths)
        kept = (
            "the previous cache file is unchanged"
            if self.path.exists()
            else "no cache file was written"
        )
        if is_disk_full(exc):
            quota = getattr(exc, "errno", None) == errno.EDQUOT or "quota" in str(exc).lower()
            reason = os.strerror(errno.EDQUOT if quota else errno.ENOSPC)
            return CacheError(
                f"disk full: could not write {self.path} ({reason}); {kept}, the {pending} "
                "rows embedded since are not saved; free space and rerun to resume"
            )
        return CacheError(f"could not write {self.path} ({text}); {kept}")

    def _in_order(self) -> bool:
        keys = [self.order.get(p, -1) for p, k in zip(self.base_paths, self.keep) if k]
        keys += [self.order.get(p, -1) for p in self._pending.paths]
        return all(a < b for a, b in itertools.pairwise(keys))

    def _after_commit(self) -> None:
        with h5py.File(self.path, "r") as handle:
            self.base_paths = strings(handle["paths"])
            self.base_sha = [v.decode() for v in handle["sha256"][:]]
            self.base_split = handle["split"][:].astype(np.uint8)
            self.base_labels = handle["labels"][:].astype(np.int32)
            self.base_stats = file_stats(handle)
        self.keep = np.ones(len(self.base_paths), dtype=bool)
        self._base_rows = {path: row for row, path in enumerate(self.base_paths)}
        self._pending = _Pending()
        self._base_classes = list(self.class_names)
        self._has_base = True
        self._rewrite = False
        self._dirty = False
        self._legacy = False

    def _labels(self, classes: Iterable[str | None]) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.class_names)}
        # a class that no longer exists (its rows are re-embedded later in the run) -> -1
        return np.asarray([lookup.get(c, -1) if c is not None else -1 for c in classes], np.int32)

    def _root_attrs(self, handle: h5py.File, rows: int) -> None:
        attrs = handle.attrs
        for key, value in self.settings.to_attrs().items():
            attrs[key] = value
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["feature_dim"] = int(self.feature_dim)
        attrs["class_names"] = json.dumps(self.class_names)
        attrs["rows"] = int(rows)
        attrs["created"] = self.created
        attrs["updated"] = _now()
        for key, value in versions().items():
            attrs[key] = value

    def _write_bad(self, handle: h5py.File) -> None:
        """The bad-file records as the root attribute; the ``bad/`` group of a file written
        before goes (its datasets are not rows: Hugging Face ``datasets`` could not load it)."""
        if "bad" in handle:
            del handle["bad"]
        handle.attrs[BAD_FILES_ATTR] = bad_records_json(self.bad.items())

    def _create(self, handle: h5py.File, rows: int) -> None:
        dim = max(int(self.feature_dim), 1)
        chunk_rows = max(1, min(4096, (1 << 20) // (dim * np.dtype(self.settings.dtype).itemsize)))
        handle.create_dataset(
            "features",
            shape=(rows, self.feature_dim),
            dtype=self.settings.dtype,
            maxshape=(None, self.feature_dim),
            chunks=(chunk_rows, dim) if self.feature_dim else None,
            fletcher32=bool(self.feature_dim),
        )
        self._create_views(handle, rows)
        for name in self.tap_dims:
            self._create_tap(handle, name, rows)
        for name, dtype in (
            ("labels", np.int32),
            ("paths", STRING),
            ("sha256", "S64"),
            ("split", np.uint8),
        ):
            handle.create_dataset(
                name,
                shape=(rows,),
                dtype=dtype,
                maxshape=(None,),
                chunks=(4096,),
                fletcher32=name != "paths",  # HDF5 filters no variable-length strings
            )

    def _create_views(self, handle: h5py.File, rows: int) -> None:
        """The ``views`` dataset, for settings with more than one view."""
        extra = self.settings.views - 1
        if extra == 0:
            return
        dim = max(int(self.feature_dim), 1)
        row_bytes = extra * dim * np.dtype(self.settings.dtype).itemsize
        handle.create_dataset(
            VIEWS_DATASET,
            shape=(rows, extra, self.feature_dim),
            dtype=self.settings.dtype,
            maxshape=(None, extra, self.feature_dim),
            chunks=(max(1, min(4096, (1 << 20) // row_bytes)), extra, dim)
            if self.feature_dim
            else None,
            fletcher32=bool(self.feature_dim),
        )

    def _create_tap(self, handle: h5py.File, name: str, rows: int) -> None:
        """The row dataset ``taps/LAYER``, with what it is in its attributes."""
        dim = self.tap_dims[name]
        chunk_rows = max(1, min(4096, (1 << 20) // (dim * np.dtype(self.settings.dtype).itemsize)))
        dataset = handle.create_dataset(
            f"{TAPS_GROUP}/{name}",
            shape=(rows, dim),
            dtype=self.settings.dtype,
            maxshape=(None, dim),
            chunks=(chunk_rows, dim),
            fletcher32=True,
        )
        dataset.attrs["layer"] = name
        dataset.attrs["pooling"] = self.settings.pooling
        dataset.attrs["dim"] = dim
        dataset.attrs["index"] = list(self.tap_dims).index(name)

    def _new_tap(self, name: str) -> np.ndarray:
        if self._pending.taps:
            return np.concatenate([each[name] for each in self._pending.taps])
        return np.zeros((0, self.tap_dims[name]), self.settings.dtype)

    def _new_views(self) -> np.ndarray:
        extra = self.settings.views - 1
        if self._pending.views:
            return np.concatenate(self._pending.views)
        return np.zeros((0, extra, self.feature_dim), self.settings.dtype)

    def _write_stats(self, handle: h5py.File, stats: np.ndarray) -> None:
        """The ``file_*`` datasets, made or resized to hold ``stats`` (a version 1 file
        being appended to has none yet)."""
        for name, column in FILE_STAT_DATASETS.items():
            if name in handle:
                handle[name].resize(len(stats), axis=0)
            else:
                handle.create_dataset(
                    name,
                    shape=(len(stats),),
                    dtype=FILE_STAT_DTYPE[column],
                    maxshape=(None,),
                    chunks=(4096,),
                    fletcher32=True,
                )
            handle[name][:] = stats[column]

    def _write_fresh(self, tmp: Path) -> int:
        """Rewrite the whole file in dataset order: kept old rows merged with new rows.
        Returns the number of rows written."""
        pending = self._pending
        kept = np.flatnonzero(self.keep) if self._has_base else np.zeros(0, np.int64)
        base_paths = [self.base_paths[i] for i in kept]
        keys = [self.order.get(p, len(self.order)) for p in base_paths]
        keys += [self.order.get(p, len(self.order)) for p in pending.paths]
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        n_base = len(kept)
        rows = len(order)
        new_features = (
            np.concatenate(pending.features)
            if pending.features
            else np.zeros((0, self.feature_dim), self.settings.dtype)
        )
        new_views = self._new_views() if self.settings.views > 1 else None
        new_taps = {name: self._new_tap(name) for name in self.tap_dims}
        old_classes: list[str | None] = []
        old_labels = np.zeros(0, np.int32)
        old: h5py.File | None = None
        if self._has_base:
            with guarded(self.path):
                old = h5py.File(self.path, "r")
        try:
            if old is not None:
                old_labels = self.base_labels
                old_classes = [self._base_classes[v] if v >= 0 else None for v in old_labels[kept]]
            all_paths = base_paths + pending.paths
            all_sha = [self.base_sha[i] for i in kept] + pending.sha256
            all_classes = old_classes + pending.classes
            all_split = np.concatenate([self.base_split[kept], np.asarray(pending.split, np.uint8)])
            all_stats = np.concatenate([self.base_stats[kept], self._pending_stats()])
            with _writing(tmp, "w") as out:
                self._create(out, rows)
                out["labels"][:] = self._labels(all_classes[i] for i in order)
                out["paths"][:] = [all_paths[i] for i in order]
                out["sha256"][:] = np.asarray([all_sha[i] for i in order], dtype="S64")
                out["split"][:] = all_split[order]
                self._write_stats(out, all_stats[order])
                row_bytes = 4 * (  # views and taps copied alongside
                    self.feature_dim * self.settings.views + sum(self.tap_dims.values())
                )
                step = max(1, _COPY_CHUNK_BYTES // max(1, row_bytes))
                for start in range(0, rows, step):
                    picks = order[start : start + step]
                    block = np.empty((len(picks), self.feature_dim), self.settings.dtype)
                    from_old = picks < n_base
                    if from_old.any() and old is not None:
                        source_rows = kept[picks[from_old]]
                        with guarded(self.path):  # a checksum that fails: the old file
                            block[from_old] = read_rows(old["features"], source_rows)
                    if (~from_old).any():
                        block[~from_old] = new_features[picks[~from_old] - n_base]
                    out["features"][start : start + len(picks)] = block
                    if new_views is not None:
                        self._copy_views(out, old, kept, picks, n_base, start, new_views)
                    for name, new_tap in new_taps.items():
                        self._copy_tap(out, old, name, kept, picks, n_base, start, new_tap)
                self._write_bad(out)
                self._root_attrs(out, rows)
        finally:
            if old is not None:
                old.close()
        return rows

    def _copy_views(
        self,
        out: h5py.File,
        old: h5py.File | None,
        kept: np.ndarray,
        picks: np.ndarray,
        n_base: int,
        start: int,
        new_views: np.ndarray,
    ) -> None:
        """Views of the rows ``picks`` (old rows from the old file, new ones pending)."""
        extra = self.settings.views - 1
        block = np.empty((len(picks), extra, self.feature_dim), self.settings.dtype)
        from_old = picks < n_base
        if from_old.any() and old is not None:
            with guarded(self.path):
                block[from_old] = read_rows(old[VIEWS_DATASET], kept[picks[from_old]])
        if (~from_old).any():
            block[~from_old] = new_views[picks[~from_old] - n_base]
        out[VIEWS_DATASET][start : start + len(picks)] = block

    def _copy_tap(
        self,
        out: h5py.File,
        old: h5py.File | None,
        name: str,
        kept: np.ndarray,
        picks: np.ndarray,
        n_base: int,
        start: int,
        new_tap: np.ndarray,
    ) -> None:
        """Tap ``name`` of the rows ``picks`` (old rows from the old file, new ones pending)."""
        key = f"{TAPS_GROUP}/{name}"
        block = np.empty((len(picks), self.tap_dims[name]), self.settings.dtype)
        from_old = picks < n_base
        if from_old.any() and old is not None:
            with guarded(self.path):
                block[from_old] = read_rows(old[key], kept[picks[from_old]])
        if (~from_old).any():
            block[~from_old] = new_tap[picks[~from_old] - n_base]
        out[key][start : start + len(picks)] = block

    def _write_appended(self, tmp: Path) -> int:
        """Copy the current file and append the pending rows to the copy. Returns the
        number of rows the copy should now hold."""
        pending = self._pending
        rows = len(self.base_paths) + len(pending.paths)
        shutil.copyfile(self.path, tmp)
        try:
            with _writing(tmp, "r+") as out:
                start = out["paths"].shape[0]
                if pending.paths:
                    for name in ("features", "labels", "paths", "sha256", "split"):
                        out[name].resize(start + len(pending.paths), axis=0)
                    end = start + len(pending.paths)
                    out["features"][start:end] = np.concatenate(pending.features)
                    out["labels"][start:end] = self._labels(pending.classes)
                    out["paths"][start:end] = pending.paths
                    out["sha256"][start:end] = np.asarray(pending.sha256, dtype="S64")
                    out["split"][start:end] = np.asarray(pending.split, np.uint8)
                    if VIEWS_DATASET in out:
                        out[VIEWS_DATASET].resize(end, axis=0)
                        out[VIEWS_DATASET][start:end] = self._new_views()
                    for name in self.tap_dims:
                        key = f"{TAPS_GROUP}/{name}"
                        if key not in out:  # a cache of bad files only until now
                            self._create_tap(out, name, start)
                        out[key].resize(end, axis=0)
                        out[key][start:end] = self._new_tap(name)
                self._write_stats(out, np.concatenate([self.base_stats, self._pending_stats()]))
                self._write_bad(out)
                self._root_attrs(out, start + len(pending.paths))
        except (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            if is_disk_full(exc):
                raise
            raise damaged(self.path, first_line(exc)) from None
        return rows

    def _pending_stats(self) -> np.ndarray:
        return np.asarray(self._pending.stats, FILE_STAT_DTYPE).reshape(-1)


def _fresh_temporary(path: Path) -> Path:
    """A new empty file ``NAME.tmp-XXXXXXXX`` next to ``path`` (:func:`fresh_file`)."""
    return fresh_file(path.parent, f"{path.name}.tmp-")


def _leftover_checkpoint(path: Path) -> bool:
    """True for what a killed writer leaves: a regular file (not a link or a folder), empty
    or an HDF5 file. Anything else of that name is not ours to remove."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head in (b"", HDF5_SIGNATURE)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@contextmanager
def _writing(tmp: Path, mode: str) -> Iterator[h5py.File]:
    """``h5py.File(tmp, mode)`` for writing a checkpoint, so that a full disk is an
    ``OSError`` of the write that hit it, and the file still closes.

    Without a chunk cache each write reaches the file at once: HDF5 would otherwise
    write cached chunks when the file is closed, and a close that fails leaves HDF5 with
    a file it can neither flush nor close (the process crashes when it ends).
    """
    handle = h5py.File(tmp, mode, rdcc_nbytes=0)
    try:
        yield handle
        handle.flush()
    except BaseException:
        try:  # give the space back, so that closing can write what HDF5 still holds
            os.truncate(tmp, 0)
        except OSError:
            pass
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass  # (closing again would crash HDF5)
        raise
    handle.close()


def _writable(path: Path) -> bool:
    """Whether ``path`` and its folder may be written (a rerun that changes nothing leaves a
    read-only cache alone rather than fail on upgrading its layout)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
