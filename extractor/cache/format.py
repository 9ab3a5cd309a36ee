"""The HDF5 cache file, format version 1: constants and opening a file safely.

Only the cache package (this module, :mod:`.reader` and :mod:`.writer`) opens HDF5 files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import CacheError

FORMAT = "featcache"
FORMAT_VERSION = 1
STRING = h5py.string_dtype("utf-8")


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


def open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open a cache read-only after checking that it is a featcache file we can read."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such cache file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"{path}: not a readable HDF5 file ({exc})") from None
    fmt = handle.attrs.get("format", b"")
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt != FORMAT:
        handle.close()
        raise CacheError(f"{path}: not a featcache cache (format attribute {fmt!r})")
    version = int(handle.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        handle.close()
        raise CacheError(
            f"{path}: cache format version {version} is newer than this featcache reads "
            f"({FORMAT_VERSION}); upgrade featcache"
        )
    return handle


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
