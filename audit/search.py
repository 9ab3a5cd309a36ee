"""Exact cosine search over a cache: ``search(cache, image=... | row=..., k=10)``.

The index and the scan are :mod:`featcache.store.search_index` (the ``Search`` RPC uses
them too); this adds the image query, embedded by the backbone the cache records (rebuilt by
:func:`featcache.backbones.rebuild.rebuild_backbone`). Exact, no approximate index.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import invalid
from ..errors import InvalidOptionError
from ..store import CacheReader
from ..store.opening import read_fresh
from ..store.search_index import index_paths, load_index, normalize, rank_rows
from .options import DEFAULT_SEARCH_K, MAX_SEARCH_K

__all__ = ["SearchResult", "index_paths", "load_index", "search"]


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
    if not 1 <= k <= MAX_SEARCH_K:
        raise invalid("k", k, f"expected 1 to {MAX_SEARCH_K}")
    if (image is None) == (row is None):
        raise InvalidOptionError("search needs an image or a row (one of them)", "row")
    if image is not None and not Path(image).is_file():
        raise InvalidOptionError(f"image {str(image)!r}: no such file", "image")
    return read_fresh(cache, lambda reader: _search(reader, image, row, k, rebuild, progress))


def _search(
    reader: CacheReader,
    image: str | os.PathLike[str] | None,
    row: int | None,
    k: int,
    rebuild: bool,
    progress: bool | None,
) -> SearchResult:
    """:func:`search` over one opened state of the cache."""
    if row is not None and not 0 <= row < len(reader):
        last = f"0 to {len(reader) - 1}" if len(reader) else "none: the cache is empty"
        raise invalid("row", row, f"expected {last}")
    index, built = load_index(reader, rebuild, progress)
    exclude: int | None = None
    if row is not None:
        query, label = np.asarray(index[row]), f"row {row}"
        exclude = row
    else:
        query, label = _image_query(reader, index, Path(str(image)))
    return SearchResult(label, rank_rows(reader, index, query, k, exclude), built)


def _image_query(reader: CacheReader, index: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """The normalised features of an image file, as the cache's backbone gives them."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha in reader.sha256:
        same = reader.sha256.index(sha)
        return np.asarray(index[same]), f"{path} (row {same}: same content)"
    from ..backbones.rebuild import rebuild_backbone
    from ..extractor.decode import BadImageError, decode_and_resize
    from ..store.joint import one_backbone

    one_backbone(reader, "a search by image")

    extractor = rebuild_backbone(reader.settings)
    size = extractor.resolved.image_size
    try:
        pixels = decode_and_resize(
            data, size, reader.settings.resize, decode=reader.settings.decode
        )
    except BadImageError as exc:
        raise InvalidOptionError(f"image {str(path)!r}: {exc}", "image") from None
    features = np.asarray(extractor(pixels[None]), np.float32)
    stored = features.astype(reader.dtype).astype(np.float32)  # as the cache rounds them
    return normalize(stored)[0], str(path)
