"""The write stage: what engines report about each image becomes cache rows, counts and
progress. Cache writes run in order on one writer thread, off the embedding thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.progress import DeferredBar
from ..core.splits import SplitAssigner
from ..errors import ExtractionCancelled
from ..store import CacheWriter
from .reader import Known, Prepared
from .sources import Item


@dataclass(frozen=True)
class ExtractProgress:
    """Where a running ``extract`` stands (passed to ``on_progress``)."""

    done: int
    """Images looked at so far (embedded, reused or bad)."""
    total: int
    embedded: int
    reused: int
    bad: int
    seconds: float
    images_per_second: float
    """New images embedded per second so far."""


class Recorder:
    """Turns what an engine reports about each image into cache rows, counts and progress.

    Calls come from one thread; the cache writes run on the writer thread.
    """

    def __init__(
        self,
        writer: CacheWriter,
        known: Known,
        splits: SplitAssigner,
        total: int,
        progress: bool | None,
        on_progress: Callable[[ExtractProgress], None] | None,
        cancel: threading.Event | None,
        started: float,
    ) -> None:
        self.writer = writer
        self.known = known
        self.splits = splits
        """Assigns the new rows' splits (it counts the rows kept and added)."""
        self.total = total
        self.on_progress = on_progress
        self.cancel = cancel
        self.started = started
        self.counts = {"new": 0, "reused": 0, "bad": 0, "done": 0}
        self.bad_files: list[tuple[str, str]] = []
        self.known_bad = frozenset(writer.bad)
        """Paths the cache recorded as bad before this run."""
        self.background = Background()
        self.bar = DeferredBar(total, progress, "extract")
        """Its clock starts after the model has loaded (:meth:`loading`, :meth:`embedded`)."""
        self._last_report = 0.0

    def loading(self, what: str) -> None:
        """The engine is loading its model (``what``: ``loading mobilenet (TensorFlow)…``):
        a status line shows it until the first batch is embedded, so the bar's rate and ETA
        leave the load out. May be called from a reader thread."""
        self.bar.loading(what)

    def check_cancel(self) -> None:
        """Raise :class:`ExtractionCancelled` once ``cancel`` is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise ExtractionCancelled(
                f"{self.writer.path}: extraction cancelled; finished batches were saved, "
                "rerun to resume"
            )

    def triage(self, prepared: Iterable[Prepared]) -> Iterator[Prepared]:
        """Record the reused and bad images; yield the ones to embed."""
        for each in prepared:
            self.check_cancel()
            if each.reason is not None:
                self.bad(each.item, each.reason)
            elif each.reused:
                self.reused(each.item)
            else:
                yield each
            self.report()

    def reused(self, item: Item) -> None:
        """The cached row of ``item`` stays."""
        self.counts["reused"] += 1
        self.background.submit(self.writer.set_bad, item.path, None)
        self._done(1)

    def bad(self, item: Item, reason: str) -> None:
        """``item`` cannot be used; a cached row of it goes."""
        self.counts["bad"] += 1
        self.bad_files.append((item.path, reason))
        self.background.submit(self.writer.set_bad, item.path, reason)
        if item.path in self.known:  # a cached file that went bad loses its old row
            self.background.submit(self.writer.drop, [item.path])
            self.splits.drop(item.path)
        self._done(1)

    def embedded(
        self,
        items: list[Item],
        sha256: list[str],
        features: np.ndarray,
        views: np.ndarray | None = None,
        taps: dict[str, np.ndarray] | None = None,
    ) -> None:
        """New rows for ``items`` (replacing older rows of the same paths); ``views``:
        their augmented views' embeddings, for a cache with views; ``taps``: each tap's
        features, for a cache with taps."""
        if not items:  # a batch of bad files: still a batch finished
            self.bar.start()
            self.report(force=True)
            return
        for item in items:
            self.background.submit(self.writer.set_bad, item.path, None)
            if item.path in self.known:
                self.background.submit(self.writer.drop, [item.path])
                self.splits.drop(item.path)
        self.counts["new"] += len(items)
        paths = [item.path for item in items]
        classes = [item.class_name for item in items]
        split = self.splits.assign(paths, sha256, classes, [item.split for item in items])
        self.background.submit(
            self.writer.add,
            paths,
            sha256,
            classes,
            split,
            features,
            views,
            taps,
        )
        self._done(len(items), force=True)
        self.bar.start()  # the first batch is in: the bar's clock starts (once)

    def _done(self, n: int, force: bool = False) -> None:
        self.counts["done"] += n
        self.bar.update(n)
        self.report(force)

    def report(self, force: bool = False) -> None:
        """Call ``on_progress`` (at most 4 times a second unless ``force``)."""
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._last_report < 0.25):
            return
        self._last_report = now
        seconds = now - self.started
        new = self.counts["new"]
        self.on_progress(
            ExtractProgress(
                self.counts["done"],
                self.total,
                new,
                self.counts["reused"],
                self.counts["bad"],
                round(seconds, 3),
                round(new / seconds, 2) if seconds > 0 else 0.0,
            )
        )


class Background:
    """One writer thread running submitted calls in order; re-raises its errors."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(
            depth
        )
        self._error: BaseException | None = None
        self._failed = False
        self._thread = threading.Thread(target=self._loop, name="featcache-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if not self._failed:
                try:
                    job[0](*job[1])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self._error = exc
                    self._failed = True

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises the writer's error if one happened."""
        self._raise()
        self._queue.put((fn, args))

    def submit_last(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a final call even after an error (it runs only if none happened)."""
        self._queue.put((fn, args))

    def close(self, raise_error: bool = True) -> None:
        """Wait for every queued call, then raise the first error, if any."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
