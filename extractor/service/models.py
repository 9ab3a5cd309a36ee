"""The server's loaded backbones: built once, shared by every request, least recently used
unloaded first. Each has its own :class:`~.batcher.Batcher` (one inference thread)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from ..backbone import FeatureExtractor, resolve_backbone
from ..decode import decode_and_resize, decode_or_reason
from ..options import DEFAULT_MAX_PIXELS
from ..settings import BackboneConfig, FeatureSettings
from .batcher import Batcher, BatcherClosed
from .options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_MAX_LOADED,
    ClassifierLoader,
)

log = logging.getLogger("featcache.serve")


@dataclass(frozen=True)
class BatchOptions:
    """How requests are merged into model calls."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_delay: float = DEFAULT_MAX_DELAY_MS / 1000
    """Seconds the inference thread waits for more requests to fill a batch."""
    merge: bool = True
    """False runs every request on its own (for comparison)."""


class LoadedModel:
    """A built feature extractor and the batcher in front of it."""

    def __init__(self, extractor: FeatureExtractor, options: BatchOptions) -> None:
        self.extractor = extractor
        self.settings: FeatureSettings = extractor.resolved
        """Resolved settings of the request that loaded it (see :meth:`settings_for`)."""
        self.feature_dim = extractor.feature_dim
        self.image_size = self.settings.image_size
        self.users = 0
        self.batcher = Batcher(
            extractor,
            options.max_batch,
            options.max_delay,
            options.merge,
            name=self.settings.backbone.rsplit("/", 1)[-1],
        )

    def settings_for(self, config: BackboneConfig) -> FeatureSettings:
        """The settings of features this model makes for ``config``: the request's own
        (its files' paths, seed and resize; requests share a model when only those differ)
        with the model's input size and width."""
        return replace(
            resolve_backbone(config),
            image_size=self.image_size,
            feature_dim=self.feature_dim,
        )


class ModelPool:
    """Loaded backbones by settings, at most ``max_loaded`` of them kept."""

    def __init__(
        self, max_loaded: int = DEFAULT_MAX_LOADED, options: BatchOptions | None = None
    ) -> None:
        self.max_loaded = max(1, max_loaded)
        self.options = options or BatchOptions()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[LoadedModel]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    @contextmanager
    def use(self, config: BackboneConfig) -> Iterator[LoadedModel]:
        """The model for ``config``, loading it if needed; not unloaded while in use."""
        model = self._get(config)
        try:
            yield model
        finally:
            with self._lock:
                model.users -= 1
                self._evict()

    def _get(self, config: BackboneConfig) -> LoadedModel:
        resolved = resolve_backbone(config)  # validates options before any loading
        key = resolved.model_key()
        with self._lock:
            model = self._lookup(key)
            if model is not None:
                return model
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key; other keys load in parallel
            with self._lock:
                model = self._lookup(key)
                if model is not None:
                    return model
            began = time.monotonic()
            extractor = FeatureExtractor(resolved)
            model = LoadedModel(extractor, self.options)
            log.info(
                "loaded %s (%s, %dx%d) in %.1f s",
                resolved.backbone,
                resolved.weights.rsplit("/", 1)[-1],
                *model.image_size,
                time.monotonic() - began,
            )
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
                model.users += 1
                self._evict()
            return model

    def _lookup(self, key: str) -> LoadedModel | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            model.users += 1
        return model

    def _evict(self) -> None:
        """Unload idle models, oldest first, while more than ``max_loaded`` are loaded."""
        excess = len(self._models) - self.max_loaded
        for key in list(self._models):
            if excess <= 0:
                break
            model = self._models[key]
            if model.users == 0:
                del self._models[key]
                model.batcher.close()
                log.info("unloaded %s (least recently used)", model.settings.backbone)
                excess -= 1

    def close(self) -> None:
        """Unload everything after the queued requests finish."""
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.batcher.close()
        for model in models:
            model.batcher.join(60)


def embed_contents(
    model: LoadedModel | Classifier,
    contents: list[bytes | np.ndarray],
    resize: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    active: Callable[[], bool] = lambda: True,
    timeout: Callable[[], float | None] = lambda: None,
) -> tuple[np.ndarray, list[str | None]]:
    """Decode, resize and run images through ``model``'s batcher, ``max_batch`` at a time.

    Returns the outputs of the usable images and one reason (or None) per image.
    """

    def prepare(content: bytes | np.ndarray) -> np.ndarray:
        return decode_and_resize(content, model.image_size, resize, max_pixels)

    reasons: list[str | None] = []
    parts: list[np.ndarray] = []
    step = model.batcher.max_batch
    for start in range(0, len(contents), step):
        pixels = []
        for content in contents[start : start + step]:
            decoded, reason = decode_or_reason(prepare, content)
            reasons.append(reason)
            if decoded is not None:
                pixels.append(decoded)
        if pixels:
            parts.append(model.batcher.run(np.stack(pixels), active, timeout()))
    if not parts:
        return np.zeros((0, model.feature_dim), np.float32), reasons
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), reasons


class Classifier:
    """A model from ``export`` or ``fine-tune`` (images -> probabilities) behind a batcher."""

    def __init__(self, name: str, path: str, options: BatchOptions, load: ClassifierLoader) -> None:
        began = time.monotonic()
        self.name = name
        self.model, self.class_names, _ = load(path)
        resize = self.model.get_layer("resize")
        self.image_size = (int(resize.height), int(resize.width))
        self.resize = str(resize.mode)
        self.feature_dim = len(self.class_names)
        model = self.model
        self.batcher = Batcher(
            lambda images: np.asarray(model(images, training=False), np.float32),
            options.max_batch,
            options.max_delay,
            options.merge,
            name=name,
        )
        self.batcher.run(np.zeros((1, *self.image_size, 3), np.float32))  # trace now
        log.info("loaded classifier %s from %s in %.1f s", name, path, time.monotonic() - began)


class PoolEmbedder:
    """An :class:`~featcache.extractor.engines.Embedder` over a loaded model, so that a
    server's ``ExtractDataset`` jobs share its models and batching."""

    def __init__(
        self,
        model: LoadedModel,
        config: BackboneConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.model = model
        self.settings = model.settings_for(config)
        self.max_pixels = max_pixels
        self.active = active

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        settings = self.settings
        return decode_and_resize(content, settings.image_size, settings.resize, self.max_pixels)

    def embed(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        return self.model.batcher.run(np.stack(prepared), self.active), [None] * len(prepared)


__all__ = [
    "BatchOptions",
    "BatcherClosed",
    "Classifier",
    "ClassifierLoader",
    "LoadedModel",
    "ModelPool",
    "PoolEmbedder",
]
