"""Plain test helpers (no fixtures): tiny real image folders, crafted files, cache rows.

Test modules import these with ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path`` because it has no ``__init__.py``); the fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

TINY = {"backbone": "vgg16", "weights": "none", "image_size": 32, "progress": False}
"""Extraction settings for fast tests: random (seeded) VGG16 at 32x32 (its random features
are well scaled, unlike the BatchNorm nets whose random features vanish)."""


COMMIT_EVERY_BATCH = """
from featcache.store import writer as _writer
_writer.CacheWriter.due = lambda self: bool(self._pending.paths)
"""
"""Code for the top of a killed run's ``python -c`` driver: a checkpoint after every batch,
as ``checkpoint_seconds=0`` asks, however slow commits get on a busy machine. (The writer
otherwise waits 10 times the last commit's cost between checkpoints, so the rows a test
waits for could first show at the final commit, after the run it meant to kill has ended.)"""


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> Path:
    """Write a smooth random RGB image (width, height) so resizing matters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_class_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """``root/class_k/img_i.{png,jpg}`` with distinct images of varying sizes."""
    for k in range(classes):
        for i in range(per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            size = (30 + 7 * i, 36 + 5 * k)
            write_image(
                root / f"class_{k}" / f"img_{i}.{ext}", seed * 1000 + k * 100 + i, size, fmt
            )
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header that claims a huge image (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    idat_chunk = b"IDAT" + idat
    body = struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + end


def cache_rows(path: Path) -> int:
    """Rows in the cache file at ``path`` as it is on disk now; -1 when absent or unreadable.

    Reads through :class:`featcache.store.CacheReader` (nothing outside that
    package opens HDF5 files), imported here so that importing the helpers stays light.
    """
    from featcache.errors import CacheError
    from featcache.store import CacheReader

    try:
        return len(CacheReader(path))
    except (CacheError, OSError, KeyError):
        return -1


class RowWatch:
    """:func:`cache_rows` of one path for a tight poll: the file is read again only when
    another file has replaced it.

    A commit never changes the cache file in place: it writes a temporary copy and renames
    it over (``CacheWriter.commit``), so after every commit the file at ``path`` is another
    inode than the one before, with another ctime. A poll costs a ``stat`` then, not an
    HDF5 open and read (about 10 ms of CPU, taken from the run being watched on a 2-core
    machine).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._rows = -1

    def __call__(self) -> int:
        """Rows in the file now, as :func:`cache_rows` says."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen, self._rows = None, -1
            return -1
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key != self._seen:
            self._rows = cache_rows(self.path)
            self._seen = key if self._rows >= 0 else None  # unreadable: read it again
        return self._rows


@contextmanager
def cache_lock(cache: Path, timeout: float) -> Iterator[None]:
    """Hold ``cache``'s lock (as ``extract`` does), waiting up to ``timeout`` seconds for
    a writer to let go; AssertionError when it does not."""
    from featcache.core.locking import PathLock, lock_path

    lock = PathLock(lock_path(cache))
    deadline = time.monotonic() + timeout
    while not lock.acquire(blocking=False):
        assert time.monotonic() < deadline, f"{cache} still locked after {timeout} s"
        time.sleep(0.02)
    try:
        yield
    finally:
        lock.release()
