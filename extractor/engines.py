"""The embed stage: where a run's new images are embedded.

Every engine follows one protocol, :class:`Engine`: it looks at every item of the dataset
and reports each one (reused, bad or embedded) to the :class:`~.recorder.Recorder`.
:class:`LocalEngine` is the read -> batch -> embed loop; what runs a batch is an
:class:`Embedder`: the backbone in this process (:class:`LocalEmbedder`), a server
(``service.remote.RemoteEmbedder``) or a server's pooled model
(``service.models.PoolEmbedder``). The Ray engine (:mod:`.ray_engine`) hands the new
images to an actor pool instead.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from .backbone import FeatureExtractor, resolve_backbone
from .decode import decode_and_resize
from .options import DEFAULT_MAX_PIXELS, ExtractOptions
from .reader import Known, Prepared, read_items
from .recorder import Recorder
from .settings import BackboneConfig, FeatureSettings
from .sources import Dataset


class Engine(Protocol):
    """Where a run's new images are embedded; it reports every image to the recorder."""

    @property
    def settings(self) -> FeatureSettings:
        """The settings the features come from (stored in the cache)."""
        ...

    @property
    def feature_dim(self) -> int:
        """Embedding width (may load the model)."""
        ...

    @property
    def load_seconds(self) -> float:
        """Time spent building the model (0 when it was not needed)."""
        ...

    def run(
        self, dataset: Dataset, known: Known, recorder: Recorder, options: ExtractOptions
    ) -> None:
        """Look at every item of ``dataset``: reused, bad or embedded, each reported once."""
        ...


class Embedder(Protocol):
    """Runs batches for :class:`LocalEngine`: ``prepare`` one image on a reader thread,
    ``embed`` a batch of prepared images."""

    @property
    def settings(self) -> FeatureSettings:
        """The settings the features come from."""
        ...

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


class LocalEngine:
    """The read -> batch -> embed loop over an :class:`Embedder`."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    @property
    def settings(self) -> FeatureSettings:
        return self.embedder.settings

    @property
    def feature_dim(self) -> int:
        return self.embedder.feature_dim

    @property
    def load_seconds(self) -> float:
        return float(getattr(self.embedder, "load_seconds", 0.0))

    def run(
        self, dataset: Dataset, known: Known, recorder: Recorder, options: ExtractOptions
    ) -> None:
        batch: list[Prepared] = []

        def flush() -> None:
            if not batch:
                return
            features, reasons = self.embedder.embed([p.payload for p in batch])
            good = [p for p, reason in zip(batch, reasons) if reason is None]
            for prepared, reason in zip(batch, reasons):
                if reason is not None:
                    recorder.bad(prepared.item, reason)
            recorder.embedded([p.item for p in good], [p.sha256 for p in good], features)
            batch.clear()

        reads = read_items(dataset, known, options.threads, options.window, self.embedder.prepare)
        for prepared in recorder.triage(reads):
            batch.append(prepared)
            if len(batch) >= options.batch_size:
                flush()
        flush()


class LocalEmbedder:
    """The frozen backbone in this process, built on the first batch that needs it."""

    def __init__(self, config: BackboneConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.settings = resolve_backbone(config)
        self.max_pixels = max_pixels
        self.load_seconds = 0.0
        self._model: FeatureExtractor | None = None
        if self.settings.spec is None:  # saved model: its input size is needed up front
            self.model()

    def model(self) -> FeatureExtractor:
        """The feature extractor, built (and timed) on first use."""
        if self._model is None:
            began = time.monotonic()
            self._model = FeatureExtractor(self.settings)
            self.settings = self._model.resolved
            self.load_seconds = time.monotonic() - began
        return self._model

    @property
    def feature_dim(self) -> int:
        return self.model().feature_dim

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        settings = self.settings
        return decode_and_resize(content, settings.image_size, settings.resize, self.max_pixels)

    def embed(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        return self.model()(np.stack(prepared)), [None] * len(prepared)
