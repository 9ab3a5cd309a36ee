"""The one way to open what a user names as a cache: a cache file, a manifest of shards
or of joined caches (:mod:`.manifest`), or several caches joined by content hash.

``train-head``, ``compare``, ``predict``, ``search``, ``audit``, ``plot``,
``export-features``, ``inspect`` and the ``Search`` RPC open their caches here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import CacheChangedError, InvalidOptionError
from .format import guarded, open_h5
from .joint import CacheArg, Caches, JointCache, cache_paths
from .manifest import KINDS, is_manifest, read_manifest, write_manifest
from .reader import MAIN_TAP, CacheData, CacheReader
from .sharded import ShardedCache

T = TypeVar("T")

__all__ = [
    "cache_info",
    "tap_names",
    "with_tap",
    "create_manifest",
    "open_cache",
    "open_caches",
    "read_cache",
    "read_fresh",
]


def open_cache(path: CacheArg, allowed: Callable[[Path], None] | None = None) -> CacheReader:
    """A :class:`CacheReader` for a cache file, a :class:`ShardedCache` or
    :class:`JointCache` for a manifest (recognised by its content).

    ``allowed(path)`` is called with each file a manifest names before it is opened (a
    server refuses those outside its cache root by raising)."""
    if not is_manifest(path):
        return CacheReader(path)
    manifest = read_manifest(path)
    if allowed is not None:
        for cache in manifest.caches:
            allowed(cache)
    members = [open_cache(c, allowed) for c in manifest.caches]
    if manifest.kind == "shards":
        return ShardedCache(manifest.path, members)
    if len(members) == 1:
        return members[0]
    return JointCache(members, manifest.path)


def open_caches(caches: Caches, tap: str | None = None) -> CacheReader:
    """:func:`open_cache` for one cache or manifest, a :class:`JointCache` for several;
    ``tap``: the features of that tap of one cache (:func:`with_tap`)."""
    paths = cache_paths(caches)
    if tap:
        if len(paths) != 1:
            raise InvalidOptionError(f"tap {tap!r}: taps are of one cache, not several", "tap")
        return with_tap(open_cache(paths[0]), tap)
    if len(paths) == 1:
        return open_cache(paths[0])
    return JointCache([open_cache(p) for p in paths])


def with_tap(reader: CacheReader, tap: str) -> CacheReader:
    """``reader`` with the features of one tap (``extract --taps``; ``main``: the
    features), or of several side by side (``a+b``: a :class:`JointCache` of them, named
    ``STEM@a+b``, whose ``settings.layer`` is their layers joined by ``+``: a model
    exported from a head trained on them ends at each of those layers)."""
    if isinstance(reader, JointCache | ShardedCache):
        raise InvalidOptionError(f"tap {tap!r}: taps are read from one cache file", "tap")
    names = [name.strip() for name in tap.split("+")]
    if len(names) == 1:
        return reader.tap(names[0])
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"tap {tap!r}: a tap is named twice", "tap")
    members = [reader.tap(n) for n in names]
    joint = JointCache(members, reader.path.parent / f"{reader.path.stem}@{tap}")
    layers = "+".join(m.settings.layer or MAIN_TAP for m in members)
    joint.settings = replace(
        members[0].settings, layer=layers, feature_dim=joint.feature_dim, views=1, augment=(),
        taps=(),
    )  # fmt: skip
    joint.attrs = {**joint.attrs, "layer": layers, "feature_dim": joint.feature_dim, "tap": tap}
    return joint


def tap_names(reader: CacheReader, taps: str) -> list[str]:
    """``all`` (``main`` and every tap of the cache) or a comma list of tap names, each
    checked to be in the cache."""
    if taps.strip() == "all":
        return [MAIN_TAP, *reader.taps]
    names = [name.strip() for name in taps.split(",") if name.strip()]
    for name in names:
        reader.tap(name)  # DatasetError naming the cache's taps
    if not names:
        raise InvalidOptionError(f"taps {taps!r}: expected all or tap names", "taps")
    return names


def read_fresh(
    path: CacheArg,
    use: Callable[[CacheReader], T],
    attempts: int = 3,
    allowed: Callable[[Path], None] | None = None,
) -> T:
    """``use(open_cache(path, allowed))``, opened again when a run rewrote the cache (or a
    shard) meanwhile (:class:`~featcache.errors.CacheChangedError`), up to ``attempts``
    times."""
    for attempt in range(attempts):
        try:
            return use(open_cache(path, allowed))
        except CacheChangedError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def create_manifest(
    out: str | os.PathLike[str],
    caches: Sequence[CacheArg],
    kind: str = "shards",
    overwrite: bool = False,
) -> CacheReader:
    """Write a manifest at ``out`` naming ``caches`` (paths stored relative to ``out``'s
    folder) after opening them as the manifest will be: shards must agree on settings and
    hold no row twice; joined caches must share images. Returns the opened dataset.

    >>> create_manifest("cache/all.featcache.json", ["cache/a.h5", "cache/b.h5"])  # doctest: +SKIP
    """
    if kind not in KINDS:
        from ..errors import InvalidOptionError

        raise InvalidOptionError(f"kind {kind!r}: expected one of {', '.join(KINDS)}", "kind")
    paths = cache_paths(list(caches))
    members = [open_cache(p) for p in paths]
    where = Path(out)
    if kind == "shards":
        ShardedCache(where, members)
    elif len(members) > 1:
        JointCache(members, where)
    write_manifest(where, kind, paths, overwrite)
    return open_cache(where)


def cache_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``featcache inspect`` shows: rows, classes per split, bad files, settings; for
    a manifest also its shards (or joined caches) and notes."""
    reader = open_cache(path)
    info = reader.info()
    if isinstance(reader, JointCache):
        info["feature_dim"] = reader.feature_dim
        info["manifest"] = {"kind": "joint", "notes": list(reader.notes)}
        info["caches"] = [
            {"path": str(r.path), "rows": len(r), "feature_dim": r.feature_dim}
            for r in reader.readers
        ]
    return info


def read_cache(path: str | os.PathLike[str], features: bool = True) -> CacheData:
    """Load a whole cache (or a manifest's dataset) into memory: features as stored (unless
    ``features=False``), labels, paths, splits. :func:`open_cache` reads only what is asked
    for."""
    reader = open_cache(path)
    stored = _stored(reader) if features else np.empty((0, reader.feature_dim))
    return CacheData(
        features=stored,
        labels=reader.labels.astype(np.int32),
        paths=reader.paths,
        sha256=reader.sha256,
        split=reader.split,
        class_names=reader.class_names,
        settings=reader.settings,
        attrs=reader.attrs,
        bad=reader.bad,
    )


def _stored(reader: CacheReader) -> np.ndarray:
    """Every row's features in the cache's storage type (float32 for joined caches)."""
    if isinstance(reader, ShardedCache):
        return np.concatenate([_stored(r) for r in reader.readers])
    if isinstance(reader, JointCache):
        return reader.features()
    with open_h5(reader.path) as handle, guarded(reader.path):
        return np.asarray(handle["features"][:])
