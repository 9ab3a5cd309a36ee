"""A manifest: one small JSON file naming several caches that read as one dataset.

``kind`` is ``shards`` (the caches are parts of one dataset, rows concatenated:
:class:`~.sharded.ShardedCache`) or ``joint`` (the same images under several backbones,
joined by content hash: :class:`~.joint.JointCache`). Cache paths are relative to the
manifest's folder, so a folder of shards and its manifest can move together::

    {"featcache_manifest": 1, "kind": "shards",
     "caches": ["part-0.h5", "part-1.h5", "part-2.h5"]}

A manifest is recognised by its content (a JSON object with ``featcache_manifest``), not by
its name; ``NAME.featcache.json`` is the suggested name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.files import check_new_output, written_file
from ..errors import DatasetError

MANIFEST_KEY = "featcache_manifest"
MANIFEST_VERSION = 1
KINDS = ("shards", "joint")
"""``shards``: rows of one dataset split over caches; ``joint``: one dataset, several
backbones (rows matched by content SHA-256)."""
_MAX_BYTES = 16 << 20
"""A manifest is small; a larger JSON file is not one."""


@dataclass(frozen=True)
class Manifest:
    """A manifest as read: its own path, its kind and its caches as paths to open."""

    path: Path
    kind: str
    caches: tuple[Path, ...]


def is_manifest(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts as JSON does (an HDF5 cache never does)."""
    try:
        with open(path, "rb") as file:
            start = file.read(64).lstrip()
    except OSError:
        return False
    return start.startswith(b"{")


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest at ``path``, checked: version, kind, at least one cache, none twice,
    every cache file present (:class:`DatasetError` naming the manifest otherwise)."""
    where = Path(path)
    try:
        if where.stat().st_size > _MAX_BYTES:
            raise DatasetError(f"{where}: larger than a manifest can be")
        data = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{where}: not a readable manifest ({exc})") from None
    if not isinstance(data, dict) or MANIFEST_KEY not in data:
        raise DatasetError(f"{where}: not a featcache manifest (no {MANIFEST_KEY!r} key)")
    version = data[MANIFEST_KEY]
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{where}: manifest version {version!r} is not a version")
    if version > MANIFEST_VERSION:
        raise DatasetError(
            f"{where}: manifest version {version} is newer than this featcache reads "
            f"({MANIFEST_VERSION}); upgrade featcache"
        )
    kind, names = data.get("kind"), data.get("caches")
    if kind not in KINDS:
        raise DatasetError(f"{where}: kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{where}: 'caches' must be a non-empty list of paths")
    caches = tuple(where.parent / name for name in names)
    _check_caches(where, caches)
    return Manifest(where, kind, caches)


def _check_caches(manifest: Path, caches: Sequence[Path]) -> None:
    seen: dict[Path, Path] = {}
    for cache in caches:
        if not cache.is_file():
            raise DatasetError(f"{manifest}: cache {cache} is missing")
        real = cache.resolve()
        if real in seen:
            raise DatasetError(f"{manifest}: cache {cache} is named twice (also as {seen[real]})")
        if real == manifest.resolve():
            raise DatasetError(f"{manifest}: names itself as a cache")
        seen[real] = cache


def manifest_text(out: Path, kind: str, caches: Sequence[str | os.PathLike[str]]) -> str:
    """The JSON of a manifest at ``out`` naming ``caches`` (paths relative to its folder)."""
    if kind not in KINDS:
        raise DatasetError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    folder = out.resolve().parent
    names = [os.path.relpath(Path(c).resolve(), folder) for c in caches]
    body = {MANIFEST_KEY: MANIFEST_VERSION, "kind": kind, "caches": names}
    return json.dumps(body, indent=2) + "\n"


def write_manifest(
    out: str | os.PathLike[str],
    kind: str,
    caches: Sequence[str | os.PathLike[str]],
    overwrite: bool = False,
) -> Path:
    """Write the manifest (a temporary name renamed into place; an existing file only with
    ``overwrite``). Check it first with :func:`~.opening.open_cache`: :func:`create_manifest`
    does both."""
    path = check_new_output(Path(out), overwrite)
    text = manifest_text(path, kind, caches)
    with written_file(path, overwrite) as file:
        file.write(text)
    return path
