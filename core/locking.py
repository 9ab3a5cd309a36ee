"""Exclusive locks between processes on a ``PATH.lock`` file that goes when the lock does.

A lock is ``flock`` on an open lock file. Removing that file on release is safe only with
the classic protocol, which every featcache lock follows: the holder removes the file
*while still holding it*, and a process that obtains the lock checks that the path still
names the file it locked, else it lets go and tries again. So whoever holds the lock holds
the file the path names, and two holders never meet. A process killed with SIGKILL leaves
the file (the kernel drops its lock); the next holder takes it over and removes it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: filelock's own lock (which cleans up)
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"
_POLL_SECONDS = 0.05


def lock_path(path: str | os.PathLike[str]) -> Path:
    """``PATH.lock``, the lock file of ``path``."""
    return Path(f"{os.fspath(path)}{LOCK_SUFFIX}")


class PathLock:
    """An exclusive lock on ``path`` (the lock file itself, e.g. from :func:`lock_path`).

    ``acquire(blocking=False)`` returns False when another holder has it; a blocking acquire
    waits. Threads of one process exclude each other too (each acquire opens the file
    anew). ``release`` removes the file, then unlocks it. Usable as a context manager
    (blocking)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._fallback: Any = None
        self._unwritable = False

    @property
    def is_locked(self) -> bool:
        return self._fd is not None or self._fallback is not None or self._unwritable

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; False when ``blocking`` is False and someone else holds it."""
        if self.is_locked:
            raise RuntimeError(f"{self.path} is already locked by this PathLock")
        if fcntl is None:  # pragma: no cover
            return self._acquire_fallback(blocking)
        while True:
            try:
                fd = self._open()
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                # a folder no one here may write to (read-only, immutable): this process cannot
                # replace anything in it either, and readers need no lock (files there are only
                # ever replaced whole), so there is nothing to exclude
                self._unwritable = True
                return True
            try:
                if not self._flock(fd, blocking):
                    os.close(fd)
                    return False
                if self._is_current(fd):
                    self._fd = fd
                    return True
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder before us removed it: lock the file the path names now

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and let go."""
        if self._fallback is not None:  # pragma: no cover
            self._fallback.release()
            self._fallback = None
            return
        fd, self._fd = self._fd, None
        self._unwritable = False
        if fd is None:
            return
        try:
            if self._is_current(fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing unlocks

    def __enter__(self) -> PathLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        return os.open(self.path, flags, 0o666)

    @staticmethod
    def _flock(fd: int, blocking: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _is_current(self, fd: int) -> bool:
        """True while the path names the file open as ``fd``."""
        try:
            return os.path.samestat(os.fstat(fd), os.lstat(self.path))
        except FileNotFoundError:
            return False

    def _acquire_fallback(self, blocking: bool) -> bool:  # pragma: no cover
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path), timeout=-1 if blocking else 0)
        try:
            lock.acquire(poll_interval=_POLL_SECONDS)
        except Timeout:
            return False
        self._fallback = lock
        return True
