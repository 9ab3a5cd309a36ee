"""What a cache already holds, as the read stage sees it.

:class:`Known` maps each cached path to its SHA-256 and class, and keeps the
:class:`FileStat` each row's file had when it was hashed. A rerun reuses a row without
reading its file when the file's stat is unchanged (unless ``rehash``); every file it does
hash is noted here, with its stat, for the cache writer to record with the row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class Item(Protocol):
    """A listed file, as the extractor's ``sources.Item`` gives it."""

    @property
    def path(self) -> str: ...

    @property
    def class_name(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class FileStat:
    """What ``os.stat`` says of a file (of the ``.npy`` file for array rows).

    A file rewritten with the same size within one tick of the file system's clock (so
    that its mtime and ctime do not change either) on the same inode looks unchanged:
    that is the limit of skipping by stat, and what ``rehash`` is for.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, result: os.stat_result) -> FileStat:
        return cls(result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino)


Hashed = tuple[str, FileStat]
"""(SHA-256, the file's stat taken before it was read)."""


class Known(dict[str, tuple[str, str | None]]):
    """Path -> (SHA-256, class name) of the rows already cached.

    ``stats`` holds the stat each row's file had when it was hashed (rows of caches
    written before stats were recorded have none and are hashed once). The read stage
    fills ``hashed`` (files hashed this run that did not match their row) and
    ``confirmed`` (cached rows whose content was hashed again under another stat); the
    cache writer takes both, so that the next run can skip those files.
    """

    def __init__(
        self,
        rows: Mapping[str, tuple[str, str | None]] | None = None,
        stats: Mapping[str, FileStat] | None = None,
        rehash: bool = False,
    ) -> None:
        super().__init__(rows or {})
        self.stats: dict[str, FileStat] = dict(stats or {})
        self.rehash = rehash
        """Read and hash every file, whatever its stat says."""
        self.hashed: dict[str, Hashed] = {}
        self.confirmed: dict[str, Hashed] = {}

    def unchanged(self, item: Item, stat: FileStat | None) -> str | None:
        """The cached SHA-256 of ``item`` when its row can be reused without reading the
        file: same class, and the file's stat is the one recorded with the row."""
        if self.rehash or stat is None:
            return None
        row = self.get(item.path)
        if row is None or row[1] != item.class_name or self.stats.get(item.path) != stat:
            return None
        return row[0]

    def saw(self, item: Item, sha256: str, stat: FileStat | None) -> bool:
        """Note a file hashed this run (its ``stat`` taken before reading); True when its
        cached row holds this content and class (the row is reused)."""
        reused = self.get(item.path) == (sha256, item.class_name)
        if stat is not None:  # dict stores are atomic: reader threads need no lock
            if not reused:
                self.hashed[item.path] = (sha256, stat)
            elif self.stats.get(item.path) != stat:
                self.confirmed[item.path] = (sha256, stat)
        return reused
