"""Wiring one run: list the dataset, lock and open the cache, let an engine look at every
image, commit. Memory is bounded by the read-ahead window and the writer's pending rows,
not by the dataset size."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.locking import PathLock, lock_path
from ..core.options import DEFAULT_DECODE, DEFAULT_SEED, ExtractOptions, parse_shard
from ..core.settings import CacheSettings, FeatureSettings
from ..core.splits import DEFAULT_SPLIT_METHOD, SplitAssigner
from ..errors import CacheError, CacheLockedError, InvalidOptionError
from ..store import CacheWriter
from ..store.format import OVERWRITE_HINT, with_hint
from ..store.search_index import drop_gone_tap_indexes
from ..store.writer import cached_settings
from .engines import Engine
from .recorder import ExtractProgress, Recorder
from .sources import Dataset, scan_dataset, take_shard


@dataclass
class ExtractSummary:
    """What one ``extract`` run did."""

    output: str
    backbone: str
    rows: int
    feature_dim: int
    new: int
    reused: int
    removed: int
    bad: int
    ignored: int
    seconds: float
    images_per_second: float
    """New images embedded per second of the whole run."""
    load_seconds: float = 0.0
    """Time spent importing TensorFlow, building the backbone, loading its weights and
    tracing its graphs (0 when no image needed the model); ``seconds - load_seconds`` is
    the embedding time."""
    classes: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    views: int = 1
    """Embeddings per image (``views``; 1: ``features`` only)."""
    taps: dict[str, int] = field(default_factory=dict)
    """Width of each tap stored beside ``features`` (``taps``), by layer."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the summary."""
        out = asdict(self)
        out["bad_files"] = [{"path": p, "reason": r} for p, r in self.bad_files]
        return out


def run_extraction(
    data: str | os.PathLike[str],
    engine: Engine,
    output: Path,
    options: ExtractOptions,
    *,
    on_progress: Callable[[ExtractProgress], None] | None = None,
    cancel: threading.Event | None = None,
    confine: Path | None = None,
    started: float | None = None,
) -> ExtractSummary:
    """Embed the images of ``data`` that the cache at ``output`` lacks, with ``engine``.

    ``options`` gives the storage, split and run settings (its backbone settings are the
    engine's business); ``confine`` refuses (as bad files) images whose real path leaves
    that folder.
    """
    started = time.monotonic() if started is None else started
    # bad input fails before any file
    dataset = scan_dataset(data, options.labels, confine, options.max_pixels)
    dataset = take_shard(dataset, parse_shard(options.shard) if options.shard else None)
    if output.is_dir():
        raise InvalidOptionError(f"output {str(output)!r}: is a folder, not a cache file", "output")
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(output)
    try:
        options = with_cache_taps(with_cache_views(options, output), output)
        method = split_method(options, output)
        settings = CacheSettings.of(
            _with_split_seed(engine.settings, options.seed),
            dtype=options.dtype,
            split_ratios=options.ratios,
            split_source="folders" if dataset.layout == "splits" else "hash",
            dataset_root=str(dataset.root),
            split_method=method,
            views=options.view_count,
            augment=options.view_augment,
            augment_seed=options.view_seed,
            taps=options.tap_list,
        )
        return _run(dataset, engine, settings, output, options, on_progress, cancel, started)
    except CacheError as exc:  # the user is writing this cache: --overwrite replaces it
        raise with_hint(exc, OVERWRITE_HINT) from None
    finally:
        lock.release()


def with_cache_views(options: ExtractOptions, output: Path) -> ExtractOptions:
    """``options`` with the view settings not given taken from the cache at ``output``
    (none, or ``overwrite``: 1 view, no augmentation, the default seed)."""
    cached = None if options.overwrite else cached_settings(output)
    if cached is None:
        return options.with_cache_views(1, (), DEFAULT_SEED)
    return options.with_cache_views(cached.views, cached.augment, cached.augment_seed)


def with_cache_taps(options: ExtractOptions, output: Path) -> ExtractOptions:
    """``options`` with ``taps`` not given taken from the cache at ``output`` (none, a
    file that is no cache, or ``overwrite``: no taps)."""
    if options.taps is not None:
        return options
    try:
        cached = None if options.overwrite else cached_settings(output)
    except CacheError:
        cached = None
    return options.with_cache_taps(cached.taps if cached is not None else ())


def split_method(options: ExtractOptions, output: Path) -> str:
    """``options.split_method``, else the cache's at ``output`` (``hash`` for caches from
    before the method was recorded), else :data:`~..core.splits.DEFAULT_SPLIT_METHOD`."""
    if options.split_method is not None:
        return options.split_method
    cached = None if options.overwrite else cached_settings(output)
    return cached.split_method if cached is not None else DEFAULT_SPLIT_METHOD


def with_cache_decode(options: ExtractOptions, output: Path) -> ExtractOptions:
    """``options`` with ``decode`` not given (None) taken from the cache at ``output``
    (caches from before it was recorded: ``exact``), else :data:`DEFAULT_DECODE` (no cache,
    ``overwrite``, or a file that is no cache: the run says why)."""
    if options.decode is not None:
        return options
    try:
        cached = None if options.overwrite else cached_settings(output)
    except CacheError:
        cached = None
    return replace(options, decode=cached.decode if cached is not None else DEFAULT_DECODE)


def _with_split_seed(features: FeatureSettings, seed: int) -> FeatureSettings:
    """The engine's settings with the run's seed, which assigns the splits (and must be the
    seed of random weights: a cache records one seed for both)."""
    if features.weights == "none" and features.seed != seed:
        raise InvalidOptionError(
            f"seed {seed}: the engine's random weights were drawn with seed {features.seed}",
            "seed",
        )
    return replace(features, seed=seed)


def _lock(path: Path) -> PathLock:
    """The cache's lock (``PATH.lock``, removed when released), or CacheLockedError."""
    lock = PathLock(lock_path(path))
    if not lock.acquire(blocking=False):
        raise CacheLockedError(
            f"{path} is being written by another extract process; wait for it to finish"
        )
    return lock


def _run(
    dataset: Dataset,
    engine: Engine,
    settings: CacheSettings,
    out_path: Path,
    options: ExtractOptions,
    on_progress: Callable[[ExtractProgress], None] | None,
    cancel: threading.Event | None,
    started: float,
) -> ExtractSummary:
    order = {item.path: i for i, item in enumerate(dataset.items)}
    writer = CacheWriter(
        out_path,
        settings,
        dataset.class_names,
        order,
        options.overwrite,
        options.checkpoint_seconds,
    )
    known = writer.index(options.rehash)
    removed = [p for p in known if p not in order]
    writer.drop(removed)
    writer.forget_bad(order)

    splits = SplitAssigner(
        settings.split_ratios, settings.seed, settings.split_method, writer.kept_rows()
    )
    recorder = Recorder(
        writer, known, splits, len(dataset.items), options.progress, on_progress, cancel, started
    )
    background = recorder.background
    finished = False
    try:
        engine.run(dataset, known, recorder, options)
        if recorder.counts["new"] == 0 and writer.feature_dim == 0:  # bad files only
            background.submit(setattr, writer, "feature_dim", engine.feature_dim)
        background.submit(writer.commit, True)
        finished = True
    finally:
        recorder.bar.close()
        if not finished:  # interrupted: keep the batches already embedded
            background.submit_last(writer.commit)
        background.close(raise_error=finished)
    try:  # the index files of taps the cache no longer has: never read again
        drop_gone_tap_indexes(out_path, writer.tap_dims)
    except OSError as exc:
        logging.getLogger(__name__).warning("old tap search indexes left: %s", exc)
    recorder.report(force=True)
    counts = recorder.counts
    seconds = time.monotonic() - started
    return ExtractSummary(
        output=str(out_path),
        backbone=settings.backbone,
        rows=len(writer.base_paths),
        feature_dim=writer.feature_dim,
        new=counts["new"],
        reused=counts["reused"],
        removed=len(removed),
        bad=counts["bad"],
        ignored=dataset.ignored,
        seconds=round(seconds, 3),
        images_per_second=round(counts["new"] / seconds, 2) if seconds > 0 else 0.0,
        load_seconds=round(engine.load_seconds, 3),
        classes=dataset.class_names,
        bad_files=recorder.bad_files,
        views=settings.views,
        taps=dict(writer.tap_dims),
    )
