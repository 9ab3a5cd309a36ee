"""Exact cosine search over a cache: ``search(cache, image=... | row=..., k=10)``.

The index is the cache's features, L2-normalised float32, in ``CACHE.search.npy`` (read
memory-mapped) with ``CACHE.search.json`` saying which cache it was built from: the
cache's fingerprint, row count, size and modification time. Any difference rebuilds it,
so an index never answers for another cache state. A query scans the index in blocks
(:func:`~.neighbors.query_top_k`): exact, no approximate index (see README: search).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidOptionError
from ..extractor.cache import CacheReader
from ..extractor.options import invalid
from ..extractor.recorder import progress_bar
from ..extractor.splits import SPLIT_NAMES
from .neighbors import normalize, query_top_k
from .options import DEFAULT_SEARCH_K

INDEX_VERSION = 1


def index_paths(cache: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(CACHE.search.npy, CACHE.search.json)``."""
    path = Path(cache)
    return path.with_name(path.name + ".search.npy"), path.with_name(path.name + ".search.json")


def _identity(reader: CacheReader) -> dict[str, Any]:
    stat = reader.path.stat()
    return {
        "version": INDEX_VERSION,
        "fingerprint": reader.fingerprint,
        "rows": len(reader),
        "feature_dim": reader.feature_dim,
        "cache_size": stat.st_size,
        "cache_mtime_ns": stat.st_mtime_ns,
    }


def load_index(
    reader: CacheReader, rebuild: bool = False, progress: bool | None = None
) -> tuple[np.ndarray, bool]:
    """The normalised features of ``reader``'s cache, memory-mapped, and whether they were
    (re)built now: built when missing, when ``rebuild``, or when the cache changed."""
    array_path, meta_path = index_paths(reader.path)
    want = _identity(reader)
    if not rebuild and array_path.is_file() and meta_path.is_file():
        try:
            found = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            found = None
        if found == want:
            index = np.load(array_path, mmap_mode="r")
            if index.shape == (want["rows"], want["feature_dim"]):
                return index, False
    meta_path.unlink(missing_ok=True)  # no meta: never trusted, even if the rest fails
    tmp = array_path.with_name(f"{array_path.name}.tmp-{os.getpid()}")
    bar = progress_bar(len(reader), progress, "index")
    try:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(reader), reader.feature_dim)
        )
        for rows, block in reader.batches(batch_size=8192):
            out[rows[0] : rows[-1] + 1] = normalize(block)
            bar.update(len(rows))
        out.flush()
        del out
        os.replace(tmp, array_path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    meta_tmp = meta_path.with_name(f"{meta_path.name}.tmp-{os.getpid()}")
    meta_tmp.write_text(json.dumps(want))
    os.replace(meta_tmp, meta_path)
    return np.load(array_path, mmap_mode="r"), True


@dataclass
class SearchResult:
    query: str
    """What was searched for: ``row 3``, or the image path (with its row when the cache
    holds the same content)."""
    hits: list[dict[str, Any]]
    """rank, row, path, class, split, similarity; best first."""
    index_built: bool

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "index_built": self.index_built, "hits": self.hits}


def search(
    cache: str | os.PathLike[str],
    image: str | os.PathLike[str] | None = None,
    row: int | None = None,
    k: int = DEFAULT_SEARCH_K,
    rebuild: bool = False,
    progress: bool | None = None,
) -> SearchResult:
    """The ``k`` rows of ``cache`` most similar (cosine) to ``image`` or to row ``row``.

    An image is embedded with the cache's own backbone settings (unless the cache already
    holds a row with its content: that row's features are used, and it is not excluded);
    a ``row`` query never returns the row itself.

    >>> search("cache/mobilenet.h5", row=3, k=5).hits[0]["path"]  # doctest: +SKIP
    """
    if k < 1 or k > 10_000:
        raise invalid("k", k, "expected 1 to 10000")
    if (image is None) == (row is None):
        raise InvalidOptionError("search needs an image or a row (one of them)", "row")
    reader = CacheReader(cache)
    if row is not None and not 0 <= row < len(reader):
        last = f"0 to {len(reader) - 1}" if len(reader) else "none: the cache is empty"
        raise invalid("row", row, f"expected {last}")
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise InvalidOptionError(f"image {str(path)!r}: no such file", "image")
    index, built = load_index(reader, rebuild, progress)
    exclude: int | None = None
    if row is not None:
        query, label = np.asarray(index[row]), f"row {row}"
        exclude = row
    else:
        query, label = _image_query(reader, index, Path(str(image)))
    if len(index) == 0:
        return SearchResult(label, [], built)
    sims, rows = next(query_top_k(index, query[None, :], k, exclude))
    names = reader.label_names(rows)
    hits = [
        {
            "rank": rank,
            "row": int(r),
            "path": reader.paths[int(r)],
            "class": names[rank - 1],
            "split": SPLIT_NAMES[int(reader.split[int(r)])],
            "similarity": float(s),
        }
        for rank, (r, s) in enumerate(zip(rows.tolist(), sims.tolist()), start=1)
    ]
    return SearchResult(label, hits, built)


def _image_query(reader: CacheReader, index: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """The normalised features of an image file, as the cache's backbone gives them."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha in reader.sha256:
        same = reader.sha256.index(sha)
        return np.asarray(index[same]), f"{path} (row {same}: same content)"
    from ..extractor.decode import BadImageError, decode_and_resize
    from ..heads.endtoend import rebuild_backbone

    extractor = rebuild_backbone(reader.settings)
    size = extractor.resolved.image_size
    try:
        pixels = decode_and_resize(data, size, reader.settings.resize)
    except BadImageError as exc:
        raise InvalidOptionError(f"image {str(path)!r}: {exc}", "image") from None
    features = np.asarray(extractor(pixels[None]), np.float32)
    stored = features.astype(reader.dtype).astype(np.float32)  # as the cache rounds them
    return normalize(stored)[0], str(path)
