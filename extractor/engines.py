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

import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..backbones.backbone import (
    FeatureExtractor,
    check_taps,
    ensure_tensorflow_backend,
    resolve_backbone,
)
from ..backbones.resize import resize_batch
from ..core.options import DEFAULT_MAX_PIXELS, ExtractOptions
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import InvalidOptionError, WeightsError
from .decode import decode_pixels, resize_image
from .reader import Known, Prepared, read_items
from .recorder import Recorder
from .sources import Dataset
from .views import embed_views
from .weights_check import check_weights


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
            taps = None
            if options.tap_list:  # the taps' columns follow the features' (one pass)
                features, taps = self._split(features)
            good = [p for p, reason in zip(batch, reasons) if reason is None]
            for prepared, reason in zip(batch, reasons):
                if reason is not None:
                    recorder.bad(prepared.item, reason)
            views = self._views(good, options) if options.view_count > 1 and good else None
            recorder.embedded(
                [p.item for p in good], [p.sha256 for p in good], features, views, taps
            )
            batch.clear()

        if hasattr(self.embedder, "on_loading"):  # a status line while the model loads
            self.embedder.on_loading = recorder.loading
        prepare = self.embedder.prepare
        with closing(read_items(dataset, known, options.threads, options.window, prepare)) as reads:
            for prepared in recorder.triage(reads):
                batch.append(prepared)
                if len(batch) >= options.batch_size:
                    flush()
        flush()

    def _split(self, wide: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The features and each tap's, from the model's rows (:meth:`FeatureExtractor.split`)."""
        split = getattr(self.embedder, "split", None)
        if split is None:
            raise InvalidOptionError(
                f"taps: {type(self.embedder).__name__} embeds the last layer only", "taps"
            )
        features, taps = split(wide)
        return features, taps

    def _views(self, good: list[Prepared], options: ExtractOptions) -> np.ndarray:
        """Embeddings of views 1+ of ``good`` (:mod:`.views`), with the embedder's
        ``embed_images`` (float32 images at the input size -> features)."""
        embed_images = getattr(self.embedder, "embed_images", None)
        if embed_images is None:
            raise InvalidOptionError(
                f"views {options.view_count}: {type(self.embedder).__name__} embeds plain "
                "images only",
                "views",
            )
        size, mode = self.settings.image_size, self.settings.resize
        images = as_inputs([p.payload for p in good], size, mode, self.settings.decode)
        if options.tap_list:  # views of the features only
            width = self.feature_dim
            whole = embed_images
            embed_images = lambda x: whole(x)[:, :width]  # noqa: E731
        return embed_views(
            embed_images,
            images,
            [p.sha256 for p in good],
            options.view_count,
            options.view_augment,
            options.view_seed,
            options.batch_size,
        )


def as_input(
    image: np.ndarray, size: tuple[int, int], mode: str, decode: str = "exact"
) -> np.ndarray:
    """A decoded image as the backbone's float32 input (resized unless it already is)."""
    if image.dtype == np.float32 and tuple(image.shape[:2]) == tuple(size):
        return image
    return resize_image(image, size, mode, decode)


def as_inputs(
    images: list[np.ndarray], size: tuple[int, int], mode: str, decode: str = "exact"
) -> np.ndarray:
    """:func:`as_input` of every image, stacked: uint8 images of one size are resized in
    one TensorFlow call (the same kernel, image by image, as resizing each alone)."""
    first = images[0]
    if first.dtype == np.uint8 and all(
        i.dtype == np.uint8 and i.shape == first.shape for i in images
    ):
        if tuple(first.shape[:2]) != tuple(size):
            return np.asarray(resize_batch(np.stack(images), size[0], size[1], mode, decode))
    return np.stack([as_input(image, size, mode, decode) for image in images])


class LocalEmbedder:
    """The frozen backbone in this process, built on the first batch that needs it.

    Reader threads decode; images no larger than twice the model's input stay uint8 and
    unresized when they share one size (the model's, or the first image's), and are
    resized, cast and preprocessed in the model's graph a batch at a time. Others are
    resized on the reader threads. Either way the features are those of
    :func:`~.decode.decode_and_resize`.
    """

    def __init__(
        self,
        config: BackboneConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        taps: tuple[str, ...] = (),
    ) -> None:
        self.settings = resolve_backbone(config)
        check_taps(self.settings, taps)
        self.taps = taps
        """Layers embedded beside the features (``extract --taps``)."""
        self.max_pixels = max_pixels
        self.import_seconds = 0.0
        """Time spent importing TensorFlow for this run (0 when it was already imported)."""
        self.build_seconds = 0.0
        self._model: FeatureExtractor | None = None
        self._import_lock = threading.Lock()
        self._imported = False
        self._failure: WeightsError | None = None
        self._common_size: tuple[int, int] | None = None
        self.on_loading: Callable[[str], None] | None = None
        """Told ``loading <backbone> (TensorFlow)…`` when the model starts loading."""
        if self.settings.spec is None:  # saved model: its input size is needed up front
            self.model()

    @property
    def load_seconds(self) -> float:
        """Importing TensorFlow, building the backbone, loading weights and tracing."""
        traced = self._model.trace_seconds if self._model is not None else 0.0
        return self.import_seconds + self.build_seconds + traced

    def model(self) -> FeatureExtractor:
        """The feature extractor, built (and timed) on first use."""
        if self._model is None:
            self._loading()
            self._import_tensorflow()
            began = time.monotonic()
            self._model = FeatureExtractor(self.settings, self.taps)
            self.settings = self._model.resolved
            self.build_seconds = time.monotonic() - began
        return self._model

    def _import_tensorflow(self) -> None:
        """Import TensorFlow once, timed: a run that embeds nothing never pays for it."""
        if self._imported:
            return
        with self._import_lock:
            if self._failure is not None:
                raise self._failure
            if not self._imported:
                try:
                    check_weights(self.settings)  # fail in one line before TensorFlow loads
                except WeightsError as exc:
                    self._failure = exc
                    raise
                self._loading()
                began = time.monotonic()
                ensure_tensorflow_backend()
                import tensorflow  # noqa: F401

                self.import_seconds = time.monotonic() - began
                self._imported = True

    def _loading(self) -> None:
        if self.on_loading is not None:
            name = Path(self.settings.backbone).name or self.settings.backbone
            self.on_loading(f"loading {name} (TensorFlow)…")

    @property
    def feature_dim(self) -> int:
        return self.model().feature_dim

    def split(self, wide: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The features and each tap's from the model's rows."""
        return self.model().split(wide)

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        self._import_tensorflow()
        settings = self.settings
        target = (settings.image_size, settings.resize) if settings.decode == "fast" else None
        pixels = decode_pixels(content, self.max_pixels, target)
        if pixels.dtype == np.uint8 and self._batchable(pixels.shape):
            return pixels
        return resize_image(pixels, settings.image_size, settings.resize, settings.decode)

    def _batchable(self, shape: tuple[int, ...]) -> bool:
        """Whether an image of ``shape`` waits, uint8 and unresized, for the graph."""
        size = (int(shape[0]), int(shape[1]))
        target = self.settings.image_size
        if size == target:
            return True
        if size[0] * size[1] > 2 * target[0] * target[1]:
            return False  # resized on the reader thread: less memory in the window
        if self._common_size is None:
            self._common_size = size  # a race only makes a batch mixed, which is handled
        return size == self._common_size

    def embed(self, prepared: list[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        model = self.model()
        first = prepared[0]
        if first.dtype == np.uint8 and all(
            p.dtype == np.uint8 and p.shape == first.shape for p in prepared
        ):
            return model.embed_pixels(np.stack(prepared)), [None] * len(prepared)
        size, mode, decode = self.settings.image_size, self.settings.resize, self.settings.decode
        images = [
            p
            if p.dtype == np.float32 and p.shape[:2] == size
            else resize_image(p, size, mode, decode)
            for p in prepared
        ]
        return model(np.stack(images)), [None] * len(prepared)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Embed float32 ``(N, H, W, 3)`` images at the input size (augmented views)."""
        return self.model()(images)
