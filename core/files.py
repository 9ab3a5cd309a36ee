"""Temporary files beside their destination: new, under random names, never following or
replacing anything that is already there."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ..errors import InvalidOptionError, first_line
from .options import MAIN_TAP
from .schema import invalid

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


def beside_cache(cache: str | os.PathLike[str], suffix: str, tap: str | None = None) -> Path:
    """``CACHE<suffix>`` next to the cache (``cache/c.h5``, ``.audit``: ``cache/c.audit``);
    for a tap other than ``main`` ``cache/c@TAP.audit``, so that outputs made from a tap's
    features never replace those of the cache's features."""
    path = Path(cache)
    keyed = f"@{tap.strip()}" if tap and tap.strip() and tap.strip() != MAIN_TAP else ""
    return path.with_name(path.stem + keyed + suffix)


def check_new_output(
    out: str | os.PathLike[str], overwrite: bool, parameter: str = "output"
) -> Path:
    """``out`` when a command may write it: refused when it is a folder, or when it exists
    and ``overwrite`` is not given (a one-line error naming ``--overwrite`` and ``-o``)."""
    path = Path(out)
    if path.is_dir() and not path.is_symlink():
        raise InvalidOptionError(f"{path} is a folder; -o names the file to write", parameter)
    if os.path.lexists(path) and not overwrite:
        raise InvalidOptionError(
            f"{path} exists; overwrite replaces it (--overwrite), or -o names another file",
            parameter,
        )
    return path


def check_output_folder(
    folder: Path, owned: Callable[[Path], bool], refusal: str, parameter: str = "output"
) -> None:
    """Refuse ``folder`` unless it is new, or a folder whose entries ``owned`` all accepts
    (the files an earlier output of the same kind left): a command never writes through a
    symbolic link, nor replaces or removes files it does not own. ``refusal`` follows the
    listed files in the one-line error (what the user can do)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise invalid(parameter, str(folder), "not a folder")
    try:
        others = sorted(p.name for p in folder.iterdir() if not owned(p))
    except OSError as exc:
        raise invalid(
            parameter, str(folder), f"cannot read the folder ({first_line(exc)})"
        ) from None
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise invalid(parameter, str(folder), f"holds other files ({shown}); {refusal}")


def check_run_folder(
    out: str | os.PathLike[str] | None, overwrite: bool, parameter: str = "output"
) -> None:
    """Refuse ``out`` as a run folder when it already holds files, unless ``overwrite``
    (then the run's files replace theirs of the same name). Checked before any training,
    so a mistyped ``-o`` never replaces an earlier run."""
    if out is not None:
        check_output_folder(
            Path(out),
            lambda _: overwrite,
            "--overwrite writes the run into it, or -o names a new folder",
            parameter,
        )


def publish(part: Path, out: Path, overwrite: bool, parameter: str = "output") -> None:
    """Move the finished temporary ``part`` to ``out``: over an existing ``out`` only with
    ``overwrite`` (a file that appeared meanwhile is refused, never replaced), and never
    writing through a link planted at ``out``. ``part`` is gone afterwards either way."""
    try:
        if overwrite:
            os.replace(part, out)
            return
        try:
            os.link(part, out)  # fails when ``out`` exists: no replace of a newcomer
        except FileExistsError:
            check_new_output(out, overwrite, parameter)
            raise
        except OSError:  # a file system without hard links: check, then rename
            check_new_output(out, overwrite, parameter)
            os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)


@contextmanager
def written_file(out: Path, overwrite: bool, parameter: str = "output") -> Iterator[TextIO]:
    """A text file to fill, published at ``out`` when the block ends without error (see
    :func:`publish`); on an error or Ctrl-C the temporary goes and ``out`` is as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = fresh_file(out.parent, f".{out.name}.part-")
    try:
        with open(part, "w", newline="", encoding="utf-8") as file:
            yield file
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    publish(part, out, overwrite, parameter)
