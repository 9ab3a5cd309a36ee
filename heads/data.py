"""Train/val/test features from a cache, in memory or streamed from the cache file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.splits import SPLIT_NAMES
from ..errors import DatasetError
from ..store import CacheReader, CacheSettings
from ..store.joint import CacheArg, Caches, JointCache, cache_paths
from ..store.opening import open_caches
from .options import DEFAULT_MEMORY_FRACTION, DEFAULT_SEED, DEFAULT_VAL_FRACTION, check_options

__all__ = [
    "CacheArg",
    "CachedSplits",
    "Caches",
    "JointCache",
    "Split",
    "cache_paths",
    "load_splits",
    "open_caches",
]


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

    reader: CacheReader
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
    tap: str | None = None,
) -> CachedSplits:
    """Read a cache's labels and splits, carving a val split from train if it has none.

    ``tap``: the features of a tap of one cache (``extract --taps``; ``a+b`` side by side).

    Several caches are joined by content hash (:class:`JointCache`): only the images in
    every cache, with the same class, are used, and the notes say how many were dropped.

    Raises :class:`CacheError` or :class:`DatasetError` for caches that cannot train
    a classifier: no labels, a single class, an empty train or test split.
    """
    check_options({"val_fraction": val_fraction, "seed": seed})
    reader = open_caches(cache, tap)
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
    notes: list[str] = list(getattr(reader, "notes", []))
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
