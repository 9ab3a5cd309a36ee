"""Training heads on cached augmented views, and FroFA-style feature augmentation.

A cache made with ``extract --views K`` holds K embeddings per image (view 0 the plain
image). ``views`` (:data:`~.options.VIEW_MODES`) says what the training rows are: view 0
(``plain``), one random view per row and epoch (``one``, the dense head), every view as
a row (``all``: an epoch is K times the rows and steps) or the mean of the views (``mean``).
Val, test and early stopping always use view 0, as predictions on new images do; with
``mean`` the head trains on averages (a narrower spread than one view, and ``standardize``
statistics from the means) but is scored on single plain views.

``feature_augment`` (the dense head) is feature-space augmentation in the spirit of FroFA
(Baer et al., "Frozen Feature Augmentation for Few-Shot Image Classification", CVPR 2024):
every training row, every epoch, has every element (row and channel) multiplied by its own
factor in ``1 +- s`` (contrast-like) and shifted by its own amount in ``+- s`` times the
channel's standard deviation (brightness-like), seeded by the head's seed and the epoch.
FroFA's most consistent winner was brightness alone (an additive shift, strongest with a
value per channel, c2FroFA); this multiplies as well, and draws per element, not per
channel. It is kept as measured (RESULTS section 18).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core.options import invalid
from ..errors import DatasetError
from .baselines import fit_baseline, make_baseline
from .data import CachedSplits, JointCache
from .dense import DenseHead
from .options import DEFAULT_FEATURE_BATCH_SIZE, DEFAULT_MEMORY_FRACTION, HeadOptions

__all__ = ["TrainViews", "check_view_training", "feature_augment", "fit_views", "uses_views"]


def uses_views(options: HeadOptions) -> bool:
    """Whether training goes through this module (views other than ``plain``, or
    feature augmentation)."""
    return options.views != "plain" or options.feature_augment > 0


def check_view_training(splits: CachedSplits, options: HeadOptions) -> None:
    """Refuse, before any training, what views and feature augmentation cannot do."""
    mode = options.views
    if options.head != "dense":
        if mode == "one":
            raise invalid(
                "views",
                mode,
                "draws a view per epoch: the dense head only (other heads take all or mean)",
            )
        if options.feature_augment > 0:
            raise invalid(
                "feature_augment",
                options.feature_augment,
                "augments the rows every epoch: the dense head only",
            )
    if mode == "plain":
        return
    if isinstance(splits.reader, JointCache):
        raise DatasetError(f"views {mode!r}: heads on several caches train on view 0 only")
    if splits.reader.views == 1:
        raise DatasetError(
            f"{splits.path}: views {mode!r}: the cache holds one view per image; extract it "
            "with --views K (2 or more)"
        )


def feature_augment(
    x: np.ndarray, strength: float, std: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Feature augmentation of a batch: every element (row and channel) multiplied by its
    own factor in ``1 +- strength`` and shifted by its own ``+- strength * std`` (std: the
    channel's over the training rows). Unlike FroFA's brightness, not additive alone and
    not one value per channel (see the module's docstring)."""
    scale = rng.uniform(1.0 - strength, 1.0 + strength, x.shape).astype(np.float32)
    shift = rng.uniform(-strength, strength, x.shape).astype(np.float32) * std
    return np.asarray(x * scale + shift, np.float32)


class TrainViews:
    """The training rows of a split under a view mode: in memory, or read from the cache
    a batch at a time (``stream``)."""

    def __init__(self, splits: CachedSplits, mode: str, stream: bool) -> None:
        self.splits = splits
        self.mode = mode
        self.rows = splits.train.rows
        self.count = 1 if mode == "plain" else int(getattr(splits.reader, "views", 1))
        self._memory: np.ndarray | None = None
        self._block: tuple[np.ndarray, np.ndarray] | None = None
        if not stream:
            self._memory = self._load()

    def _load(self) -> np.ndarray:
        """Every train row's views in memory, read a block at a time: ``(N, 1, D)`` means
        for ``mean`` (the only rows it trains on), ``(N, count, D)`` otherwise."""
        kept = 1 if self.mode == "mean" else self.count
        out = np.empty((len(self.rows), kept, self.splits.feature_dim), np.float32)
        step = DEFAULT_FEATURE_BATCH_SIZE
        for start in range(0, len(self.rows), step):
            block = self._read(np.arange(start, min(start + step, len(self.rows))))
            out[start : start + len(block)] = (
                block.mean(axis=1, keepdims=True) if self.mode == "mean" else block
            )
        return out

    @property
    def labels(self) -> np.ndarray:
        """Labels of one epoch's rows (each row ``count`` times with ``all``)."""
        labels = self.splits.train.labels
        return np.repeat(labels, self.count) if self.mode == "all" else labels

    def _read(self, picks: np.ndarray) -> np.ndarray:
        """``(len(picks), count, D)`` views of the train rows ``picks``."""
        if self._memory is not None:
            return self._memory[picks]
        rows = self.rows[picks]
        reader = self.splits.reader
        if self.count == 1:
            return reader.features(rows)[:, None, :]
        assert not isinstance(reader, JointCache)
        return reader.view_features(rows)

    def take(self, entries: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The ``(len(entries), D)`` feature rows of one batch of epoch entries (``rng``
        draws ``one`` views). Reads only the picked rows: in memory it indexes the
        (row, view) pairs, never a copy of every view of every entry; streamed it reads
        only those pairs (:meth:`~..extractor.cache.CacheReader.view_pairs`), every view
        of the rows for ``mean`` alone."""
        entries = np.asarray(entries, np.int64)
        if self.mode == "all":
            picks, views = entries // self.count, entries % self.count
        else:
            picks, views = entries, np.zeros(len(entries), np.int64)
            if self.mode == "one" and rng is not None:
                views = rng.integers(0, self.count, len(entries))
        if self._memory is not None:
            if self.mode == "all" and len(entries) == len(self):
                if np.array_equal(entries, np.arange(len(self))):
                    return self._memory.reshape(-1, self._memory.shape[-1])  # a view
            return self._memory[picks, 0 if self.mode == "mean" else views]
        if self._block is not None:  # streamed ``all``: the block being walked
            rows, block = self._block
            at = np.minimum(np.searchsorted(rows, picks), len(rows) - 1)
            if np.array_equal(rows[at], picks):
                return block[at, views]
        reader = self.splits.reader
        if self.mode != "mean" and self.count > 1 and not isinstance(reader, JointCache):
            return reader.view_pairs(self.rows[picks], views)  # one view per entry, not K
        unique, inverse = np.unique(picks, return_inverse=True)
        stacked = self._read(unique)  # (unique rows, count, D): one batch
        if self.mode == "mean":
            return stacked.mean(axis=1)[inverse]
        return stacked[inverse, views]

    def __len__(self) -> int:
        """Rows of one epoch."""
        return len(self.rows) * (self.count if self.mode == "all" else 1)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) per channel of every row an epoch can draw (every view for
        ``one`` and ``all``)."""
        total = np.zeros(self.splits.feature_dim)
        squares = np.zeros(self.splits.feature_dim)
        seen = 0
        step = DEFAULT_FEATURE_BATCH_SIZE
        for start in range(0, len(self.rows), step):
            stacked = self._read(np.arange(start, min(start + step, len(self.rows))))
            if self.mode == "mean":
                stacked = stacked.mean(axis=1, keepdims=True)
            elif self.mode == "plain":
                stacked = stacked[:, :1]
            flat = stacked.reshape(-1, stacked.shape[-1]).astype(np.float64)
            total += flat.sum(axis=0)
            squares += (flat**2).sum(axis=0)
            seen += len(flat)
        mean = total / max(seen, 1)
        return mean.astype(np.float32), np.maximum(squares / max(seen, 1) - mean**2, 0).astype(
            np.float32
        )

    def batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        strength: float = 0.0,
        std: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of shuffled ``(features, labels)`` batches, seeded by (seed, epoch).

        ``all`` shuffles the rows, then walks them a block at a time (about
        ``DEFAULT_FEATURE_BATCH_SIZE`` entries), shuffling each block's entries (every view
        of its rows): each view is read once per epoch, and memory and streaming give the
        same batches."""
        rng = np.random.default_rng([seed, epoch])
        if self.mode == "all" and self.count > 1:
            orders: Iterator[np.ndarray] = self._blocked_order(rng)
        else:
            orders = iter([rng.permutation(len(self))])
        labels = self.labels
        carry = np.zeros(0, np.int64)
        for order in orders:
            order = np.concatenate([carry, order])
            whole = len(order) - len(order) % batch_size
            for start in range(0, whole, batch_size):
                yield self._batch(order[start : start + batch_size], labels, rng, strength, std)
            carry = order[whole:]
        if len(carry):
            yield self._batch(carry, labels, rng, strength, std)

    def _blocked_order(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """``all``: the epoch's entries a block of shuffled rows at a time, each block's
        entries shuffled."""
        rows = rng.permutation(len(self.rows))
        step = max(1, DEFAULT_FEATURE_BATCH_SIZE // self.count)
        for start in range(0, len(rows), step):
            block = np.sort(rows[start : start + step])
            if self._memory is None:  # read its views once; take() indexes them
                self._block = (block, self._read(block))
            entries = (block[:, None] * self.count + np.arange(self.count)).reshape(-1)
            yield entries[rng.permutation(len(entries))]
        self._block = None

    def _batch(
        self,
        entries: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        strength: float,
        std: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.take(entries, rng)
        if strength > 0 and std is not None:
            x = feature_augment(x, strength, std, rng)
        return x, labels[entries]


def _fits_in_memory(splits: CachedSplits, mode: str) -> bool:
    """Whether the train rows' views take at most the share of free memory that
    :func:`~.data.should_stream` allows view 0."""
    count = 1 if mode == "plain" else int(getattr(splits.reader, "views", 1))
    need = len(splits.train) * count * splits.feature_dim * 4
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return need <= DEFAULT_MEMORY_FRACTION * available


def fit_views(
    kind: str, params: dict[str, Any], splits: CachedSplits, stream: bool, options: HeadOptions
) -> tuple[Any, dict[str, list[float]] | None, bool]:
    """Fit a head of ``kind`` on the train views (``options.views``), with
    ``options.feature_augment`` for the dense head; early stopping on view 0 of val.
    Returns (model, history, whether the train views were streamed from disk)."""
    if kind == "dense" and options.stream is None and not stream:
        stream = not _fits_in_memory(splits, options.views)
    source = TrainViews(splits, options.views, stream)
    if kind != "dense":
        model = make_baseline(kind, **params)
        fit_baseline(kind, model, source.take(np.arange(len(source)), None), source.labels)
        return model, None, stream
    head = DenseHead(**params)
    early = splits.seen(splits.val)
    if len(early) == 0:
        raise DatasetError(f"{splits.path}: no val row belongs to a class seen in train")
    batch, seed = int(params["batch_size"]), int(params["seed"])
    strength = float(options.feature_augment)
    stats = source.stats() if params.get("standardize") or strength > 0 else None
    std = np.sqrt(stats[1]) if stats is not None else None

    def train(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return source.batches(batch, seed, epoch, strength, std)

    def val() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return splits.batches(early, DEFAULT_FEATURE_BATCH_SIZE, shuffle=False, seed=0)

    val_batches = max(1, -(-len(early) // DEFAULT_FEATURE_BATCH_SIZE))
    classes = np.unique(splits.train.labels)
    head.fit_batches(
        train,
        val,
        splits.feature_dim,
        classes,
        source.labels,
        stats if params.get("standardize") else None,
        val_batches,
    )
    return head, head.history_, stream
