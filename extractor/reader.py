"""The read stage: read, hash and (optionally) decode a dataset's images on threads.

Every engine reads through here: the local engine decodes on the reader threads, the Ray
engine hashes here and decodes on its actors with :func:`read_one` too. A file whose cached
row was recorded with the stat it still has is not read at all (:class:`Known`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..store.known import Known
from .decode import decode_or_reason, unreadable_reason
from .sources import Dataset, Item

__all__ = ["Known", "Prepared", "ordered_map", "read_items", "read_one"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Prepared:
    """One image after reading (and, when asked, decoding)."""

    item: Item
    sha256: str = ""
    payload: Any = None
    reason: str | None = None
    """Why the image cannot be used (unreadable, undecodable); None when fine."""
    reused: bool = False
    """Its row is already in the cache with the same content and class."""


def read_one(
    dataset: Dataset,
    item: Item,
    known: Known | None = None,
    prepare: Callable[[bytes | np.ndarray], Any] | None = None,
) -> Prepared:
    """Read and hash one item; ``reused`` when cached unchanged, else ``prepare``d.

    With ``known``, an item whose file has the stat recorded with its row is reused
    without being read (unless ``known.rehash``); every file read is noted in ``known``
    with the stat it had before reading. Failures (unreadable, undecodable, out of memory)
    become ``reason``; nothing here raises for a bad file.
    """
    stat = None
    if known is not None:
        stat = dataset.stat(item)
        cached = known.unchanged(item, stat)
        if cached is not None:
            return Prepared(item, cached, reused=True)
    try:
        content, sha = dataset.read(item)
    except OSError as exc:
        return Prepared(item, reason=unreadable_reason(exc))
    except MemoryError:  # a huge file or array row: this file is bad, the run goes on
        return Prepared(item, reason="unreadable: out of memory")
    if known is not None and known.saw(item, sha, stat):
        return Prepared(item, sha, reused=True)
    if prepare is None:
        return Prepared(item, sha)
    payload, reason = decode_or_reason(prepare, content)
    return Prepared(item, sha, payload, reason)


def read_items(
    dataset: Dataset,
    known: Known,
    threads: int,
    window: int,
    prepare: Callable[[bytes | np.ndarray], Any] | None = None,
) -> Generator[Prepared, None, None]:
    """:func:`read_one` over every item on ``threads`` threads, in dataset order, with at
    most ``window`` items in flight.

    Closed early (the run stopped), it drops the reads not started and waits for the running
    ones. Callers close it (``contextlib.closing``) rather than leave that to the garbage
    collector, which may run on one of these threads, and a thread cannot join itself."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="featcache-read")
    try:
        yield from ordered_map(
            pool, lambda item: read_one(dataset, item, known, prepare), dataset.items, window
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T], window: int
) -> Iterator[R]:
    """``map`` over a thread pool, in order, with at most ``window`` items in flight."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
