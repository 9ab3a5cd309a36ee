"""Re-hash the files behind a cache's rows: the check for what the incremental rule cannot
see (content rewritten in place, e.g. through ``mmap``, with size, mtime and ctime as they
were). ``featcache inspect CACHE --verify``."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..core.progress import progress_bar
from ..core.schema import invalid
from ..store import open_cache
from .decode import unreadable_reason
from .sources import item_from_path, open_source


@dataclass
class VerifyResult:
    """What :func:`verify_cache` found: rows whose file now holds other bytes (``changed``)
    and rows whose file cannot be read (``unreadable``: path and reason)."""

    cache: str
    rows: int
    checked: int
    unchanged: int
    changed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.changed and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_cache(
    cache: str | os.PathLike[str],
    sample: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> VerifyResult:
    """Read every row's file (or a seeded random ``sample`` of rows) from the cache's
    dataset folder and compare its SHA-256 with the one the cache recorded.

    A changed row is fixed by ``extract --rehash`` on the same data (it re-reads every file
    and re-embeds those whose bytes changed)."""
    started = time.monotonic()
    reader = open_cache(cache)
    if sample is not None and (isinstance(sample, bool) or sample < 1):
        raise invalid("sample", sample, "must be at least 1")
    rows = np.arange(len(reader))
    if sample is not None and sample < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    source = open_source(reader.settings.dataset_root)
    result = VerifyResult(str(reader.path), len(reader), len(rows), 0)
    bar = progress_bar(len(rows), progress, "verify")
    try:
        for row in rows.tolist():
            path = reader.paths[row]
            try:
                _, sha = source.read(item_from_path(path))
            except OSError as exc:
                result.unreadable.append((path, unreadable_reason(exc)))
            else:
                if sha == reader.sha256[row]:
                    result.unchanged += 1
                else:
                    result.changed.append(path)
            bar.update(1)
    finally:
        bar.close()
    result.seconds = round(time.monotonic() - started, 3)
    return result
