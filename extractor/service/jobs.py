"""``ExtractDataset`` jobs: a server-side :func:`run_extraction` on its own thread, over the
server's pooled model, streaming its progress to the RPC."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...protos import extractor_pb2 as pb
from ..engines import LocalEngine
from ..options import ExtractOptions
from ..recorder import ExtractProgress
from ..runner import ExtractSummary, run_extraction
from ..settings import BackboneConfig
from .models import ModelPool, PoolEmbedder


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
    ) -> None:
        """Run the extraction on a thread; its summary (or error) is the last message."""

        def run() -> None:
            try:
                with pool.use(config) as model:
                    embedder = PoolEmbedder(model, config, options.max_pixels)
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
        message = pb.ExtractProgress(
            done=p.done,
            total=p.total,
            embedded=p.embedded,
            reused=p.reused,
            bad=p.bad,
            images_per_second=p.images_per_second,
            seconds=p.seconds,
        )
        with self._lock:
            fresh = self._latest is None
            self._latest = message
        if fresh:
            self._queue.put(None)

    def get(self) -> Any:
        """The next message to send: the newest progress, the final message or the error."""
        item = self._queue.get()
        if item is not None:
            return item
        with self._lock:
            latest, self._latest = self._latest, None
        return latest


def _final(summary: ExtractSummary, output: str) -> Any:
    looked_at = summary.new + summary.reused + summary.bad
    return pb.ExtractProgress(
        done=looked_at,
        total=looked_at,
        embedded=summary.new,
        reused=summary.reused,
        bad=summary.bad,
        images_per_second=summary.images_per_second,
        seconds=summary.seconds,
        finished=True,
        output=output,
        rows=summary.rows,
        feature_dim=summary.feature_dim,
        removed=summary.removed,
        bad_files=[pb.BadFile(path=p, reason=r) for p, r in summary.bad_files],
    )
