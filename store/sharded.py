"""Shards of one dataset read as one cache: :class:`ShardedCache` is a
:class:`~.reader.CacheReader` whose rows are its shards' rows, one shard after another.

Shards must agree on every setting that decides or stores the features (the one check,
:meth:`~featcache.core.settings.CacheSettings.check`; only ``dataset_root`` may differ) and
hold no row twice. Class names are unified by name. Features are read from the shards a
request touches; :meth:`ShardedCache.batches` streams them shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DatasetError
from .format import guarded, read_rows
from .reader import CacheReader

_ROW_MARK = "#"
"""Array rows are recorded as ``x.npy#3``: their root is a file, not a folder."""


class ShardedCache(CacheReader):
    """Several caches of one dataset as one: rows concatenated in the order given.

    Raises :class:`~featcache.errors.SettingsMismatchError` naming the setting and the
    shard that differ, and :class:`~featcache.errors.DatasetError` for a row in two shards
    (the same path with the same content, or the same file by its full path).
    """

    def __init__(self, path: str | Path, shards: Sequence[str | Path | CacheReader]) -> None:
        # no CacheReader.__init__: there is no one file; the attributes are set here
        self.path = Path(path)
        self.readers = [s if isinstance(s, CacheReader) else CacheReader(s) for s in shards]
        if not self.readers:
            raise DatasetError(f"{self.path}: no shard")
        self.notes: list[str] = []
        first = self.readers[0]
        for reader in self.readers[1:]:
            same_root = replace(reader.settings, dataset_root=first.settings.dataset_root)
            first.settings.check(
                same_root,
                f"{self.path}: shard {reader.path} differs from {first.path}",
                ours=first.path.name,
                theirs=reader.path.name,
            )
            if reader.feature_dim != first.feature_dim:
                raise DatasetError(
                    f"{self.path}: shard {reader.path} has {reader.feature_dim} features per "
                    f"row, {first.path} {first.feature_dim}"
                )
        self.starts = np.cumsum([0, *(len(r) for r in self.readers)]).astype(np.int64)
        """Global row of each shard's first row (and the row count last)."""
        root, prefixes = self._roots()
        self.paths = [prefix + p for prefix, r in zip(prefixes, self.readers) for p in r.paths]
        self._check_rows()
        self.class_names = _unified_classes([r.class_names for r in self.readers])
        self.labels = np.concatenate([self._labels(r) for r in self.readers])
        self.split = np.concatenate([r.split for r in self.readers]).astype(np.uint8)
        self.sha256 = [sha for r in self.readers for sha in r.sha256]
        self.bad = [
            (prefix + p, why) for prefix, r in zip(prefixes, self.readers) for p, why in r.bad
        ]
        self.feature_dim = first.feature_dim
        self.dtype = first.dtype
        self.settings = replace(first.settings, dataset_root=root)
        self.attrs: dict[str, Any] = {
            **first.attrs,
            "dataset_root": root,
            "class_names": json.dumps(self.class_names),
        }

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def identity(self) -> tuple[int, int, int, int]:  # type: ignore[override]
        """``(0, digest, total bytes, digest)``: the digest is over every shard's
        ``(device, inode, size, mtime_ns)``, so anything built from this state of the
        shards (a search index) is rebuilt when any shard changes."""
        text = json.dumps([[str(r.path), *r.identity] for r in self.readers])
        digest = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
        return (0, digest, sum(r.identity[2] for r in self.readers), digest)

    @property
    def fingerprint(self) -> str:
        """The shards' fingerprint: they all have the same settings."""
        return self.readers[0].fingerprint

    def shard_rows(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard, positions in rows, shard rows)`` for every shard ``rows`` touch."""
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shard_of).tolist():
            at = np.flatnonzero(shard_of == shard)
            yield shard, at, rows[at] - self.starts[shard]

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 features of ``rows`` (all rows when None), read from their shards."""
        if rows is None:
            return np.concatenate([r.features() for r in self.readers])
        picked = self._checked(rows)
        out = np.empty((len(picked), self.feature_dim), np.float32)
        for shard, at, local in self.shard_rows(picked):
            out[at] = self.readers[shard].features(local)
        return out

    def view_features(self, rows: np.ndarray | None = None) -> np.ndarray:
        picked = np.arange(len(self)) if rows is None else self._checked(rows)
        out = np.empty((len(picked), self.views, self.feature_dim), np.float32)
        for shard, at, local in self.shard_rows(picked):
            out[at] = self.readers[shard].view_features(local)
        return out

    def view_pairs(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        picked = self._checked(rows)
        chosen = np.asarray(views, np.int64).reshape(-1)
        if chosen.shape != picked.shape:
            raise ValueError(f"{len(picked)} rows but {len(chosen)} views")
        out = np.empty((len(picked), self.feature_dim), np.float32)
        for shard, at, local in self.shard_rows(picked):
            out[at] = self.readers[shard].view_pairs(local, chosen[at])
        return out

    def batches(
        self,
        rows: np.ndarray | None = None,
        batch_size: int = 4096,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row indices, float32 features)`` batches of ``batch_size`` rows, in order or
        shuffled. A shard's file is opened when a batch first needs it and stays open for
        the rest of the pass; in order, the shards are read one after another."""
        chosen = self._ordered(rows, shuffle, seed)
        with ExitStack() as stack:
            handles: dict[int, h5py.File] = {}
            for start in range(0, len(chosen), batch_size):
                pick = chosen[start : start + batch_size]
                block = np.empty((len(pick), self.feature_dim), np.float32)
                for shard, at, local in self.shard_rows(pick):
                    reader = self.readers[shard]
                    if type(reader) is not CacheReader:  # a manifest named as a shard
                        block[at] = reader.features(local)
                        continue
                    if shard not in handles:
                        handles[shard] = stack.enter_context(reader._open())
                    with guarded(reader.path):
                        block[at] = read_rows(handles[shard]["features"], local)
                yield pick, block

    def _open(self) -> h5py.File:
        raise TypeError(f"{self.path}: a sharded cache has no one file to open")

    def _labels(self, reader: CacheReader) -> np.ndarray:
        """A shard's labels as indices into the unified class names (-1 stays -1)."""
        lookup = np.asarray([self.class_names.index(n) for n in reader.class_names] or [0])
        labels = reader.labels
        return np.where(labels >= 0, lookup[np.clip(labels, 0, len(lookup) - 1)], -1)

    def _roots(self) -> tuple[str, list[str]]:
        """The dataset root and what each shard's paths get in front. Shards of one root
        keep their paths; shards of several folders name rows relative to the folders'
        common parent (``one/cat/1.png``)."""
        roots = [r.settings.dataset_root for r in self.readers]
        same = [""] * len(roots)
        if len(set(roots)) == 1:
            return roots[0], same
        arrays = any(_ROW_MARK in p for r in self.readers for p in r.paths[:1])
        if arrays or not all(posixpath.isabs(root) for root in roots):
            self.notes.append(
                f"{self.path}: the shards' datasets are {', '.join(sorted(set(roots)))}; "
                f"paths are shown as each shard records them, under {roots[0]}"
            )
            return roots[0], same
        common = posixpath.commonpath(roots)
        prefixes = [posixpath.relpath(root, common) + "/" for root in roots]
        return common, ["" if p == "./" else p for p in prefixes]

    def _check_rows(self) -> None:
        """No row in two shards: the same full path, or the same recorded path with the
        same content (one folder extracted twice, a shard named twice under two names).
        The same content under other paths is a duplicate image, as in one cache."""
        if len(set(self.paths)) == len(self.paths):
            roots = {r.settings.dataset_root for r in self.readers}
            if len(roots) == 1:
                return  # one root: the full paths are the recorded paths
            recorded = [(p, sha) for r in self.readers for p, sha in zip(r.paths, r.sha256)]
            if len(set(recorded)) == len(recorded):
                return  # the usual case, in C; the loop below names the shards otherwise
        by_path: dict[str, int] = {}
        by_content: dict[tuple[str, str], int] = {}
        for shard, reader in enumerate(self.readers):
            start = int(self.starts[shard])
            for row, (path, sha) in enumerate(zip(reader.paths, reader.sha256)):
                first = by_path.setdefault(self.paths[start + row], shard)
                if first == shard:
                    first = by_content.setdefault((path, sha), shard)
                if first != shard:
                    raise DatasetError(
                        f"{self.path}: row {path!r} is in two shards: "
                        f"{self.readers[first].path} and {reader.path}"
                    )

    def info(self) -> dict[str, Any]:
        """``inspect``'s view of the whole dataset, with a row per shard under ``shards``."""
        out = super().info()
        out["feature_dim"] = self.feature_dim
        out["manifest"] = {"kind": "shards", "notes": list(self.notes)}
        out["shards"] = [
            {
                "path": str(r.path),
                "rows": len(r),
                "splits": {s: len(r.rows_of(s)) for s in ("train", "val", "test")},
                "bad": len(r.bad),
            }
            for r in self.readers
        ]
        return out


def _unified_classes(lists: Sequence[list[str]]) -> list[str]:
    """The shards' class names as one list: theirs when they all agree, else every name
    any shard has, sorted (as ``extract`` orders class folders)."""
    if all(names == lists[0] for names in lists):
        return list(lists[0])
    return sorted({name for names in lists for name in names})
