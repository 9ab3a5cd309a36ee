"""``ExtractDataset`` jobs: a server-side :func:`run_extraction` on its own thread, over the
server's pooled model, streaming its progress to the RPC."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..core.options import ExtractOptions
from ..core.settings import BackboneConfig
from ..extractor.engines import LocalEngine
from ..extractor.recorder import ExtractProgress
from ..extractor.runner import (
    ExtractSummary,
    run_extraction,
    with_cache_taps,
    with_cache_views,
)
from ..protos import extractor_pb2 as pb
from .models import MemoryBudget, ModelPool, PoolEmbedder, input_bytes

GONE = object()
"""What :meth:`DatasetJob.get` returns once the client went away."""


def job_bytes(options: ExtractOptions, image_size: tuple[int, int], feature_dim: int) -> int:
    """Memory a job reserves: its read-ahead window and a batch (kept, and stacked) of
    decoded images, and a batch of features (with views: the batch resized to the input
    size, two batches of augmented images in flight, and the views' features too)."""
    batch = options.batch_size
    images = options.window + 2 * batch + (3 * batch if options.view_count > 1 else 0)
    return images * input_bytes(image_size) + batch * options.view_count * feature_dim * 4


def job_name(options: ExtractOptions, image_size: tuple[int, int]) -> str:
    """How budget messages name a job."""
    return f"ExtractDataset batch_size {options.batch_size} at {image_size[0]}x{image_size[1]}"


class DatasetJob:
    """A running extraction: its cancel flag, and the messages for the RPC to send."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.ended = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._latest: Any = None
        self._lock = threading.Lock()

    def start(
        self,
        pool: ModelPool,
        config: BackboneConfig,
        data: Path,
        output: Path,
        options: ExtractOptions,
        confine: Path | None,
        shown_output: str,
        on_end: Callable[[DatasetJob], None],
        budget: MemoryBudget | None = None,
    ) -> None:
        """Run the extraction on a thread; its summary (or error) is the last message.

        The job waits for its model and its share of ``budget`` (at most the pool's ``wait``
        seconds each) and holds both until it ends.
        """

        def active() -> bool:
            return not self.cancel.is_set()

        def run() -> None:
            try:
                taps = with_cache_taps(options, output).tap_list  # a model with them
                with pool.use(config, active, taps=taps) as model:
                    options_now = with_cache_views(options, output)  # the views it makes
                    width = model.feature_dim + sum(d for _, d in model.extractor.tap_layout)
                    need = job_bytes(options_now, model.image_size, width)  # taps too
                    what = job_name(options, model.image_size)
                    with _hold(budget, need, what, pool.wait, active):
                        gate = budget.decoding if budget is not None else None
                        embedder = PoolEmbedder(model, config, options.max_pixels, gate=gate)
                        summary = run_extraction(
                            data,
                            LocalEngine(embedder),
                            output,
                            options,
                            on_progress=self.progress,
                            cancel=self.cancel,
                            confine=confine,
                        )
                self._queue.put(_final(summary, shown_output))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread
                self._queue.put(exc)
            finally:
                on_end(self)
                self.ended.set()

        threading.Thread(target=run, name="featcache-job", daemon=True).start()

    def progress(self, p: ExtractProgress) -> None:
        """Keep only the newest progress message, so a slow client never holds the job."""
        message = _message(p)
        with self._lock:
            fresh = self._latest is None
            self._latest = message
        if fresh:
            self._queue.put(None)

    def abandon(self) -> None:
        """The client went away: stop the job, and let :meth:`get` return :data:`GONE`."""
        self.cancel.set()
        self._queue.put(GONE)

    def get(self) -> Any:
        """The next message to send: the newest progress, the final message, the error, or
        :data:`GONE` once :meth:`abandon` was called."""
        item = self._queue.get()
        if item is not None:
            return item
        with self._lock:
            latest, self._latest = self._latest, None
        return latest


def _hold(
    budget: MemoryBudget | None,
    nbytes: int,
    what: str,
    wait: float,
    active: Callable[[], bool],
) -> AbstractContextManager[None]:
    return nullcontext() if budget is None else budget.hold(nbytes, what, wait, active)


def _message(p: ExtractProgress, **summary: Any) -> Any:
    """A progress message; the last one also carries ``summary`` fields."""
    return pb.ExtractProgress(
        done=p.done,
        total=p.total,
        embedded=p.embedded,
        reused=p.reused,
        bad=p.bad,
        images_per_second=p.images_per_second,
        seconds=p.seconds,
        **summary,
    )


def _final(summary: ExtractSummary, output: str) -> Any:
    looked_at = summary.new + summary.reused + summary.bad
    done = ExtractProgress(
        looked_at,
        looked_at,
        summary.new,
        summary.reused,
        summary.bad,
        summary.seconds,
        summary.images_per_second,
    )
    return _message(
        done,
        finished=True,
        output=output,
        rows=summary.rows,
        feature_dim=summary.feature_dim,
        removed=summary.removed,
        bad_files=[pb.BadFile(path=p, reason=r) for p, r in summary.bad_files],
    )
