"""Temporary files beside their destination: new, under random names, never following or
replacing anything that is already there."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_ATTEMPTS = 100


def fresh_file(folder: str | os.PathLike[str], prefix: str, suffix: str = "") -> Path:
    """A new empty file ``folder/PREFIX<random>SUFFIX``, created with ``O_CREAT | O_EXCL``
    (never an existing file, folder or planted symbolic link) and the permissions a new
    file gets (``0o666`` less the umask; :func:`tempfile.mkstemp` would give ``0o600``, and
    the file becomes a cache or report others may read). The caller fills it, renames it
    into place, and removes it on failure."""
    for _ in range(_ATTEMPTS):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return path
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")
