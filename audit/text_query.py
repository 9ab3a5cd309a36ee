"""Texts in a cache's image-text space: ``embed_text`` and the text query of ``search``.

The text tower is the one of the preset the cache records (CLIP or SigLIP; see
:mod:`featcache.backbones.text_tower`), loaded once per process and kept for later calls.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..backbones.text_tower import DEFAULT_TEXT_BATCH, TextTower, check_shared_space, normalise
from ..core.settings import FeatureSettings
from ..store import CacheReader, open_cache

_TOWERS: dict[str, TextTower] = {}
_LOCK = threading.Lock()
_MAX_TOWERS = 2


def text_tower(settings: FeatureSettings) -> TextTower:
    """The text tower of a cache's preset, loaded once per process (the last two kept)."""
    check_shared_space(settings)
    key = settings.model_key()
    with _LOCK:
        found = _TOWERS.get(key)
        if found is None:
            found = TextTower.load(settings)
            while len(_TOWERS) >= _MAX_TOWERS:
                _TOWERS.pop(next(iter(_TOWERS)))
            _TOWERS[key] = found
        return found


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
    tower = text_tower(reader.settings)
    items = [texts] if isinstance(texts, str) else list(texts)
    out = tower.encode(items, batch_size)
    return normalise(out) if normalize else out


def image_embeddings(
    cache: str | os.PathLike[str] | CacheReader, rows: np.ndarray | None = None
) -> np.ndarray:
    """Unit image embeddings of a cache's rows in its preset's image-text space (a CLIP
    cache of class tokens is projected here)."""
    reader = cache if isinstance(cache, CacheReader) else open_cache(cache)
    tower = text_tower(reader.settings)
    return normalise(tower.image_vectors(reader.features(rows)))


def projected_scan(
    reader: CacheReader, tower: TextTower, query: np.ndarray, k: int, batch: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first ``(similarities, rows)`` of a unit ``query`` over every row projected
    into the shared space (for caches whose index holds the unprojected features)."""
    best_sims = np.full(0, -np.inf, dtype=np.float32)
    best_rows = np.zeros(0, dtype=np.int64)
    for rows, features in reader.batches(batch_size=batch):
        sims = normalise(tower.image_vectors(features)) @ query
        sims = np.concatenate([best_sims, sims.astype(np.float32)])
        every = np.concatenate([best_rows, rows.astype(np.int64)])
        keep = np.argsort(-sims, kind="stable")[:k]
        best_sims, best_rows = sims[keep], every[keep]
    return best_sims, best_rows
