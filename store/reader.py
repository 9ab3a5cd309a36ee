"""Reading a cache: settings, labels, splits and paths up front; features on demand.

:class:`CacheReader` is the one way featcache reads a cache file; it never holds the file
open between calls, so a writer can replace the file at any time. What a user names as a
cache (a file or a manifest of several) is opened by :func:`~.opening.open_cache`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from ..core.options import MAIN_TAP
from ..core.settings import CacheSettings
from ..core.splits import SPLIT_NAMES
from ..errors import CacheChangedError
from .format import (
    BAD_FILES_ATTR,
    TAPS_GROUP,
    VIEWS_DATASET,
    bad_records,
    guarded,
    open_h5,
    plain_attrs,
    read_rows,
    strings,
    tap_order,
)


@dataclass(frozen=True)
class TapInfo:
    """One tap of a cache: the row dataset ``taps/LAYER`` (``features`` for ``main``)."""

    name: str
    layer: str
    pooling: str
    dim: int

    @property
    def dataset(self) -> str:
        return "features" if self.name == MAIN_TAP else f"{TAPS_GROUP}/{self.name}"


def _identity(handle: h5py.File) -> tuple[int, int, int, int]:
    """``(device, inode, size, mtime_ns)`` of an open HDF5 file, from its descriptor."""
    info = os.fstat(handle.id.get_vfd_handle())
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class CacheReader:
    """One cache file: everything but the features is read when it is opened.

    >>> cache = CacheReader("cache/mobilenet.h5")  # doctest: +SKIP
    >>> x = cache.features(cache.rows_of("train"))  # doctest: +SKIP
    """

    tap_name: str = MAIN_TAP
    """Which features this reader reads: ``main`` (``features``) or a tap's name."""
    tap_info: Mapping[str, TapInfo] = MappingProxyType({})
    """The cache's taps (``extract --taps``) by name (the layer's), in order; none for
    readers of several caches."""
    _dataset = "features"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open_h5(self.path) as handle, guarded(self.path):
            self.identity: tuple[int, int, int, int] = _identity(handle)
            """``(device, inode, size, mtime_ns)`` of the file this reader opened: a later
            read that finds another file there (a run rewrote the cache) raises
            :class:`~featcache.errors.CacheChangedError` instead of mixing the two."""
            self.attrs: dict[str, Any] = {
                k: v for k, v in plain_attrs(handle.attrs).items() if k != BAD_FILES_ATTR
            }
            self.settings = CacheSettings.from_attrs(handle.attrs)
            self.labels: np.ndarray = handle["labels"][:].astype(np.int64)
            self.split: np.ndarray = handle["split"][:].astype(np.uint8)
            self.paths: list[str] = strings(handle["paths"])
            self.sha256: list[str] = [v.decode() for v in handle["sha256"][:]]
            self.bad: list[tuple[str, str]] = bad_records(handle)
            features = handle["features"]
            self.feature_dim = int(features.shape[1])
            self.dtype = np.dtype(features.dtype)
            self.class_names: list[str] = json.loads(str(self.attrs.get("class_names", "[]")))
            self.tap_info = {
                name: TapInfo(
                    name,
                    str(handle[f"{TAPS_GROUP}/{name}"].attrs.get("layer", name)),
                    str(handle[f"{TAPS_GROUP}/{name}"].attrs.get("pooling", "")),
                    int(handle[f"{TAPS_GROUP}/{name}"].shape[1]),
                )
                for name in tap_order(handle)
            }

    @property
    def taps(self) -> list[str]:
        """Names of the cache's taps (``extract --taps``), not counting ``main``."""
        return list(self.tap_info)

    def tap(self, name: str) -> CacheReader:
        """This cache with the features of tap ``name`` (``main``: ``features``): its
        ``features``, ``batches``, ``feature_dim`` and ``settings`` are the tap's, with
        ``settings.layer`` the tap's layer, so that a head trained on them exports a model
        that ends at that layer. :class:`~featcache.errors.DatasetError` for a name the
        cache has not."""
        from ..errors import DatasetError

        if name == MAIN_TAP:
            return self
        info = self.tap_info.get(name)
        if info is None:
            known = ", ".join([MAIN_TAP, *self.tap_info])
            raise DatasetError(f"{self.path}: no tap {name!r}; the cache has {known}")
        view = copy.copy(self)
        view.tap_name = name
        view._dataset = info.dataset
        view.feature_dim = info.dim
        view.settings = replace(
            self.settings, layer=info.layer, feature_dim=info.dim, views=1, augment=(), taps=()
        )
        view.attrs = {**self.attrs, "layer": info.layer, "feature_dim": info.dim, "tap": name}
        view.attrs.pop("views", None)
        return view

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the settings that change the features, as the file records it (a
        tap's reader: with ``#tap=NAME``)."""
        recorded = str(self.attrs.get("fingerprint", ""))
        return recorded if self.tap_name == MAIN_TAP else f"{recorded}#tap={self.tap_name}"

    def mask(self, split: str) -> np.ndarray:
        """Boolean row mask of ``train``, ``val`` or ``test``."""
        return self.split == SPLIT_NAMES.index(split)

    def rows_of(self, split: str, labelled: bool = False) -> np.ndarray:
        """Row indices of a split (only labelled rows with ``labelled``)."""
        mask = self.mask(split) & (self.labels >= 0 if labelled else True)
        return np.flatnonzero(mask)

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 features of ``rows`` (all rows when None), reading only those rows."""
        picked = None if rows is None else self._checked(rows)
        with self._open() as handle, guarded(self.path):
            dataset = handle[self._dataset]
            if picked is None:
                return np.asarray(dataset[:], dtype=np.float32)
            return read_rows(dataset, picked).astype(np.float32)

    @property
    def views(self) -> int:
        """Embeddings per row: 1 (``features`` only) or ``K``, view 0 in ``features``."""
        return self.settings.views

    def view_features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(rows, views, D)``: view 0 (``features``) then the augmented views of
        ``rows`` (all rows when None); ``(rows, 1, D)`` for a cache without views."""
        plain = self.features(rows)
        if self.views == 1:
            return plain[:, None, :]
        picked = None if rows is None else self._checked(rows)
        with self._open() as handle, guarded(self.path):
            dataset = handle[VIEWS_DATASET]
            extra = dataset[:] if picked is None else read_rows(dataset, picked)
        return np.concatenate([plain[:, None, :], np.asarray(extra, np.float32)], axis=1)

    def view_pairs(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """float32 ``(len(rows), D)``: view ``views[i]`` of row ``rows[i]`` (view 0 from
        ``features``), reading only those views, not every view of the rows.

        Pairs are read a view at a time, its rows sorted and unique (what h5py's fancy
        indexing needs), in one open of the file. A chunk of the ``views`` dataset holds
        every view of its rows, so the disk still reads whole chunks; what this saves is
        copying the K - 1 views of each row out of them (measured in docs/views.md)."""
        picked = self._checked(rows)
        chosen = np.asarray(views, np.int64).reshape(-1)
        if chosen.shape != picked.shape:
            raise ValueError(f"{len(picked)} rows but {len(chosen)} views")
        if len(chosen) and (chosen.min() < 0 or chosen.max() >= self.views):
            raise IndexError(f"views outside 0..{self.views - 1} of {self.path}")
        out = np.empty((len(picked), self.feature_dim), np.float32)
        with self._open() as handle, guarded(self.path):
            for view in np.unique(chosen).tolist():
                at = np.flatnonzero(chosen == view)
                unique, inverse = np.unique(picked[at], return_inverse=True)
                if view == 0:
                    block = read_rows(handle[self._dataset], unique)
                else:
                    block = handle[VIEWS_DATASET][unique, view - 1]
                out[at] = block[inverse]
        return out

    def _open(self) -> h5py.File:
        """The cache file, checked to be the one this reader opened."""
        handle = open_h5(self.path)
        if _identity(handle) != self.identity:
            handle.close()
            raise CacheChangedError(
                f"{self.path}: the cache was rewritten since it was opened; open it again"
            )
        return handle

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as int64 indices; IndexError (the caller's mistake, not a damaged file)
        for any outside ``[0, len(self))``."""
        picked = np.asarray(rows, np.int64).reshape(-1)
        if len(picked) and (picked.min() < 0 or picked.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1} of {self.path}")
        return picked

    def batches(
        self,
        rows: np.ndarray | None = None,
        batch_size: int = 4096,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row indices, float32 features)`` batches streamed from disk, in order or
        shuffled; memory stays at one batch."""
        chosen = self._ordered(rows, shuffle, seed)  # a bad row is the caller's IndexError
        with self._open() as handle, guarded(self.path):
            dataset = handle[self._dataset]
            for start in range(0, len(chosen), batch_size):
                pick = chosen[start : start + batch_size]
                yield pick, read_rows(dataset, pick).astype(np.float32)

    def _ordered(self, rows: np.ndarray | None, shuffle: bool, seed: int) -> np.ndarray:
        """``rows`` (all when None), checked, in order or shuffled by ``seed``."""
        chosen = np.arange(len(self)) if rows is None else self._checked(rows)
        if shuffle:
            chosen = chosen[np.random.default_rng(seed).permutation(len(chosen))]
        return chosen

    def label_names(self, rows: np.ndarray) -> list[str]:
        """Class name of each row ("" for unlabelled rows)."""
        names = self.class_names
        return [names[v] if 0 <= v < len(names) else "" for v in self.labels[rows].tolist()]

    def info(self) -> dict[str, Any]:
        """What ``featcache inspect`` shows: rows, classes per split, bad files, settings."""
        classes = []
        for index, name in [*enumerate(self.class_names), (-1, "(unlabelled)")]:
            counts = {s: int(np.sum((self.labels == index) & self.mask(s))) for s in SPLIT_NAMES}
            if index >= 0 or any(counts.values()):
                total = sum(counts.values())
                classes.append({"class": name, "index": index, **counts, "total": total})
        return {
            "path": str(self.path),
            "rows": len(self.paths),
            "feature_dim": int(self.attrs.get("feature_dim", 0)),
            "splits": {s: int(np.sum(self.mask(s))) for s in SPLIT_NAMES},
            "classes": classes,
            "bad": [{"path": p, "reason": r} for p, r in self.bad],
            "settings": {k: v for k, v in self.attrs.items() if k != "class_names"},
            **(
                {"taps": [vars_of(info) for info in self.tap_info.values()]}
                if self.tap_info
                else {}
            ),
        }


@dataclass
class CacheData:
    """A cache loaded into numpy arrays."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    sha256: list[str]
    split: np.ndarray
    class_names: list[str]
    settings: CacheSettings
    attrs: dict[str, Any]
    bad: list[tuple[str, str]] = field(default_factory=list)

    def mask(self, split: str) -> np.ndarray:
        """Boolean row mask of ``train``, ``val`` or ``test``."""
        return self.split == SPLIT_NAMES.index(split)

    @property
    def train_mask(self) -> np.ndarray:
        return self.mask("train")

    @property
    def val_mask(self) -> np.ndarray:
        return self.mask("val")

    @property
    def test_mask(self) -> np.ndarray:
        return self.mask("test")


def vars_of(info: TapInfo) -> dict[str, Any]:
    """A tap as plain JSON (``inspect``)."""
    return {"name": info.name, "layer": info.layer, "pooling": info.pooling, "dim": info.dim}
