"""Where the pipeline's batches are embedded: in this process, or somewhere else.

An :class:`Embedder` has two halves. :meth:`~Embedder.prepare` runs in the reader
threads on one image's raw content (file bytes or an array row); :meth:`~Embedder.embed`
runs on a batch of prepared images and returns the features of the usable ones and a
reason for each unusable one. The local embedder decodes in ``prepare`` and runs the
frozen backbone in ``embed``; the remote one (``featcache.extractor.service.remote``)
ships the raw bytes to a server that does both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .backbone import BackboneConfig, FeatureExtractor, ResolvedBackbone, resolve_backbone
from .decode import DEFAULT_MAX_PIXELS, BadImageError, array_to_rgb, decode_image, resize_image


class Embedder(Protocol):
    """What :func:`featcache.extractor.pipeline.run_extraction` needs from a model."""

    resolved: ResolvedBackbone
    """The backbone settings the features come from (stored in the cache)."""
    resize: str

    @property
    def feature_dim(self) -> int:
        """Embedding width (may load the model)."""
        ...

    def prepare(self, content: bytes | np.ndarray) -> Any:
        """Turn raw content into what :meth:`embed` takes; raises ``BadImageError``."""
        ...

    def embed(self, prepared: list[Any]) -> tuple[np.ndarray, list[str | None]]:
        """Features of the usable images (in order) and one reason (or None) per image."""
        ...


def decode_and_resize(
    content: bytes | np.ndarray,
    size: tuple[int, int],
    resize: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """File bytes or an in-memory image to resized float32 ``(H, W, 3)`` pixels (0-255)."""
    if isinstance(content, np.ndarray):
        pixels = array_to_rgb(content)
    else:
        pixels = decode_image(content, max_pixels)
    return resize_image(pixels, size, resize)


def unreadable_reason(exc: OSError) -> str:
    """The bad-file reason recorded for a file that cannot be read."""
    return f"unreadable: {exc.strerror or exc}"


def prepare_safely(
    prepare: Callable[[bytes | np.ndarray], Any], content: bytes | np.ndarray
) -> tuple[Any, str | None]:
    """``(prepare(content), None)``, or ``(None, reason)`` when the image is unusable.

    One odd file must never stop a run, so every exception becomes a reason.
    """
    try:
        return prepare(content), None
    except BadImageError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "decode failed: out of memory"
    except Exception as exc:  # noqa: BLE001 - recorded as the file's reason
        return None, f"decode failed: {type(exc).__name__}: {exc}"


class LocalEmbedder:
    """The frozen backbone in this process, built on the first batch that needs it."""

    def __init__(
        self, config: BackboneConfig, resize: str, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.config = config
        self.resolved = resolve_backbone(config)
        self.resize = resize
        self.max_pixels = max_pixels
        self.load_seconds = 0.0
        self._model: FeatureExtractor | None = None
        if self.resolved.spec is None:  # saved model: its input size is needed up front
            self.model()

    def model(self) -> FeatureExtractor:
        """The feature extractor, built (and timed) on first use."""
        if self._model is None:
            import time

            began = time.monotonic()
            self._model = FeatureExtractor(self.resolved, self.config.seed)
            self.resolved = self._model.resolved
            self.load_seconds = time.monotonic() - began
        return self._model

    @property
    def feature_dim(self) -> int:
        return self.model().feature_dim

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        return decode_and_resize(content, self.resolved.image_size, self.resize, self.max_pixels)

    def embed(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        return self.model()(np.stack(prepared)), [None] * len(prepared)
