"""Several caches of the same images read as one: :class:`JointCache` is a
:class:`~.reader.CacheReader` whose rows are the images every cache holds and whose features
are the caches' side by side (:func:`~.opening.open_caches` opens one cache or several
alike)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .reader import CacheReader

CacheArg = str | os.PathLike[str]
Caches = CacheArg | Sequence[CacheArg]
"""One cache, or several whose features are joined row by row (:class:`JointCache`)."""


def cache_paths(caches: Caches) -> list[Path]:
    """The cache paths of ``caches`` (one path or a sequence of them), at least one."""
    if isinstance(caches, str | os.PathLike):
        return [Path(caches)]
    paths = [Path(c) for c in caches]
    if not paths:
        raise DatasetError("no cache given")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise DatasetError(f"a cache is given twice: {', '.join(str(p) for p in paths)}")
    return paths


class JointCache(CacheReader):
    """Several caches of the same images as one: the rows present in every cache (matched
    by content hash, SHA-256), features concatenated in the order given.

    Labels, class names, paths and splits are the first cache's. Rows whose class differs
    between caches are dropped; a differing split takes the first cache's. :attr:`notes`
    says how many rows were dropped, and why. Duplicate images within a cache (same
    content) are paired in path order.
    """

    def __init__(
        self, caches: Sequence[CacheArg | CacheReader], path: CacheArg | None = None
    ) -> None:
        """``caches``: paths or opened readers (a :class:`~.sharded.ShardedCache` too);
        ``path``: the manifest naming them, else ``FIRST_FOLDER/a+b``."""
        # no CacheReader.__init__: there is no one file; the attributes are set here
        self.readers = [c if isinstance(c, CacheReader) else CacheReader(c) for c in caches]
        if len(self.readers) < 2:
            raise ValueError("JointCache needs two caches or more")
        first = self.readers[0]
        joined = first.path.parent / "+".join(r.path.stem for r in self.readers)
        self.path = joined if path is None else Path(path)
        self.notes: list[str] = []
        keyed = [_content_keys(r) for r in self.readers]
        shared = set(keyed[0])
        for keys in keyed[1:]:
            shared &= set(keys)
        for reader, keys in zip(self.readers, keyed):
            missing = len(keys) - len(shared)
            if missing:
                self.notes.append(
                    f"{reader.path}: {missing} of {len(reader)} rows not in every cache: dropped"
                )
        order = sorted(shared, key=lambda key: keyed[0][key])
        rows = np.asarray([[keys[key] for key in order] for keys in keyed], dtype=np.int64)
        rows = rows.reshape(len(self.readers), len(order))
        names = [
            np.asarray(r.label_names(rows[i]), dtype=object) for i, r in enumerate(self.readers)
        ]
        agree = np.ones(rows.shape[1], dtype=bool)
        for other in names[1:]:
            agree &= other == names[0]
        if not agree.all():
            self.notes.append(
                f"{int((~agree).sum())} shared rows dropped: their class differs between caches"
            )
        rows = rows[:, agree]
        splits = [r.split[rows[i]] for i, r in enumerate(self.readers)]
        moved = int(np.any([s != splits[0] for s in splits], axis=0).sum())
        if moved:
            self.notes.append(
                f"{moved} rows are in another split in a later cache: the first cache's "
                f"split ({first.path.name}) is used"
            )
        if rows.shape[1] == 0:
            raise DatasetError(
                f"{', '.join(str(r.path) for r in self.readers)}: no image is in every cache "
                "with the same class (rows are matched by content SHA-256)"
            )
        self.rows = rows
        """Row of each cache (axis 0) for each joint row (axis 1)."""
        self.widths = [r.feature_dim for r in self.readers]
        self.feature_dim = int(sum(self.widths))
        self.dtype = np.dtype(np.float32)
        self.settings = first.settings
        self.attrs = first.attrs
        self.class_names = first.class_names
        self.labels: np.ndarray = first.labels[rows[0]]
        self.split: np.ndarray = first.split[rows[0]]
        self.paths: list[str] = [first.paths[i] for i in rows[0].tolist()]
        self.sha256: list[str] = [first.sha256[i] for i in rows[0].tolist()]
        self.bad: list[tuple[str, str]] = first.bad

    def __len__(self) -> int:
        return self.rows.shape[1]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the caches' fingerprints, in order."""
        joined = "+".join(r.fingerprint for r in self.readers)
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def identity(self) -> tuple[int, int, int, int]:  # type: ignore[override]
        """``(0, digest, total bytes, digest)``, the digest over every cache's identity:
        anything built from this state (a search index) is rebuilt when one changes."""
        text = json.dumps([[str(r.path), *r.identity] for r in self.readers])
        digest = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
        return (0, digest, sum(r.identity[2] for r in self.readers), digest)

    @property
    def one_file(self) -> bool:
        """True when every part is read from one cache file (its taps side by side)."""
        return len({r.path for r in self.readers}) == 1

    @property
    def views(self) -> int:
        """Joined caches are read without their augmented views."""
        return 1

    def features(self, rows: np.ndarray | None = None, part: int | None = None) -> np.ndarray:
        """float32 features of joint ``rows`` (all when None): every cache's, concatenated,
        or only cache number ``part``'s."""
        picked = np.arange(len(self)) if rows is None else self._checked(rows)
        chosen = range(len(self.readers)) if part is None else [part]
        parts = [self.readers[i].features(self.rows[i][picked]) for i in chosen]
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    def batches(
        self,
        rows: np.ndarray | None = None,
        batch_size: int = 4096,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chosen = self._ordered(rows, shuffle, seed)
        for start in range(0, len(chosen), batch_size):
            pick = chosen[start : start + batch_size]
            yield pick, self.features(pick)

    def view_pairs(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """View 0 only (joined caches have no other views)."""
        if np.any(np.asarray(views) != 0):
            raise IndexError(f"views outside 0..0 of {self.path}")
        return self.features(rows)

    def label_names(self, rows: np.ndarray) -> list[str]:
        return self.readers[0].label_names(self.rows[0][rows])


def _content_keys(reader: CacheReader) -> dict[tuple[str, int], int]:
    """(SHA-256, occurrence) -> row: the n-th copy of an image in path order."""
    order = sorted(range(len(reader)), key=lambda row: reader.paths[row])
    seen: dict[str, int] = {}
    keys = {}
    for row in order:
        sha = reader.sha256[row]
        count = seen.get(sha, 0)
        seen[sha] = count + 1
        keys[(sha, count)] = row
    return keys


def stored_dtype(reader: CacheReader) -> np.dtype:
    """The type ``reader``'s features are stored in (joined caches read as float32: theirs
    when every part stores one type), so that a new image's features round as theirs did."""
    if isinstance(reader, JointCache):
        kinds = {np.dtype(r.dtype) for r in reader.readers}
        return kinds.pop() if len(kinds) == 1 else np.dtype(np.float32)
    return np.dtype(reader.dtype)


def one_backbone(reader: CacheReader, what: str) -> None:
    """Refuse ``what`` (an image query) on joined caches: no one backbone embeds for them
    (taps of one cache side by side are one backbone: its layers joined)."""
    if isinstance(reader, JointCache) and not reader.one_file:
        raise DatasetError(
            f"{reader.path}: {what} needs one backbone; these caches join "
            f"{len(reader.readers)} (search them by row, or search one of them)"
        )
