"""The server's loaded backbones: built once, shared by every request, least recently used
unloaded first. Each has its own :class:`~.batcher.Batcher` (one inference thread)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import numpy as np

from ..backbones.backbone import FeatureExtractor, check_taps, resolve_backbone
from ..core.options import DEFAULT_MAX_PIXELS
from ..core.settings import BackboneConfig, FeatureSettings
from ..core.views import views_per_image
from ..errors import AccessDenied
from ..extractor.decode import decode_and_resize, decode_or_reason
from ..extractor.weights_check import check_weights
from .batcher import Batcher, BatcherClosed
from .convert import ResourceExhausted, mib
from .options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_MAX_LOADED,
    DEFAULT_MAX_WAIT,
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


DECODE_BYTES_PER_PIXEL = 8
"""Peak bytes per pixel of decoding one image at full size (8-bit RGB and the decoder's and
resizer's working copies)."""


class MemoryBudget:
    """Estimated bytes of decoded images and features in flight, shared by every call.

    Requests reserve their estimate before decoding anything: more than the whole budget is
    refused at once, more than what is free waits (bounded) for other requests to finish.
    """

    def __init__(self, limit: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()
        slots = max(1, limit // (max(1, max_pixels) * DECODE_BYTES_PER_PIXEL))
        self.decoding = threading.BoundedSemaphore(slots)
        """Full-size decodes at once: each may take ``max_pixels`` images before resizing,
        which the per-request estimates (of resized images) do not count."""

    def check(self, nbytes: int, what: str) -> None:
        """Refuse ``what`` when it alone needs more than the budget."""
        if nbytes > self.limit:
            raise ResourceExhausted(
                f"{what} needs about {mib(nbytes)} of memory; this server allows "
                f"{mib(self.limit)} (max_inflight_mb)"
            )

    @contextmanager
    def hold(
        self,
        nbytes: int,
        what: str,
        wait: float = DEFAULT_MAX_WAIT,
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[None]:
        """Reserve ``nbytes`` while the block runs, waiting at most ``wait`` seconds."""
        self.check(nbytes, what)
        deadline = time.monotonic() + wait
        with self._cond:
            while self.used + nbytes > self.limit:
                left = deadline - time.monotonic()
                if not active():
                    raise CancelledError()
                if left <= 0:
                    raise ResourceExhausted(
                        f"{what}: the server's memory (max_inflight_mb) is in use by other "
                        "calls; try again later"
                    )
                self._cond.wait(min(left, 1.0))
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


def input_bytes(image_size: tuple[int, int]) -> int:
    """Bytes of one decoded image: float32 RGB at the model's input size."""
    return image_size[0] * image_size[1] * 3 * 4


def request_bytes(images: int, image_size: tuple[int, int], feature_dim: int) -> int:
    """Memory an ``Embed``/``Classify`` request reserves: its images decoded, its rows."""
    return images * (input_bytes(image_size) + feature_dim * 4)


def reply_bytes(images: int, feature_dim: int) -> int:
    """An upper bound on the size of a reply of ``images`` rows (float32, framing)."""
    return images * (feature_dim * 4 + 16) + 4096


class _Loading:
    """A model being built: waiters for the same settings wait on it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


def _same_weights(a: FeatureSettings, b: FeatureSettings) -> bool:
    """Same backbone and weights (files by content; random weights by seed)."""
    if (a.backbone, a.backbone_sha256, a.weights_sha256) != (
        b.backbone,
        b.backbone_sha256,
        b.weights_sha256,
    ):
        return False
    if a.weights_sha256:
        return True
    return a.weights == b.weights and (a.weights != "none" or a.seed == b.seed)


class ModelPool:
    """Loaded backbones by settings: at most ``max_loaded`` loaded or loading at once.

    A request that needs another model unloads the least recently used idle one; while all
    are in use it waits up to ``wait`` seconds, then gets :class:`ResourceExhausted`. A build
    that fails is forgotten (the next request tries again).
    """

    def __init__(
        self,
        max_loaded: int = DEFAULT_MAX_LOADED,
        options: BatchOptions | None = None,
        wait: float = DEFAULT_MAX_WAIT,
        allowed: set[str] | None = None,
        fixed: list[FeatureSettings] | None = None,
    ) -> None:
        self.max_loaded = max(1, max_loaded)
        self.options = options or BatchOptions()
        self.wait = wait
        self.allowed = allowed
        """Backbones requests may use (registry names, saved models' absolute paths)."""
        self.fixed = fixed
        """With a list, requests may use only these backbones and weights."""
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, _Loading] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def loaded(self) -> list[LoadedModel]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def permit(self, resolved: FeatureSettings) -> None:
        """Refuse backbones outside ``allowed`` and weights outside ``fixed``."""
        shown = resolved.backbone.rsplit("/", 1)[-1]
        if self.allowed is not None and resolved.backbone not in self.allowed:
            raise AccessDenied(f"backbone {shown!r}: not served here (allow_backbone)")
        if self.fixed is not None and not any(_same_weights(resolved, f) for f in self.fixed):
            weights = resolved.weights.rsplit("/", 1)[-1]
            raise AccessDenied(
                f"weights {weights!r} of backbone {shown!r}: this server serves only its "
                "preloaded weights (fixed_weights)"
            )

    @contextmanager
    def use(
        self,
        config: BackboneConfig,
        active: Callable[[], bool] = lambda: True,
        timeout: float | None = None,
        taps: tuple[str, ...] = (),
    ) -> Iterator[LoadedModel]:
        """The model for ``config``, loading it if needed; not unloaded while in use.

        Waits for a free slot at most ``min(wait, timeout)`` seconds, and only while
        ``active()``. ``taps`` (an ``ExtractDataset`` job's): a model that also gives
        those layers' features (a model of its own, never one that ``Embed`` uses).
        """
        model = self._get(config, active, self.wait if timeout is None else timeout, taps)
        try:
            yield model
        finally:
            with self._cond:
                model.users -= 1
                self._evict()
                self._cond.notify_all()

    def _get(
        self,
        config: BackboneConfig,
        active: Callable[[], bool],
        wait: float,
        taps: tuple[str, ...] = (),
    ) -> LoadedModel:
        resolved = resolve_backbone(config)  # validates options before any loading
        self.permit(resolved)
        check_taps(resolved, taps)
        key = resolved.model_key() + (f"#taps={','.join(taps)}" if taps else "")
        deadline = time.monotonic() + min(wait, self.wait)
        with self._cond:
            while True:
                model = self._lookup(key)
                if model is not None:
                    return model
                pending = self._loading.get(key)
                if pending is None and (
                    len(self._models) + len(self._loading) < self.max_loaded or self._evict_one()
                ):
                    pending = self._loading[key] = _Loading()
                    break
                if not active():
                    raise CancelledError()
                left = deadline - time.monotonic()
                if pending is None and left <= 0:
                    raise ResourceExhausted(
                        f"all {self.max_loaded} model slots (max_loaded) are in use by other "
                        "settings; try again later"
                    )
                self._cond.wait(min(left, 1.0) if pending is None else 1.0)
                if pending is not None and pending.error is not None:
                    raise pending.error
        try:
            began = time.monotonic()
            check_weights(resolved)
            model = LoadedModel(FeatureExtractor(resolved, taps), self.options)
        except BaseException as exc:
            with self._cond:
                pending.error = exc
                del self._loading[key]
                self._cond.notify_all()
            raise
        log.info(
            "loaded %s (%s, %dx%d) in %.1f s",
            resolved.backbone,
            resolved.weights.rsplit("/", 1)[-1],
            *model.image_size,
            time.monotonic() - began,
        )
        with self._cond:
            del self._loading[key]
            self._models[key] = model
            model.users += 1
            self._cond.notify_all()
        return model

    def _lookup(self, key: str) -> LoadedModel | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            model.users += 1
        return model

    def _evict_one(self) -> bool:
        """Unload the least recently used idle model; False when every one is in use."""
        for key, model in self._models.items():
            if model.users == 0:
                del self._models[key]
                model.batcher.close()
                log.info("unloaded %s (least recently used)", model.settings.backbone)
                return True
        return False

    def _evict(self) -> None:
        """Unload idle models, oldest first, while more than ``max_loaded`` are loaded."""
        while len(self._models) + len(self._loading) > self.max_loaded and self._evict_one():
            pass

    def close(self) -> None:
        """Unload everything after the queued requests finish."""
        with self._cond:
            models = list(self._models.values())
            self._models.clear()
            self._cond.notify_all()
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
    gate: threading.BoundedSemaphore | None = None,
    decode: str = "exact",
) -> tuple[np.ndarray, list[str | None]]:
    """Decode, resize and run images through ``model``'s batcher, ``max_batch`` at a time;
    ``gate`` bounds the full-size decodes running at once (:attr:`MemoryBudget.decoding`);
    ``decode`` is the decode mode (:data:`~featcache.core.options.DECODE_MODES`).

    Returns the outputs of the usable images and one reason (or None) per image.
    """

    def prepare(content: bytes | np.ndarray) -> np.ndarray:
        with gate or nullcontext():
            return decode_and_resize(content, model.image_size, resize, max_pixels, decode)

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
        self.decode = str(getattr(resize, "decode", "exact"))
        self.feature_dim = len(self.class_names)
        model = self.model
        self.batcher = Batcher(
            lambda images: np.asarray(model(images, training=False), np.float32),
            # a model averaging test views runs each image that many times: fewer per batch
            max(1, options.max_batch // views_per_image(model)),
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
        gate: threading.BoundedSemaphore | None = None,
    ) -> None:
        self.model = model
        self.settings = model.settings_for(config)
        self.max_pixels = max_pixels
        self.active = active
        self.gate = gate

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        settings = self.settings
        with self.gate or nullcontext():
            return decode_and_resize(
                content, settings.image_size, settings.resize, self.max_pixels, settings.decode
            )

    def embed(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        return self.model.batcher.run(np.stack(prepared), self.active), [None] * len(prepared)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Embed float32 images at the input size (a job's augmented views)."""
        return self.model.batcher.run(images, self.active)

    def split(self, wide: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The features and each tap's, from a taps model's rows."""
        return self.model.extractor.split(wide)


__all__ = [
    "BatchOptions",
    "BatcherClosed",
    "Classifier",
    "ClassifierLoader",
    "LoadedModel",
    "MemoryBudget",
    "ModelPool",
    "PoolEmbedder",
]
