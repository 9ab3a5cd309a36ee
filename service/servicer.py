"""The ``featcache.v1.Extractor`` servicer: unpack the request, call the Python API, pack
the reply. Library errors leave as status codes (see :func:`.convert.status_name`)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..backbones.backbone import resolve_backbone
from ..backbones.hub import list_hub_backbones
from ..backbones.registry import list_backbones
from ..core.options import DEFAULT_MAX_PIXELS, MAIN_TAP, NAMED_WEIGHTS, BackboneConfig
from ..core.ranking import DEFAULT_TOP_K, top_k
from ..errors import AccessDenied, CacheError, ExtractionCancelled, InvalidOptionError, NotFound
from ..extractor.runner import with_cache_decode
from ..extractor.sources import is_within
from ..protos import extractor_pb2 as pb
from ..protos import extractor_pb2_grpc as pb_grpc
from ..store.ann_plan import IndexChoice
from .convert import (
    ResourceExhausted,
    Roots,
    config_from_message,
    confine,
    dataset_paths,
    extract_options,
    image_content,
    info_message,
    mib,
    relative_to_roots,
    settings_message,
    shown_settings,
    status_name,
)
from .jobs import GONE, DatasetJob, job_bytes, job_name
from .models import (
    Classifier,
    MemoryBudget,
    ModelPool,
    embed_contents,
    input_bytes,
    reply_bytes,
    request_bytes,
)
from .options import (
    DEFAULT_MAX_IMAGE_SIZE,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_INFLIGHT_MB,
    DEFAULT_MAX_JOBS,
    DEFAULT_WORKERS,
)

log = logging.getLogger("featcache.serve")

SEARCH_HINT = "rebuild it with ExtractDataset (overwrite: true)"
DATASET_HINT = "overwrite: true in the request replaces it"
"""What a client can do about a damaged cache, by RPC."""

MAX_REPLY_BYTES = (2 << 30) - 1
"""gRPC's (and protobuf's) largest message."""
MAX_TEXT_CHARS = 10_000
"""Longest text ``EmbedText`` takes (the presets keep 64 or 77 tokens of it)."""
TEXT_BYTES = 64 << 10
"""Memory one text reserves while encoded (its string, token ids and activations)."""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None without one."""
    left = context.time_remaining()
    return None if left is None or left > 1e8 else max(0.0, left)


class ExtractorServicer(pb_grpc.ExtractorServicer):
    """Embeds images with the pool's models and runs dataset extractions."""

    def __init__(
        self,
        pool: ModelPool,
        roots: Roots,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_side: int = DEFAULT_MAX_IMAGE_SIZE,
        classifiers: dict[str, Classifier] | None = None,
        budget: MemoryBudget | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_calls: int = DEFAULT_WORKERS,
        index: IndexChoice | None = None,
    ) -> None:
        self.index = index or IndexChoice()
        """Which index answers ``Search`` (``serve --index-memory``, ``--exact-below``)."""
        self.classifiers = classifiers or {}
        self.pool = pool
        self.roots = roots
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.max_side = max_side
        self.budget = budget or MemoryBudget(DEFAULT_MAX_INFLIGHT_MB << 20)
        self.max_reply_bytes = min(self.budget.limit, MAX_REPLY_BYTES)
        """Largest reply; the server's ``grpc.max_send_message_length``."""
        self.max_jobs = max_jobs
        self.max_calls = max_calls
        self._calls = threading.BoundedSemaphore(max_calls)
        self._jobs: set[DatasetJob] = set()
        self._jobs_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- RPCs -------------------------------------------------------------------------

    @contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """One of the ``max_calls`` call slots for the call's life; none free: refused at
        once (the RPC threads beyond them stay free for health checks)."""
        if not self._calls.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.max_calls} workers of the server are busy (workers); try again later",
            )
        try:
            yield
        finally:
            self._calls.release()

    def ListBackbones(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            return self._list_backbones()

    def _list_backbones(self) -> Any:
        loaded = self.pool.loaded()
        allowed = self.pool.allowed
        names = {m.settings.backbone for m in loaded}
        return pb.ListBackbonesResponse(
            backbones=[
                pb.Backbone(
                    name=name,
                    default_size=size,
                    feature_dim=dim,
                    loaded=name in names,
                    family=family,
                    source=source,
                )
                for name, size, dim, family, source in _registry_rows()
                if allowed is None or name in allowed
            ],
            loaded=[
                info_message(shown_settings(replace(m.settings, resize=""), self.roots))
                for m in loaded
            ],
            classifiers=sorted(self.classifiers),
        )

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            try:
                return self._classify(request, context)
            except Exception as exc:
                self._fail(context, exc)
                raise

    def Embed(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            try:
                return self._embed(request, request.backbone, context)
            except Exception as exc:
                self._fail(context, exc)
                raise  # unreachable: abort raises

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            try:
                return self._search(request, context)
            except CacheError as exc:  # a client cannot rebuild it with a flag
                from ..store.format import with_hint

                self._fail(context, with_hint(exc, SEARCH_HINT))
                raise
            except Exception as exc:
                self._fail(context, exc)
                raise

    def EmbedText(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            try:
                return self._embed_text(request, context)
            except Exception as exc:
                self._fail(context, exc)
                raise

    def EmbedStream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            yield from self._embed_stream(request_iterator, context)

    def ExtractDataset(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._slot(context):
            yield from self._extract_dataset(request, context)

    # -- helpers ----------------------------------------------------------------------

    def _fail(self, context: grpc.ServicerContext, exc: BaseException) -> None:
        """Abort the call with the status code of ``exc``. Server paths in the message are
        shown relative to the roots; unexpected errors are logged with an id, and the
        client gets only the id."""
        if isinstance(exc, _Abort):
            context.abort(exc.code, self._shown(str(exc)))
        if isinstance(exc, CancelledError):
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")
        name = status_name(exc)
        if name == "DEADLINE_EXCEEDED":
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
        if name == "INTERNAL":
            incident = uuid.uuid4().hex[:12]
            log.error("internal error %s", incident, exc_info=exc)
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error {incident}; the server's log has the details",
            )
        text = str(exc).splitlines()[0] if str(exc) else name
        context.abort(getattr(grpc.StatusCode, name), self._shown(text))

    def _shown(self, text: str) -> str:
        return relative_to_roots(text, self.roots)

    def _embed_stream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """Requests are read and embedded by a helper thread, replies sent in order."""
        replies: queue.Queue[Any] = queue.Queue(maxsize=4)
        done = object()

        def offer(item: Any) -> bool:
            """Queue a reply; False once the call is over (nobody will take it)."""
            while context.is_active():
                try:
                    replies.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            settings = None
            try:
                for request in request_iterator:
                    if request.HasField("backbone"):
                        settings = request.backbone
                    if settings is None:
                        raise InvalidOptionError("the first request of a stream needs backbone")
                    if not offer(self._embed(request, settings, context)):
                        return
                offer(done)
            except Exception as exc:  # noqa: BLE001 - raised in the reply thread
                offer(exc)

        threading.Thread(target=work, name="featcache-stream", daemon=True).start()
        while True:
            try:
                reply = replies.get(timeout=0.5)
            except queue.Empty:
                if context.is_active():
                    continue
                return
            if reply is done:
                return
            if isinstance(reply, Exception):
                self._fail(context, reply)
            yield reply

    def _extract_dataset(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Stream the job's messages; stop waiting as soon as the client goes away (the
        job then stops at its next image, saving its cache)."""
        try:
            job = self._start_job(request, context)
        except Exception as exc:  # noqa: BLE001
            self._fail(context, exc)
            return
        try:
            while True:
                item = job.get()
                if item is GONE:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, (ExtractionCancelled, CancelledError)):
                        if self.stopping.is_set():
                            item = _Abort(
                                grpc.StatusCode.UNAVAILABLE,
                                "the server is shutting down; finished batches were saved, "
                                "call again to resume",
                            )
                        else:
                            item = _Abort(grpc.StatusCode.CANCELLED, "cancelled")
                    if isinstance(item, CacheError):
                        from ..store.format import with_hint

                        item = with_hint(item, DATASET_HINT)
                    self._fail(context, item)
                yield item
                if item.finished:
                    return
        finally:
            job.cancel.set()

    def _check_count(self, images: int) -> None:
        if images > self.max_images:
            raise ResourceExhausted(
                f"{images} images in one request; this server takes at most "
                f"{self.max_images} (max_batch_images)"
            )

    def _check_reply(self, images: int, feature_dim: int) -> None:
        size = reply_bytes(images, feature_dim)
        if size > self.max_reply_bytes:
            raise ResourceExhausted(
                f"the reply to {images} images of {feature_dim} values would be about "
                f"{mib(size)}; this server sends at most {mib(self.max_reply_bytes)}"
            )

    def _hold(
        self,
        images: int,
        image_size: tuple[int, int],
        feature_dim: int,
        context: grpc.ServicerContext,
    ) -> AbstractContextManager[None]:
        """Check the reply size, then reserve the request's memory (before decoding)."""
        self._check_reply(images, feature_dim)
        need = request_bytes(images, image_size, feature_dim)
        what = f"{images} images at {image_size[0]}x{image_size[1]}"
        return self.budget.hold(need, what, self._wait(context), context.is_active)

    def _wait(self, context: grpc.ServicerContext) -> float:
        """How long the call may wait for a model slot or memory."""
        left = _remaining(context)
        return self.pool.wait if left is None else min(left, self.pool.wait)

    def _classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        classifier = self.classifiers.get(request.model)
        if classifier is None:
            known = (
                ", ".join(sorted(self.classifiers))
                or "none; start the server with models NAME=PATH"
            )
            raise InvalidOptionError(f"model {request.model!r}: not loaded here ({known})", "model")
        self._check_count(len(request.images))
        if request.top_k < 0:
            raise InvalidOptionError(f"top_k {request.top_k}: must be positive", "top_k")
        max_pixels = min(request.max_pixels or self.max_pixels, self.max_pixels)
        contents = [
            image_content(image, i, self.max_pixels) for i, image in enumerate(request.images)
        ]
        size, width = classifier.image_size, classifier.feature_dim
        with self._hold(len(contents), size, width, context):
            probabilities, reasons = embed_contents(
                classifier,
                contents,
                classifier.resize,
                max_pixels,
                context.is_active,
                lambda: _remaining(context),
                self.budget.decoding,
                classifier.decode,
            )
            names = classifier.class_names
            best_of = iter(top_k(probabilities, request.top_k or DEFAULT_TOP_K))
            results = []
            rows = iter(probabilities)
            for reason in reasons:
                if reason is not None:
                    results.append(pb.Classification(error=reason))
                    continue
                row, best = next(rows), next(best_of)
                results.append(
                    pb.Classification(
                        top=[pb.ClassScore(name=names[j], probability=float(row[j])) for j in best],
                        probabilities=row,
                    )
                )
            return pb.ClassifyResponse(class_names=names, results=results)

    def _search(self, request: Any, context: grpc.ServicerContext) -> Any:
        """``featcache search`` over a cache under the cache root (the same index file)."""
        from ..store.reader_cache import read_held
        from ..store.search_index import DEFAULT_SEARCH_K, MAX_SEARCH_K, search_tap

        path = confine(self.roots.cache, request.cache, "cache")
        if not path.is_file():
            raise NotFound(f"cache {request.cache!r}: no such file under the cache root")
        k = request.k or DEFAULT_SEARCH_K
        if not 1 <= k <= MAX_SEARCH_K:
            raise InvalidOptionError(f"k {k}: expected 1 to {MAX_SEARCH_K}", "k")
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidOptionError("search needs a row, an image or a text", "row")
        tap = search_tap(request.tap, image=kind == "image", text=kind == "text")
        return read_held(
            path,
            lambda reader: self._search_in(reader, request, k, context, tap),
            allowed=self._in_root,
        )

    def _in_root(self, path: Path) -> None:
        """A cache a manifest names must lie under the cache root too."""
        if not (self.roots.cache and is_within(path, self.roots.cache)):
            raise AccessDenied("a cache the manifest names is not under the cache root")

    def _search_in(
        self,
        reader: Any,
        request: Any,
        k: int,
        context: grpc.ServicerContext,
        tap: str = MAIN_TAP,
    ) -> Any:
        """:meth:`_search` over one opened state of the cache (or of its ``tap``'s
        features), from the index ``search`` uses (built once however many calls ask at
        once; see store/ann_index.py)."""
        from ..store.ann_index import open_ann
        from ..store.opening import with_tap

        if tap != MAIN_TAP:
            reader = with_tap(reader, tap)  # an image: the pool's model ends at its layer
        kind = request.WhichOneof("query")
        if kind == "row" and not 0 <= request.row < len(reader):
            raise InvalidOptionError(f"row {request.row}: expected 0 to {len(reader) - 1}", "row")
        choice = self.index
        index, _ = open_ann(
            reader, request.exact, choice.memory, choice.exact_below, progress=False
        )
        if kind == "text":
            tower = self._cache_tower(reader, request.text, context)
            query = self._text_vectors(tower, [request.text], context)[0]
            if tower.projection is not None:  # the index holds unprojected class tokens
                from ..backbones.text_tower import projected_scan

                sims1, rows1 = projected_scan(reader.batches(batch_size=65536), tower, query, k)
                return self._search_reply(reader, "text", sims1, rows1, "exact-projected", tap)
            label, exclude = "text", None
        elif kind == "row":
            query, label, exclude = index.row_vector(request.row), f"row {request.row}", request.row
        else:
            content = image_content(request.image, 0, self.max_pixels)
            query, label, exclude = self._cache_query(reader, content, context), "image", None
        sims, rows = index.search(query[None, :], k, exclude)
        return self._search_reply(reader, label, sims[0], rows[0], index.kind, tap)

    def _search_reply(
        self, reader: Any, label: str, sims: np.ndarray, rows: np.ndarray, kind: str, tap: str
    ) -> Any:
        from ..store.search_index import ranked_hits

        hits = [
            pb.SearchHit(
                rank=h["rank"],
                row=h["row"],
                path=h["path"],
                class_name=h["class"],
                split=h["split"],
                similarity=h["similarity"],
            )
            for h in ranked_hits(reader, sims, rows)
        ]
        return pb.SearchResponse(query=label, hits=hits, index=kind, tap=tap)

    def _text_tower(self, config: BackboneConfig) -> Any:
        """The text tower of a request's (or a cache's) CLIP or SigLIP preset, held to
        Embed's rules: the weights root, the allow-list and fixed weights."""
        from ..backbones.text_tower import cached_tower

        resolved = resolve_backbone(config)
        self.pool.permit(resolved)
        return cached_tower(resolved)

    def _cache_tower(self, reader: Any, text: str, context: grpc.ServicerContext) -> Any:
        """The text tower of a cache's preset, built only as a request's may be."""
        from ..store.joint import one_backbone

        if not text.strip():
            raise InvalidOptionError("text: expected some words", "text")
        one_backbone(reader, "a search by text")
        recorded = reader.settings
        config = self._cache_config(recorded.config())
        what = "the cache's backbone differs on this server; its texts would not match"
        recorded.check(resolve_backbone(config), what, ours="cache", theirs="server")
        return self._text_tower(config)

    def _text_vectors(
        self, tower: Any, texts: list[str], context: grpc.ServicerContext, unit: bool = True
    ) -> np.ndarray:
        """``texts`` through ``tower`` under the memory budget (token ids and rows)."""
        from ..backbones.text_tower import normalise

        self._check_count(len(texts))
        dim = tower.dim
        self._check_reply(len(texts), dim)
        need = len(texts) * (TEXT_BYTES + dim * 4)
        with self.budget.hold(need, f"{len(texts)} texts", self._wait(context), context.is_active):
            vectors = tower.encode(texts)
        return normalise(vectors) if unit else vectors

    def _embed_text(self, request: Any, context: grpc.ServicerContext) -> Any:
        """``EmbedText``: texts in the image-text space of a request's preset."""
        from ..backbones.text_tower import TEXT_FAMILIES, text_family

        config = config_from_message(request.backbone, self.roots.weights, self.max_side)
        resolved = resolve_backbone(config)
        self.pool.permit(resolved)  # before anything else is said of the backbone
        if text_family(resolved) in TEXT_FAMILIES:
            config = replace(config, projection=True)  # the texts' space is the projected one
        for i, text in enumerate(request.texts):
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidOptionError(
                    f"texts[{i}]: {len(text)} characters; at most {MAX_TEXT_CHARS}", "texts"
                )
        tower = self._text_tower(config)
        vectors = self._text_vectors(tower, list(request.texts), context, request.normalize)
        settings = replace(tower.settings, feature_dim=tower.dim)
        info = info_message(shown_settings(settings, self.roots))
        return pb.EmbedTextResponse(
            backbone=info,
            embeddings=[pb.Embedding(values=row) for row in vectors],
            logit_scale=tower.scale,
            logit_bias=tower.bias,
        )

    def _cache_config(self, config: BackboneConfig) -> BackboneConfig:
        """A cache's backbone configuration, held to the rules of a request's (``Embed``,
        ``ExtractDataset``): no remote presets, saved models, preset folders and weights
        files only under the weights root, sides within ``max_image_size``; the allow-list
        and fixed weights are checked on the resolved settings."""
        root = self.roots.weights

        def relative(name: str) -> str:
            if not os.path.isabs(name):
                return name  # checked as a request's name is: registered, or confined
            if not (root and is_within(Path(name), root)):
                raise AccessDenied("the cache's backbone files are not under the weights root")
            return os.path.relpath(os.path.realpath(name), os.path.realpath(root))

        weights = config.weights
        if weights.lower() not in (*NAMED_WEIGHTS, "preset"):
            weights = relative(weights)
        asked = replace(config, backbone=relative(config.backbone), weights=weights)
        return config_from_message(settings_message(asked), root, self.max_side)

    def _cache_query(self, reader: Any, content: Any, context: grpc.ServicerContext) -> Any:
        """One image's normalised features from the pool's model for the cache's settings,
        built only as a request's settings may be (:meth:`_cache_config`)."""
        from ..store.joint import one_backbone, stored_dtype
        from ..store.search_index import normalize

        one_backbone(reader, "a search by image")
        recorded = reader.settings
        config = self._cache_config(recorded.config())
        what = "the cache's backbone differs on this server; its features would not match"
        resolved = resolve_backbone(config)
        self.pool.permit(resolved)
        recorded.check(resolved, what, ours="cache", theirs="server")
        with (
            self.pool.use(config, context.is_active, self._wait(context)) as model,
            self._hold(1, model.image_size, model.feature_dim, context),
        ):
            recorded.check(model.settings_for(config), what, ours="cache", theirs="server")
            features, reasons = embed_contents(
                model,
                [content],
                config.resize,
                self.max_pixels,
                context.is_active,
                lambda: _remaining(context),
                self.budget.decoding,
                resolved.decode,
            )
        if reasons[0] is not None:
            raise InvalidOptionError(f"image: {reasons[0]}", "image")
        stored = np.asarray(features, np.float32).astype(stored_dtype(reader)).astype(np.float32)
        return normalize(stored)[0]

    def _embed(self, request: Any, settings: Any, context: grpc.ServicerContext) -> Any:
        images = len(request.images)
        self._check_count(images)
        config = config_from_message(settings, self.roots.weights, self.max_side)
        resolved = resolve_backbone(config)
        self.pool.permit(resolved)
        size = resolved.image_size  # (0, 0) for a saved model of any size: checked below
        self.budget.check(images * input_bytes(size), f"{images} images at {size[0]}x{size[1]}")
        max_pixels = min(request.max_pixels or self.max_pixels, self.max_pixels)
        contents = [
            image_content(image, i, self.max_pixels) for i, image in enumerate(request.images)
        ]
        with (
            self.pool.use(config, context.is_active, self._wait(context)) as model,
            self._hold(images, model.image_size, model.feature_dim, context),
        ):
            features, reasons = embed_contents(
                model,
                contents,
                config.resize,
                max_pixels,
                context.is_active,
                lambda: _remaining(context),
                self.budget.decoding,
                resolved.decode,
            )
            info = info_message(shown_settings(model.settings_for(config), self.roots))
            rows = []
            good = iter(features)
            for reason in reasons:
                if reason is None:
                    rows.append(pb.Embedding(values=np.asarray(next(good), np.float32)))
                else:
                    rows.append(pb.Embedding(error=reason))
            return pb.EmbedResponse(backbone=info, embeddings=rows)

    def _start_job(self, request: Any, context: grpc.ServicerContext) -> DatasetJob:
        if self.stopping.is_set():
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        config = config_from_message(request.backbone, self.roots.weights, self.max_side)
        data, output, labels, shown = dataset_paths(request, config, self.roots)
        max_pixels = min(request.max_pixels or self.max_pixels, self.max_pixels)
        options = with_cache_decode(extract_options(request, config, labels, max_pixels), output)
        config = replace(config, decode=options.decode)  # a rerun keeps the cache's
        resolved = resolve_backbone(config)
        self.pool.permit(resolved)
        size = resolved.image_size  # (0, 0) for a saved model of any size: checked later
        self.budget.check(job_bytes(options, size, 0), job_name(options, size))
        job = DatasetJob()

        def ended(finished: DatasetJob) -> None:
            with self._jobs_lock:
                self._jobs.discard(finished)

        with self._jobs_lock:
            if self.stopping.is_set():
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if len(self._jobs) >= self.max_jobs:
                raise ResourceExhausted(
                    f"{len(self._jobs)} ExtractDataset jobs are running; this server runs at "
                    f"most {self.max_jobs} (max_jobs); try again later"
                )
            self._jobs.add(job)
        if not context.add_callback(job.abandon):  # the call already ended
            job.abandon()
        job.start(
            self.pool, config, data, output, options, self.roots.data, shown, ended, self.budget
        )
        return job

    def stop_jobs(self, timeout: float = 60.0) -> bool:
        """Stop every running extraction and wait until each has saved its cache."""
        self.stopping.set()
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
        return all(job.ended.wait(timeout) for job in jobs)


def _registry_rows() -> list[tuple[str, int, int, str, str]]:
    """(name, default size, feature width, family, source) of every registered backbone."""
    rows = [
        (s.name, s.default_size, s.feature_dim, s.module, "keras.applications")
        for s in list_backbones()
    ]
    rows += [
        (h.name, h.default_size, h.feature_dim, h.family, h.source) for h in list_hub_backbones()
    ]
    return rows
