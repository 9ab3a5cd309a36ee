"""Rewriting the split of every row of a cache in place, atomically (``audit --fix-splits``).

The file is copied next to itself (``NAME.tmp-PID``), the copy's ``split`` dataset and
attributes are written, the copy is reopened and checked (same rows, same features bytes
in its last row, the new splits), flushed and renamed over the original: a crash leaves the
old file or the new one. Only ``split`` and the attributes change; every other dataset is
copied byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CacheError
from .format import first_line, guarded, is_disk_full, layout_problem, open_h5

SPLITS_FIXED_ATTR = "splits_fixed"
"""Root attribute: JSON list of every split rewrite (when, what moved, why)."""


def rewrite_splits(path: str | os.PathLike[str], split: np.ndarray, note: dict[str, Any]) -> None:
    """Replace the ``split`` of every row with ``split`` and append ``note`` (plus the time)
    to the ``splits_fixed`` attribute. The caller holds the cache's lock."""
    path = Path(path)
    new = np.asarray(split, np.uint8).reshape(-1)
    with open_h5(path) as handle, guarded(path):
        rows = int(handle["paths"].shape[0])
    if len(new) != rows:
        raise CacheError(f"{path}: {len(new)} splits for {rows} rows")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        try:
            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "r+") as out:
                out["split"][:] = new
                history = json.loads(str(out.attrs.get(SPLITS_FIXED_ATTR, "[]")) or "[]")
                now = datetime.now(UTC).isoformat(timespec="seconds")
                history.append({"at": now, **note})
                out.attrs[SPLITS_FIXED_ATTR] = json.dumps(history)
                out.attrs["updated"] = now
            with h5py.File(tmp, "r") as check:
                problem = layout_problem(check, rows)
                if problem is None and not np.array_equal(check["split"][:], new):
                    problem = "the new splits did not read back"
                if problem is None and rows:
                    check["features"][rows - 1]
            if problem is not None:
                raise CacheError(f"{path}: the rewritten copy is not whole ({problem}); unchanged")
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not is_disk_full(exc):
                raise
            raise CacheError(f"could not write {path} ({first_line(exc)}); unchanged") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
