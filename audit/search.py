"""Cosine search over a cache: ``search(cache, image=... | row=..., k=10)``.

The index is :func:`featcache.store.ann_index.open_ann`'s (the ``Search`` RPC uses it
too): the exact scan below ``exact_below`` rows or with ``exact=True``, a faiss IVF index
that fits ``index_memory`` above. This adds the image query, embedded by the backbone the
cache records (rebuilt by :func:`featcache.backbones.rebuild.rebuild_backbone`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import MAIN_TAP, invalid
from ..errors import InvalidOptionError
from ..store import CacheReader
from ..store.ann_index import Searcher, open_ann
from ..store.ann_plan import DEFAULT_EXACT_BELOW, DEFAULT_INDEX_MEMORY, parse_memory
from ..store.opening import with_tap
from ..store.reader_cache import read_held
from ..store.search_index import (
    index_paths,
    load_index,
    normalize,
    ranked_hits,
    search_tap,
)
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
    """The index was built now (not found current, nor updated)."""
    index: str = "exact"
    """What answered: ``exact``, ``ivf-flat``, ``ivf-sq8`` or ``ivf-pq``; for a text query
    on a CLIP cache of class tokens ``exact-projected`` (every row projected and scanned)."""
    index_status: str = "loaded"
    """``loaded``, ``built`` or ``updated`` (only the rows the cache gained or lost);
    ``scanned`` with ``exact-projected``."""
    tap: str = MAIN_TAP
    """Whose features were searched: ``main`` (the cache's features) or a tap's name
    (``extract --taps``; ``a+b``: side by side)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "tap": self.tap,
            "index": self.index,
            "index_status": self.index_status,
            "index_built": self.index_built,
            "hits": self.hits,
        }


def search(
    cache: str | os.PathLike[str],
    image: str | os.PathLike[str] | None = None,
    row: int | None = None,
    k: int = DEFAULT_SEARCH_K,
    rebuild: bool = False,
    progress: bool | None = None,
    exact: bool = False,
    index_memory: int | str = DEFAULT_INDEX_MEMORY,
    exact_below: int = DEFAULT_EXACT_BELOW,
    index_kind: str = "auto",
    text: str | None = None,
    tap: str | None = None,
) -> SearchResult:
    """The ``k`` rows of ``cache`` most similar (cosine) to ``image``, to row ``row`` or
    to ``text``.

    An image is embedded with the cache's own backbone settings (unless the cache already
    holds a row with its content: that row's features are used, and it is not excluded);
    a ``row`` query never returns the row itself. From ``exact_below`` rows an
    approximate faiss index answers (recall@10 >= 0.95 against exact), the most accurate
    kind whose rows fit ``index_memory`` bytes (``2GB``), or ``index_kind`` when not
    ``auto``; ``exact`` scans every row.

    A ``text`` goes through the text tower of the cache's CLIP or SigLIP preset (a cache
    of its image embeddings: ``extract --projection``); a CLIP cache of class tokens is
    scanned exactly, each row projected into the shared space.

    ``tap`` searches the features of a tap of the cache (``extract --taps``; ``main``: the
    features; ``a+b``: side by side), with an index of their own
    (``CACHE.search@TAP.npy``, ...). An image is then embedded by the backbone up to that
    tap's layer (each of ``a+b``'s, side by side); a text cannot be searched in a tap's
    space (it is no image-text space).

    >>> search("cache/mobilenet.h5", row=3, k=5).hits[0]["path"]  # doctest: +SKIP
    """
    if not 1 <= k <= MAX_SEARCH_K:
        raise invalid("k", k, f"expected 1 to {MAX_SEARCH_K}")
    if sum(x is not None for x in (image, row, text)) != 1:
        raise InvalidOptionError("search needs an image, a row or a text (one of them)", "row")
    if text is not None and not text.strip():
        raise invalid("text", text, "expected some words")
    if image is not None and not Path(image).is_file():
        raise InvalidOptionError(f"image {str(image)!r}: no such file", "image")
    memory = parse_memory(index_memory)
    if exact_below < 0:
        raise invalid("exact_below", exact_below, "expected 0 or more")
    searched = search_tap(tap, image=image is not None, text=text is not None)

    def run(opened: CacheReader) -> SearchResult:
        reader = opened if searched == MAIN_TAP else with_tap(opened, searched)
        return replace(run_on(reader), tap=searched)

    def run_on(reader: CacheReader) -> SearchResult:
        if text is not None:
            tower = _text_tower(reader)
            if tower.projection is not None:  # the index holds unprojected class tokens
                from ..backbones.text_tower import projected_scan

                query = normalize(tower.encode([text]))[0]
                sims, rows = projected_scan(reader.batches(batch_size=65536), tower, query, k)
                hits = ranked_hits(reader, sims, rows)
                return SearchResult(f"text {text!r}", hits, False, "exact-projected", "scanned")
        searcher, how = open_ann(reader, exact, memory, exact_below, rebuild, progress, index_kind)
        return _search(reader, searcher, how, image, row, k, text)

    return read_held(cache, run)


def _search(
    reader: CacheReader,
    searcher: Searcher,
    how: str,
    image: str | os.PathLike[str] | None,
    row: int | None,
    k: int,
    text: str | None = None,
    tap: str | None = None,
) -> SearchResult:
    """:func:`search` over one opened state of the cache."""
    if row is not None and not 0 <= row < len(reader):
        last = f"0 to {len(reader) - 1}" if len(reader) else "none: the cache is empty"
        raise invalid("row", row, f"expected {last}")
    exclude: int | None = None
    if row is not None:
        query, label = searcher.row_vector(row), f"row {row}"
        exclude = row
    elif text is not None:
        query, label = normalize(_text_tower(reader).encode([text]))[0], f"text {text!r}"
    else:
        query, label = _image_query(reader, searcher, Path(str(image)))
    sims, rows = searcher.search(query[None, :], k, exclude)
    hits = ranked_hits(reader, sims[0], rows[0])
    return SearchResult(label, hits, how == "built", searcher.kind, how)


def _text_tower(reader: CacheReader) -> Any:
    from ..backbones.text_tower import cached_tower
    from ..store.joint import one_backbone

    one_backbone(reader, "a search by text")
    return cached_tower(reader.settings)


def _image_query(reader: CacheReader, searcher: Searcher, path: Path) -> tuple[np.ndarray, str]:
    """The normalised features of an image file, as the cache's backbone gives them (for
    a tap's reader: the backbone up to the tap's layer, with the cache's pooling)."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha in reader.sha256:
        same = reader.sha256.index(sha)
        return searcher.row_vector(same), f"{path} (row {same}: same content)"
    from ..backbones.rebuild import rebuild_backbone
    from ..extractor.decode import BadImageError, decode_and_resize
    from ..store.joint import one_backbone, stored_dtype

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
    stored = features.astype(stored_dtype(reader)).astype(np.float32)  # as the cache rounds them
    return normalize(stored)[0], str(path)
