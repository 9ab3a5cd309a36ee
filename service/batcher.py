"""Dynamic batching: concurrent requests for one model merged into one model call.

Each loaded model has one :class:`Batcher` and so one inference thread. Requests queue
their images; the thread takes the oldest, then keeps adding queued requests until the
batch holds ``max_batch`` images or ``max_delay`` seconds have passed since it started
waiting, runs the model once and hands every request its rows. It waits only while
requests arrive together (the last batch merged several); a lone caller never waits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

import numpy as np

from .options import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_MS


class BatcherClosed(RuntimeError):
    """The model was unloaded; ask the pool for it again."""


@dataclass
class _Job:
    images: np.ndarray
    active: Callable[[], bool]
    future: Future[np.ndarray] = field(default_factory=Future)


class Batcher:
    """One inference thread running ``fn`` on merged batches of queued images."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay: float = DEFAULT_MAX_DELAY_MS / 1000,
        merge: bool = True,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay)
        self.merge = merge
        self.calls = 0
        """Model calls made so far."""
        self.images = 0
        """Images embedded so far."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._last_merged = 1
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"featcache-infer-{name}", daemon=True
        )  # a model still loading at shutdown must not hold the process
        self._thread.daemon = True
        self._thread.start()

    def submit(
        self, images: np.ndarray, active: Callable[[], bool] = lambda: True
    ) -> list[Future[np.ndarray]]:
        """Queue ``(N, H, W, 3)`` images in chunks of at most ``max_batch``; one future each.

        A chunk whose ``active()`` is false when its turn comes is skipped (cancelled).
        """
        with self._lock:
            if self._closed:
                raise BatcherClosed("the model was unloaded")
            jobs = [
                _Job(images[i : i + self.max_batch], active)
                for i in range(0, len(images), self.max_batch)
            ]
            for job in jobs:
                self._queue.put(job)
        return [job.future for job in jobs]

    def run(
        self,
        images: np.ndarray,
        active: Callable[[], bool] = lambda: True,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Embed ``images`` through the queue and wait for the rows."""
        futures = self.submit(images, active)
        deadline = None if timeout is None else time.monotonic() + timeout
        parts = []
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            parts.append(future.result(left))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def close(self) -> None:
        """Stop taking requests; the thread finishes the queued ones, then exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the inference thread to exit (after :meth:`close`)."""
        self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """``first`` plus what can join it; the job left over and whether to stop."""
        jobs, count = [first], len(first.images)
        if not self.merge:
            return jobs, None, False
        # Wait for company only when requests have been arriving together; a lone client
        # then pays no delay, and a crowd fills its batches.
        delay = self.max_delay if self._last_merged > 1 else 0.0
        deadline = time.monotonic() + delay
        while count < self.max_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if count + len(job.images) > self.max_batch:
                return jobs, job, False
            jobs.append(job)
            count += len(job.images)
        return jobs, None, False

    def _loop(self) -> None:
        carried: _Job | None = None
        stop = False
        while not stop:
            first = carried if carried is not None else self._queue.get()
            if first is None:
                break
            jobs, carried, stop = self._collect(first)
            self._last_merged = len(jobs)
            live = []
            for job in jobs:
                if job.active() and job.future.set_running_or_notify_cancel():
                    live.append(job)
                elif not job.future.done():
                    job.future.set_exception(CancelledError())
            if not live:
                continue
            try:
                batch = (
                    live[0].images if len(live) == 1 else np.concatenate([j.images for j in live])
                )
                rows = self.fn(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for job in live:
                    job.future.set_exception(exc)
                continue
            self.calls += 1
            self.images += len(batch)
            start = 0
            for job in live:
                job.future.set_result(rows[start : start + len(job.images)])
                start += len(job.images)
        if carried is not None:  # closed while a job waited: run it alone
            self._queue.put(carried)
        self._drain()

    def _drain(self) -> None:
        """Run the jobs queued before :meth:`close`, one by one."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None or not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self.fn(job.images))
            except BaseException as exc:  # noqa: BLE001
                job.future.set_exception(exc)
