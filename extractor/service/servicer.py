"""The ``featcache.v1.Extractor`` servicer: unpack the request, call the Python API, pack
the reply. Library errors leave as status codes (see :func:`.convert.status_name`)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from dataclasses import replace
from typing import Any

import grpc
import numpy as np

from ...errors import ExtractionCancelled, InvalidOptionError
from ...protos import extractor_pb2 as pb
from ...protos import extractor_pb2_grpc as pb_grpc
from ..options import DEFAULT_MAX_PIXELS
from ..ranking import DEFAULT_TOP_K, top_k
from ..registry import list_backbones
from .convert import (
    Roots,
    config_from_message,
    dataset_paths,
    extract_options,
    image_content,
    info_message,
    status_name,
)
from .jobs import DatasetJob
from .models import Classifier, ModelPool, embed_contents
from .options import DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_IMAGES

log = logging.getLogger("featcache.serve")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the call with the status code of ``exc`` (logging unexpected errors)."""
    if isinstance(exc, _Abort):
        context.abort(exc.code, str(exc))
    if isinstance(exc, CancelledError):
        context.abort(grpc.StatusCode.CANCELLED, "cancelled")
    name = status_name(exc)
    if name == "DEADLINE_EXCEEDED":
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
    if name == "INTERNAL":
        log.exception("internal error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    context.abort(getattr(grpc.StatusCode, name), str(exc).splitlines()[0] if str(exc) else name)


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
    ) -> None:
        self.classifiers = classifiers or {}
        self.pool = pool
        self.roots = roots
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.max_side = max_side
        self._jobs: set[DatasetJob] = set()
        self._jobs_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- RPCs -------------------------------------------------------------------------

    def ListBackbones(self, request: Any, context: grpc.ServicerContext) -> Any:
        loaded = self.pool.loaded()
        names = {m.settings.backbone for m in loaded}
        return pb.ListBackbonesResponse(
            backbones=[
                pb.Backbone(
                    name=spec.name,
                    default_size=spec.default_size,
                    feature_dim=spec.feature_dim,
                    loaded=spec.name in names,
                )
                for spec in list_backbones()
            ],
            loaded=[info_message(replace(m.settings, resize="")) for m in loaded],
            classifiers=sorted(self.classifiers),
        )

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._classify(request, context)
        except Exception as exc:
            _fail(context, exc)
            raise

    def Embed(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._embed(request, request.backbone, context)
        except Exception as exc:
            _fail(context, exc)
            raise  # unreachable: abort raises

    def EmbedStream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
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
                _fail(context, reply)
            yield reply

    def ExtractDataset(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            job = self._start_job(request, context)
        except Exception as exc:  # noqa: BLE001
            _fail(context, exc)
            return
        try:
            while True:
                item = job.get()
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
                    _fail(context, item)
                yield item
                if item.finished:
                    return
        finally:
            job.cancel.set()

    # -- helpers ----------------------------------------------------------------------

    def _classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        classifier = self.classifiers.get(request.model)
        if classifier is None:
            known = (
                ", ".join(sorted(self.classifiers))
                or "none; start the server with models NAME=PATH"
            )
            raise InvalidOptionError(f"model {request.model!r}: not loaded here ({known})", "model")
        if len(request.images) > self.max_images:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(request.images)} images in one request; the limit is {self.max_images}",
            )
        if request.top_k < 0:
            raise InvalidOptionError(f"top_k {request.top_k}: must be positive", "top_k")
        max_pixels = min(request.max_pixels or self.max_pixels, self.max_pixels)
        contents = [
            image_content(image, i, self.max_pixels) for i, image in enumerate(request.images)
        ]
        probabilities, reasons = embed_contents(
            classifier,
            contents,
            classifier.resize,
            max_pixels,
            context.is_active,
            lambda: _remaining(context),
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

    def _embed(self, request: Any, settings: Any, context: grpc.ServicerContext) -> Any:
        if len(request.images) > self.max_images:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(request.images)} images in one request; the limit is {self.max_images}",
            )
        config = config_from_message(settings, self.roots.weights, self.max_side)
        max_pixels = min(request.max_pixels or self.max_pixels, self.max_pixels)
        contents = [
            image_content(image, i, self.max_pixels) for i, image in enumerate(request.images)
        ]
        with self.pool.use(config) as model:
            features, reasons = embed_contents(
                model,
                contents,
                config.resize,
                max_pixels,
                context.is_active,
                lambda: _remaining(context),
            )
            info = info_message(model.settings_for(config))
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
        options = extract_options(request, config, labels, max_pixels)
        job = DatasetJob()
        context.add_callback(job.cancel.set)

        def ended(finished: DatasetJob) -> None:
            with self._jobs_lock:
                self._jobs.discard(finished)

        with self._jobs_lock:
            if self.stopping.is_set():
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            self._jobs.add(job)
        job.start(self.pool, config, data, output, options, self.roots.data, shown, ended)
        return job

    def stop_jobs(self, timeout: float = 60.0) -> bool:
        """Stop every running extraction and wait until each has saved its cache."""
        self.stopping.set()
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
        return all(job.ended.wait(timeout) for job in jobs)
