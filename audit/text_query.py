"""Texts in a cache's image-text space: ``embed_text``, and the image embeddings they are
compared with.

The text tower is the one of the preset the cache records (CLIP or SigLIP; see
:mod:`featcache.backbones.text_tower`), loaded once per process and kept for later calls.
"""

from __future__ import annotations

import os

import numpy as np

from ..backbones.text_tower import DEFAULT_TEXT_BATCH, cached_tower, normalise
from ..store import CacheReader, open_cache


def embed_text(
    texts: str | list[str],
    cache: str | os.PathLike[str] | CacheReader,
    normalize: bool = True,
    batch_size: int = DEFAULT_TEXT_BATCH,
) -> np.ndarray:
    """``(N, P)`` float32 embeddings of ``texts`` in the image-text space of ``cache``'s
    CLIP or SigLIP preset (unit rows unless ``normalize`` is False), comparable with the
    cache's image embeddings (:func:`image_embeddings`).

    >>> embed_text(["a red bicycle on a beach"], "cache/clip.h5").shape  # doctest: +SKIP
    (1, 512)
    """
    reader = cache if isinstance(cache, CacheReader) else open_cache(cache)
    tower = cached_tower(reader.settings)
    items = [texts] if isinstance(texts, str) else list(texts)
    out = tower.encode(items, batch_size)
    return normalise(out) if normalize else out


def image_embeddings(
    cache: str | os.PathLike[str] | CacheReader, rows: np.ndarray | None = None
) -> np.ndarray:
    """Unit image embeddings of a cache's rows in its preset's image-text space (a CLIP
    cache of class tokens is projected here)."""
    reader = cache if isinstance(cache, CacheReader) else open_cache(cache)
    tower = cached_tower(reader.settings)
    return normalise(tower.image_vectors(reader.features(rows)))
