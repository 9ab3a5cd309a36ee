"""Train/val/test features from a cache, in memory or streamed from the cache file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..extractor.cache import CacheReader, CacheSettings
from ..extractor.splits import SPLIT_NAMES
from .options import DEFAULT_MEMORY_FRACTION, DEFAULT_SEED, DEFAULT_VAL_FRACTION, check_options

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


class JointCache:
    """Several caches of the same images as one: the rows present in every cache (matched
    by content hash, SHA-256), features concatenated in the order given.

    Labels, class names, paths and splits are the first cache's. Rows whose class differs
    between caches are dropped; a differing split takes the first cache's. :attr:`notes`
    says how many rows were dropped, and why. Duplicate images within a cache (same
    content) are paired in path order.
    """

    def __init__(self, paths: Sequence[CacheArg]) -> None:
        self.readers = [CacheReader(p) for p in paths]
        if len(self.readers) < 2:
            raise ValueError("JointCache needs two caches or more")
        first = self.readers[0]
        self.path = first.path.parent / "+".join(r.path.stem for r in self.readers)
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

    def __len__(self) -> int:
        return self.rows.shape[1]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the caches' fingerprints, in order."""
        joined = "+".join(r.fingerprint for r in self.readers)
        return hashlib.sha256(joined.encode()).hexdigest()

    def mask(self, split: str) -> np.ndarray:
        return self.split == SPLIT_NAMES.index(split)

    def rows_of(self, split: str, labelled: bool = False) -> np.ndarray:
        mask = self.mask(split) & (self.labels >= 0 if labelled else True)
        return np.flatnonzero(mask)

    def features(self, rows: np.ndarray | None = None, part: int | None = None) -> np.ndarray:
        """float32 features of joint ``rows`` (all when None): every cache's, concatenated,
        or only cache number ``part``'s."""
        picked = np.arange(len(self)) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        if len(picked) and (picked.min() < 0 or picked.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1} of {self.path}")
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
        chosen = np.arange(len(self)) if rows is None else np.asarray(rows, np.int64)
        if shuffle:
            chosen = chosen[np.random.default_rng(seed).permutation(len(chosen))]
        for start in range(0, len(chosen), batch_size):
            pick = chosen[start : start + batch_size]
            yield pick, self.features(pick)

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


def open_caches(caches: Caches) -> CacheReader | JointCache:
    """A :class:`CacheReader` for one cache, a :class:`JointCache` for several."""
    paths = cache_paths(caches)
    if len(paths) == 1:
        return CacheReader(paths[0])
    return JointCache(paths)


@dataclass
class Split:
    """Rows of one split: cache row indices and their labels."""

    rows: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class CachedSplits:
    """A labelled cache divided into train, val and test, features not yet loaded."""

    reader: CacheReader | JointCache
    train: Split
    val: Split
    test: Split
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def settings(self) -> CacheSettings:
        return self.reader.settings

    @property
    def attrs(self) -> dict[str, Any]:
        return self.reader.attrs

    @property
    def class_names(self) -> list[str]:
        return self.reader.class_names

    @property
    def feature_dim(self) -> int:
        return self.reader.feature_dim

    @property
    def dtype(self) -> np.dtype:
        return self.reader.dtype

    @property
    def paths(self) -> list[str]:
        return self.reader.paths

    def features(self, split: Split) -> np.ndarray:
        """The split's features as one float32 array (reads only those rows)."""
        return self.reader.features(split.rows)

    def batches(
        self, split: Split, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(features, labels) batches read from disk; memory stays at a few batches."""
        for rows, features in self.reader.batches(split.rows, batch_size, shuffle, seed):
            yield features, self.reader.labels[rows]

    def seen(self, split: Split) -> Split:
        """The rows of ``split`` whose class occurs in train (usable for early stopping)."""
        keep = np.isin(split.labels, np.unique(self.train.labels))
        return Split(split.rows[keep], split.labels[keep])

    def nbytes(self) -> int:
        """Bytes of float32 features of all three splits."""
        return (len(self.train) + len(self.val) + len(self.test)) * self.feature_dim * 4


def should_stream(splits: CachedSplits, stream: bool | None) -> bool:
    """Decide between loading the features and streaming them (None: automatic)."""
    if stream is not None:
        return stream
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    return splits.nbytes() > DEFAULT_MEMORY_FRACTION * available


def load_splits(
    cache: Caches,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
) -> CachedSplits:
    """Read a cache's labels and splits, carving a val split from train if it has none.

    Several caches are joined by content hash (:class:`JointCache`): only the images in
    every cache, with the same class, are used, and the notes say how many were dropped.

    Raises :class:`CacheError` or :class:`DatasetError` for caches that cannot train
    a classifier: no labels, a single class, an empty train or test split.
    """
    check_options({"val_fraction": val_fraction, "seed": seed})
    reader = open_caches(cache)
    path, labels, class_names = reader.path, reader.labels, reader.class_names
    labelled = labels >= 0
    if not labelled.any():
        raise DatasetError(
            f"{path}: the cache has no labelled rows (extract a class-folder dataset)"
        )
    present = np.unique(labels[labelled])
    if len(present) < 2:
        raise DatasetError(
            f"{path}: only one class ({class_names[present[0]]!r}); need two or more"
        )
    notes: list[str] = list(reader.notes) if isinstance(reader, JointCache) else []
    if len(labels) > labelled.sum():
        notes.append(f"{int((~labelled).sum())} unlabelled rows ignored")
    rows = {name: reader.rows_of(name, labelled=True) for name in SPLIT_NAMES}
    for name in ("train", "test"):
        if len(rows[name]) == 0:
            raise DatasetError(
                f"{path}: the {name} split has no labelled rows; re-extract with a split "
                "that gives it a share"
            )
    if len(rows["val"]) == 0:
        rows["train"], rows["val"] = _carve(rows["train"], labels, val_fraction, seed)
        notes.append(
            f"no val split in the cache: {len(rows['val'])} rows carved from train "
            f"(stratified, {val_fraction:g}, seed {seed})"
        )
    if len(rows["val"]) == 0:
        raise DatasetError(f"{path}: too few train rows per class to carve a val split")
    if len(np.unique(labels[rows["train"]])) < 2:
        raise DatasetError(f"{path}: the train split holds a single class")
    parts = {name: Split(r, labels[r]) for name, r in rows.items()}
    return CachedSplits(reader, parts["train"], parts["val"], parts["test"], notes)


def _carve(
    train: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of train rows into (train, val)."""
    rng = np.random.default_rng(seed)
    keep, carved = [], []
    for label in np.unique(labels[train]):
        members = train[labels[train] == label]
        members = members[rng.permutation(len(members))]
        count = round(fraction * len(members))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        carved.append(members[:count])
        keep.append(members[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(carved))
