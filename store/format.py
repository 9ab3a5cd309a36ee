"""The HDF5 cache file, format version 3: constants and opening a file safely.

Version 2 added the ``file_*`` row datasets (:data:`FILE_STAT_DATASETS`); version 1 files
are read as they are and gain them when next written. Version 3 moved the bad-file records
into an attribute (below) and may hold a ``views`` row dataset (``extract --views``): an
older featcache then says the file is newer than it reads instead of calling it damaged.
Version 1 and 2 files are read as they are and written as version 3.

The bad-file records (files that could not be used, and why) live in the root attribute
:data:`BAD_FILES_ATTR` (JSON), not in datasets: every dataset of the file then has one
entry per row, which is what Hugging Face ``datasets``' ``hdf5`` builder needs (it reads
every dataset, groups included, and ignores attributes). Files written before keep them in
the ``bad/paths`` and ``bad/reasons`` datasets; they are read from there and moved to the
attribute when the file is next written.

Only the cache package (this module, :mod:`.reader` and :mod:`.writer`) opens HDF5 files.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CacheError, FeatcacheError, first_line
from .manifest import is_manifest

FORMAT = "featcache"
FORMAT_VERSION = 3
STRING = h5py.string_dtype("utf-8")
ROW_DATASETS = ("features", "labels", "paths", "sha256", "split")
"""The datasets with one entry per row (in every version)."""
FILE_STAT_DATASETS = {
    "file_size": "size",
    "file_mtime_ns": "mtime_ns",
    "file_ctime_ns": "ctime_ns",
    "file_inode": "inode",
}
"""Row datasets of format version 2 -> field of :data:`FILE_STAT_DTYPE`: the stat of each
row's file (of the ``.npy`` file for array rows) taken before it was hashed; a rerun
reuses rows whose file still has it without reading the file."""
FILE_STAT_DTYPE = np.dtype(
    [("size", "<i8"), ("mtime_ns", "<i8"), ("ctime_ns", "<i8"), ("inode", "<u8")]
)
VIEWS_DATASET = "views"
"""Row dataset ``(rows, views - 1, feature_dim)`` of a cache with augmented views (the
``views`` attribute above 1): views 1+ of each row; view 0 is ``features``."""
TAPS_GROUP = "taps"
"""Group of a cache with taps (``extract --taps``): one row dataset ``taps/LAYER``
``(rows, dim)`` per inner layer, pooled as the ``pooling`` attribute says, with attributes
``layer``, ``pooling``, ``dim`` and ``index`` (the order of the taps)."""
UNKNOWN_STAT = (-1, -1, -1, 0)
"""The stat of a row whose file was not stat'ed (rows of version 1 files): never matches."""
BAD_FILES_ATTR = "bad_files"
"""Root attribute: JSON list of ``[path, reason]`` pairs, sorted by path (a variable-length
string, so any number of records fits)."""
READ_HINT = "featcache extract --overwrite rebuilds it"
"""What a damaged cache's error advises by default: the commands that read a cache
(inspect, audit, search, plot, train-head, ...) have no ``--overwrite`` of their own."""
OVERWRITE_HINT = "overwrite replaces it (--overwrite)"
"""The advice where the user is writing the cache (``extract``): :func:`with_hint`."""
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)
"""What h5py raises on a file whose bytes are not what it expects."""


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"h5py_version": h5py.__version__}
    for attr, dist in (
        ("featcache_version", "featcache"),
        ("keras_version", "keras"),
        ("tensorflow_version", "tensorflow"),
    ):
        try:
            out[attr] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            try:
                out[attr] = metadata.version(f"{dist}-cpu")
            except metadata.PackageNotFoundError:
                out[attr] = "unknown"
    return out


def damaged(path: str | os.PathLike[str], detail: str) -> CacheError:
    """The error for a cache file whose contents are not a whole featcache cache."""
    return CacheError(f"{path}: the cache file is damaged ({detail}); {READ_HINT}")


def with_hint(exc: CacheError, hint: str) -> CacheError:
    """``exc`` with its advice for a damaged cache (:data:`READ_HINT` or
    :data:`OVERWRITE_HINT`) replaced by ``hint``, what the caller's user can do (the same
    class; ``exc`` itself when it has no advice)."""
    text = str(exc)
    for advice in (READ_HINT, OVERWRITE_HINT):
        if advice in text:
            return type(exc)(text.replace(advice, hint))
    return exc


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a folder's entries (a rename into it) durable, where the system allows opening
    a folder; never raises."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def guarded(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn what h5py raises on damaged bytes (``KeyError``, ``OSError``, ...) into
    :class:`CacheError` naming the file and what rebuilds it; featcache errors pass."""
    try:
        yield
    except FeatcacheError:
        raise
    except _READ_ERRORS as exc:
        raise damaged(path, first_line(exc)) from None


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" (or a quota), as the OS (``errno``) or HDF5 (its message,
    often of a ``RuntimeError`` when buffered writes fail on flush) says it."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(
        marker in text
        for marker in (
            os.strerror(errno.ENOSPC),
            os.strerror(errno.EDQUOT),
            f"errno = {errno.ENOSPC},",
            f"errno = {errno.EDQUOT},",
        )
    )


def layout_problem(handle: h5py.File, rows: int | None = None) -> str | None:
    """What is wrong with the datasets of an open cache (None when nothing is).

    Checks that every dataset is there with its rank, that the row datasets, the ``rows``
    and ``feature_dim`` attributes agree, and, with ``rows``, that there are that many.
    """
    legacy_bad = BAD_FILES_ATTR not in handle.attrs
    for name in (*ROW_DATASETS, *(("bad/paths", "bad/reasons") if legacy_bad else ())):
        if not isinstance(handle.get(name), h5py.Dataset):
            return f"no {name} dataset"
        want = 2 if name == "features" else 1
        if handle[name].ndim != want:
            return f"{name} is {handle[name].ndim}-D, not {want}-D"
    stat_names = [name for name in FILE_STAT_DATASETS if name in handle]
    if stat_names or int(handle.attrs.get("format_version", 0)) >= 2:
        for name in FILE_STAT_DATASETS:
            if not isinstance(handle.get(name), h5py.Dataset):
                return f"no {name} dataset"
            if handle[name].ndim != 1:
                return f"{name} is {handle[name].ndim}-D, not 1-D"
    problem = _views_problem(handle)
    if problem is not None:
        return problem
    view_names = [VIEWS_DATASET] if VIEWS_DATASET in handle else []
    problem = _taps_problem(handle)
    if problem is not None:
        return problem
    tap_names = [f"{TAPS_GROUP}/{name}" for name in tap_order(handle)]
    counts = {
        name: int(handle[name].shape[0])
        for name in (*ROW_DATASETS, *stat_names, *view_names, *tap_names)
    }
    if len(set(counts.values())) > 1:
        return "datasets of different lengths: " + ", ".join(
            f"{name} {n}" for name, n in counts.items()
        )
    found = counts["paths"]
    recorded = handle.attrs.get("rows")
    if recorded is not None and int(recorded) != found:
        return f"{found} rows, the rows attribute says {int(recorded)}"
    if rows is not None and found != rows:
        return f"{found} rows, expected {rows} rows"
    width = int(handle["features"].shape[1])
    dim = handle.attrs.get("feature_dim")
    if dim is not None and int(dim) != width:
        return f"features of width {width}, the feature_dim attribute says {int(dim)}"
    if legacy_bad and handle["bad/paths"].shape != handle["bad/reasons"].shape:
        return "bad/paths and bad/reasons of different lengths"
    if not legacy_bad:
        try:
            bad_records(handle)
        except ValueError as exc:
            return str(exc)
    return None


def bad_records(handle: h5py.File) -> list[tuple[str, str]]:
    """The ``(path, reason)`` of every bad file: from the :data:`BAD_FILES_ATTR` attribute,
    or from the ``bad/`` datasets of a file written before it (ValueError if malformed)."""
    if BAD_FILES_ATTR not in handle.attrs:
        return list(zip(strings(handle["bad/paths"]), strings(handle["bad/reasons"])))
    raw = handle.attrs[BAD_FILES_ATTR]
    try:
        items = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(
        isinstance(i, list) and len(i) == 2 and all(isinstance(v, str) for v in i) for i in items
    ):
        raise ValueError(f"the {BAD_FILES_ATTR} attribute is not a JSON list of [path, reason]")
    return [(path, reason) for path, reason in items]


def bad_records_json(records: Iterable[tuple[str, str]]) -> str:
    """The :data:`BAD_FILES_ATTR` value of ``records`` (sorted by path)."""
    return json.dumps(sorted([path, reason] for path, reason in records))


def _views_problem(handle: h5py.File) -> str | None:
    """What is wrong with the views of a cache (None when nothing is): the ``views``
    dataset is there exactly when the ``views`` attribute is above 1, with its shape."""
    views = int(handle.attrs.get("views", 1))
    dataset = handle.get(VIEWS_DATASET)
    if views <= 1:
        return None if dataset is None else f"a {VIEWS_DATASET} dataset but no views attribute"
    if not isinstance(dataset, h5py.Dataset):
        return f"no {VIEWS_DATASET} dataset"
    if dataset.ndim != 3:
        return f"{VIEWS_DATASET} is {dataset.ndim}-D, not 3-D"
    if int(dataset.shape[1]) != views - 1:
        return f"{VIEWS_DATASET} holds {dataset.shape[1]} views a row, not {views - 1}"
    if int(dataset.shape[2]) != int(handle["features"].shape[1]):
        width = int(handle["features"].shape[1])
        return f"{VIEWS_DATASET} of width {dataset.shape[2]}, features of width {width}"
    return None


def tap_order(handle: h5py.File) -> list[str]:
    """The tap datasets of a cache (layer names), in the order they were asked for."""
    group = handle.get(TAPS_GROUP)
    if not isinstance(group, h5py.Group):
        return []
    return sorted(group, key=lambda name: (int(group[name].attrs.get("index", 0)), name))


def _taps_problem(handle: h5py.File) -> str | None:
    """What is wrong with the taps of a cache (None when nothing is): each is 2-D."""
    group = handle.get(TAPS_GROUP)
    if group is None:
        return None
    if not isinstance(group, h5py.Group):
        return f"{TAPS_GROUP} is not a group"
    for name in group:
        dataset = group[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 2:
            return f"{TAPS_GROUP}/{name} is not a 2-D dataset"
    return None


def open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open a cache read-only after checking that it is a featcache file we can read and
    that its datasets fit together (:class:`CacheError` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such cache file")
    if is_manifest(path):
        raise CacheError(
            f"{path}: a manifest of several caches, not one cache file; this needs one of "
            "the caches it names"
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(
            f"{path}: not a readable HDF5 file ({first_line(exc)}); "
            f"if it is a damaged cache, {READ_HINT}"
        ) from None
    try:
        with guarded(path):
            fmt = handle.attrs.get("format", b"")
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != FORMAT:
                raise CacheError(f"{path}: not a featcache cache (format attribute {fmt!r})")
            version = int(handle.attrs.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise CacheError(
                    f"{path}: cache format version {version} is newer than this featcache "
                    f"reads ({FORMAT_VERSION}); upgrade featcache"
                )
            problem = layout_problem(handle)
            if problem is not None:
                raise damaged(path, problem)
    except BaseException:
        handle.close()
        raise
    return handle


def file_stats(handle: h5py.File) -> np.ndarray:
    """The ``file_*`` datasets as one :data:`FILE_STAT_DTYPE` array (every row unknown in a
    version 1 file, which has none)."""
    rows = int(handle["paths"].shape[0])
    out = np.empty(rows, FILE_STAT_DTYPE)
    out[:] = UNKNOWN_STAT
    if all(name in handle for name in FILE_STAT_DATASETS):
        for name, column in FILE_STAT_DATASETS.items():
            out[column] = handle[name][:]
    return out


def strings(dataset: Any) -> list[str]:
    """A string dataset as a list of ``str``."""
    return [str(v) for v in dataset.asstr()[:]] if len(dataset) else []


def plain_attrs(attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def read_rows(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for any row order, reading one slice when rows are contiguous."""
    if len(rows) == 0:
        return np.zeros((0, *dataset.shape[1:]), dataset.dtype)
    low, high = int(rows.min()), int(rows.max())
    if high - low + 1 <= 2 * len(rows):
        return np.asarray(dataset[low : high + 1])[rows - low]
    unique, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(dataset[unique])[inverse]
