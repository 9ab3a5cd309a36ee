"""Train/val/test features from a cache, in memory or streamed from the HDF5 file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CacheError, DatasetError
from ..extractor.cache import CacheSettings, open_h5, read_rows
from ..extractor.splits import SPLIT_NAMES

DEFAULT_MEMORY_FRACTION = 0.25
"""Stream from disk when the features would take more than this share of free memory."""


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

    path: Path
    settings: CacheSettings
    attrs: dict[str, object]
    class_names: list[str]
    feature_dim: int
    dtype: np.dtype
    train: Split
    val: Split
    test: Split
    paths: list[str]
    notes: list[str] = field(default_factory=list)

    def features(self, split: Split) -> np.ndarray:
        """The split's features as one float32 array (reads only those rows)."""
        with open_h5(self.path) as handle:
            return read_rows(handle["features"], split.rows).astype(np.float32)

    def batches(
        self, split: Split, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(features, labels) batches read from disk; memory stays at a few batches."""
        order = np.arange(len(split))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(split))
        with open_h5(self.path) as handle:
            dataset = handle["features"]
            for start in range(0, len(order), batch_size):
                pick = order[start : start + batch_size]
                yield read_rows(dataset, split.rows[pick]).astype(np.float32), split.labels[pick]

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
    cache: str | os.PathLike[str], val_fraction: float = 0.2, seed: int = 0
) -> CachedSplits:
    """Read a cache's labels and splits, carving a val split from train if it has none.

    Raises :class:`CacheError` or :class:`DatasetError` for caches that cannot train
    a classifier: no labels, a single class, an empty train or test split.
    """
    path = Path(cache)
    with open_h5(path) as handle:
        labels = handle["labels"][:].astype(np.int64)
        split = handle["split"][:].astype(np.int64)
        paths = [str(p) for p in handle["paths"].asstr()[:]] if len(labels) else []
        settings = CacheSettings.from_attrs(handle.attrs)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
        import json

        class_names = json.loads(str(attrs.get("class_names", "[]")))
        feature_dim = int(handle["features"].shape[1])
        dtype = handle["features"].dtype
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
    notes: list[str] = []
    if len(labels) > labelled.sum():
        notes.append(f"{int((~labelled).sum())} unlabelled rows ignored")
    rows = {
        name: np.flatnonzero(labelled & (split == code)) for code, name in enumerate(SPLIT_NAMES)
    }
    for name in ("train", "test"):
        if len(rows[name]) == 0:
            raise DatasetError(
                f"{path}: the {name} split has no labelled rows; re-extract with a --split "
                f"that gives it a share"
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
    return CachedSplits(
        path,
        settings,
        attrs,
        class_names,
        feature_dim,
        dtype,
        parts["train"],
        parts["val"],
        parts["test"],
        paths,
        notes,
    )


def _carve(
    train: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of train rows into (train, val)."""
    if not 0 < fraction < 1:
        raise CacheError(f"val fraction {fraction} must be between 0 and 1")
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
