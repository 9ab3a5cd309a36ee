"""Opened caches kept for repeated searches: a :class:`CacheReader` reads every row's path,
hash and label when it opens (about half a second at 1M rows), so ``search`` and the
``Search`` RPC reuse the last few, while the file at their path is still the one they
opened (a run that rewrote the cache renamed a new file over it: opened again)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import CacheChangedError
from .manifest import is_manifest
from .opening import open_cache
from .reader import CacheReader

T = TypeVar("T")
HELD = 2
"""Readers kept (the most recently used)."""

_HELD: OrderedDict[Path, CacheReader] = OrderedDict()
_GUARD = threading.Lock()


def held_reader(
    path: str | os.PathLike[str], allowed: Callable[[Path], None] | None = None
) -> CacheReader:
    """A reader of ``path``: a held one when the file there is still the one it opened. A
    manifest is opened each time (its shards are checked against one another when opened;
    ``allowed`` as :func:`~.opening.open_cache`)."""
    if is_manifest(path):
        return open_cache(path, allowed)
    key = Path(os.path.abspath(path))
    try:
        info = os.stat(key)
        now = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    except OSError:
        now = None
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.identity == now:
            _HELD.move_to_end(key)
            return held
    reader = CacheReader(path)
    with _GUARD:
        _HELD[key] = reader
        _HELD.move_to_end(key)
        while len(_HELD) > HELD:
            _HELD.popitem(last=False)
    return reader


def forget(path: str | os.PathLike[str]) -> None:
    with _GUARD:
        _HELD.pop(Path(os.path.abspath(path)), None)


def read_held(
    path: str | os.PathLike[str],
    use: Callable[[CacheReader], T],
    attempts: int = 3,
    allowed: Callable[[Path], None] | None = None,
) -> T:
    """``use(held_reader(path))``, opened again when a run rewrote the cache meanwhile."""
    for attempt in range(attempts):
        try:
            return use(held_reader(path, allowed))
        except CacheChangedError:
            forget(path)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
