"""``featcache serve``: the gRPC server around :class:`.servicer.ExtractorServicer`.

:func:`start_server` builds and starts it (tests use port 0); :func:`serve` also preloads
models, reports health, and drains on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..backbones.backbone import is_model_file, resolve_backbone
from ..backbones.hub import HUB_REGISTRY
from ..backbones.registry import get_backbone
from ..core.options import DEFAULT_WEIGHTS, NAMED_WEIGHTS, check_range
from ..core.settings import BackboneConfig
from ..errors import InvalidOptionError, UnknownBackboneError
from ..protos import extractor_pb2 as pb
from ..store.ann_plan import IndexChoice
from .auth import TokenAuthInterceptor, read_token
from .convert import Roots, confine, is_loopback
from .handlers import add_extractor
from .models import BatchOptions, Classifier, MemoryBudget, ModelPool
from .options import HEALTH_THREADS, ServeOptions
from .servicer import ExtractorServicer

log = logging.getLogger("featcache.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Extractor"].full_name
"""``featcache.v1.Extractor``."""


def parse_preload(entry: str, weights_root: Path | None) -> BackboneConfig:
    """``mobilenet``, ``mobilenet=weights.h5``, ``mobilenet=none@96``: a model to load."""
    match = re.fullmatch(r"\s*([^=@\s]+)(?:=([^@]+))?(?:@(\d+(?:x\d+)?))?\s*", entry)
    if match is None:
        raise InvalidOptionError(f"preload {entry!r}: expected NAME[=WEIGHTS][@SIZE]", "preload")
    name, weights, size = (
        match.group(1),
        (match.group(2) or DEFAULT_WEIGHTS).strip(),
        match.group(3),
    )
    if weights.lower() not in (*NAMED_WEIGHTS, "preset"):
        weights = str(confine(weights_root, weights, "weights file"))
    if "/" in name and not is_model_file(name):  # a keras-hub preset folder
        name = str(confine(weights_root, name, "preset folder"))
    return BackboneConfig(name, weights, size)


def parse_model(entry: str) -> tuple[str, str]:
    """``NAME=PATH`` of a ``--model`` option; the file must exist."""
    name, _, path = entry.partition("=")
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise InvalidOptionError(f"models {entry!r}: expected NAME=PATH", "models")
    if not Path(path).is_file():
        raise InvalidOptionError(f"models {entry!r}: no such file {path}", "models")
    return name, path


def parse_allowed(entries: list[str], weights_root: Path | None) -> set[str] | None:
    """``allow_backbone`` entries as the names a resolved backbone has: registry names, and
    saved models (relative to ``weights_root``) by absolute path; None allows every one."""
    names = [name.strip() for entry in entries for name in entry.split(",") if name.strip()]
    if not names:
        return None
    allowed = set()
    for name in names:
        if is_model_file(name) or "/" in name:  # a saved model or a keras-hub preset folder
            allowed.add(str(confine(weights_root, name, "allow_backbone").resolve()))
        elif name.lower() in HUB_REGISTRY:
            allowed.add(name.lower())
        else:
            try:
                allowed.add(get_backbone(name).name)
            except UnknownBackboneError as exc:
                raise InvalidOptionError(
                    f"allow_backbone: {exc.args[0]}", "allow_backbone"
                ) from None
    return allowed


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidOptionError(f"{what} {path}: {exc.strerror or exc}", what) from None


def _root(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise InvalidOptionError(f"{what} {path}: no such folder", what)
    return root


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: Check, and Watch without holding an RPC thread.

    grpcio-health-checking's own servicer (1.85) sends a Watch reply while holding its status
    lock. In this synchronous server a send waits for gRPC's one event thread, and that
    thread runs the close callback of a Watch that ended, which takes the same lock: a Watch
    starting while another ends hung every call of the server for good. Here the status lock
    is never held while sending; replies go out under a lock of their own (one at a time, in
    order), which the event thread never takes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sending = threading.RLock()
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[Callable[[Any], None]]] = {}
        self._final = False

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(
        self,
        request: Any,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> None:
        """The status now, then at each change (gRPC passes ``send_response_callback``:
        Watch is marked non-blocking)."""
        send, service = send_response_callback, request.service
        if send is None:
            raise RuntimeError("Watch needs a server that supports non-blocking streams")
        with self._sending:
            with self._lock:
                status = self._status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                self._watchers.setdefault(service, set()).add(send)
            if not context.add_callback(lambda: self._ended(service, send)):
                self._ended(service, send)  # the call is already over
                return
            send(health_pb2.HealthCheckResponse(status=status))

    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    def _ended(self, service: str, send: Callable[[Any], None]) -> None:
        """A Watch call ended (on gRPC's event thread: never waits for a send)."""
        with self._lock:
            self._watchers.get(service, set()).discard(send)
        send(None)

    def set(self, service: str, status: int) -> None:
        """Set a service's status and tell its watchers (ignored after shutdown began)."""
        with self._sending:
            with self._lock:
                if self._final:
                    return
                self._status[service] = status
                watchers = list(self._watchers.get(service, ()))
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service from now on."""
        with self._sending:
            with self._lock:
                services = [] if self._final else list(self._status)
            for service in services:
                self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            with self._lock:
                self._final = True


class Server:
    """A started server: its port, health, model pool and servicer."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        secured = options.token_file or options.tls_client_ca or options.insecure
        if not (secured or is_loopback(options.host)):
            raise InvalidOptionError(
                f"host {options.host!r}: serving beyond this machine needs token_file or "
                "tls_client_ca (TLS alone does not say who the client is: anyone who reaches "
                "the port could use it); insecure=True (--insecure) serves without them",
                "host",
            )
        roots = Roots(
            _root(options.data_root, "data_root"),
            _root(options.cache_root, "cache_root"),
            _root(options.weights_root, "weights_root"),
        )
        self.preload = [parse_preload(entry, roots.weights) for entry in options.preload]
        self.models = [parse_model(entry) for entry in options.models]
        for option in (
            "max_loaded",
            "max_message_mb",
            "workers",
            "max_batch",
            "max_image_size",
            "max_batch_images",
            "max_inflight_mb",
            "max_jobs",
        ):
            check_range(option, getattr(options, option), 1, wording="must be at least 1")
        check_range("max_wait", options.max_wait, 0.0, wording="must not be negative")
        if self.models and options.load_classifier is None:
            raise InvalidOptionError(
                "models need load_classifier (featcache.serve and featcache.start_server set it)",
                "models",
            )
        allowed = parse_allowed(options.allow_backbone, roots.weights)
        fixed = None
        if options.fixed_weights:
            if not self.preload:
                raise InvalidOptionError("fixed_weights needs preload", "fixed_weights")
            fixed = [resolve_backbone(config) for config in self.preload]
        interceptors = []
        if options.token_file:
            interceptors.append(  # an exposed token file: refused, or a warning with --insecure
                TokenAuthInterceptor(
                    read_token(options.token_file, "warn" if options.insecure else "refuse")
                )
            )
        limit = options.max_message_mb * 1024 * 1024
        self.pool = ModelPool(
            options.max_loaded,
            BatchOptions(options.max_batch, options.max_delay_ms / 1000, options.batching),
            options.max_wait,
            allowed,
            fixed,
        )
        for config in self.preload:
            self.pool.permit(resolve_backbone(config))
        self.servicer = ExtractorServicer(
            self.pool,
            roots,
            options.max_pixels,
            max_images=options.max_batch_images,
            max_side=options.max_image_size,
            budget=MemoryBudget(options.max_inflight_mb << 20, options.max_pixels),
            max_jobs=options.max_jobs,
            max_calls=options.workers,
            index=IndexChoice(options.index_memory, options.exact_below),
        )
        # Extractor calls take one of `workers` slots; the threads beyond them answer health
        # checks and refuse extra calls at once. gRPC itself refuses calls only far beyond
        # the threads (so a burst of refused calls queues for a moment rather than turning a
        # health check away), which bounds its queue.
        threads = options.workers + HEALTH_THREADS
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(threads, thread_name_prefix="featcache-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", self.servicer.max_reply_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=threads + QUEUED_CALLS,
        )
        add_extractor(self.servicer, self.grpc)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self._set_health(serving=False)
        address = f"{options.host}:{options.port}"
        if options.tls_cert or options.tls_key:
            if not (options.tls_cert and options.tls_key):
                raise InvalidOptionError("tls_cert and tls_key go together", "tls_cert")
            client_ca = _read(options.tls_client_ca, "tls_client_ca")
            credentials = grpc.ssl_server_credentials(
                [(_read(options.tls_key, "tls_key"), _read(options.tls_cert, "tls_cert"))],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            self.port = self.grpc.add_secure_port(address, credentials)
        elif options.tls_client_ca:
            raise InvalidOptionError("tls_client_ca needs tls_cert and tls_key", "tls_client_ca")
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise InvalidOptionError(f"cannot listen on {address}")
        self.grpc.start()

    def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def warm_up(self) -> None:
        """Load the preloaded backbones and the classifiers, then report SERVING."""
        for config in self.preload:
            with self.pool.use(config):
                pass
        load = self.options.load_classifier
        for name, path in self.models:
            if load is not None:
                self.servicer.classifiers[name] = Classifier(name, path, self.pool.options, load)
        self._set_health(serving=True)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, stop extraction jobs (caches saved), finish in-flight calls."""
        grace = self.options.grace if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.servicer.stop_jobs(grace)
        self.grpc.stop(grace).wait()
        self.pool.close()
        for classifier in self.servicer.classifiers.values():
            classifier.batcher.close()


def start_server(options: ServeOptions, warm: bool = True) -> Server:
    """Build and start a server; with ``warm``, load the preloaded models first."""
    server = Server(options)
    if warm:
        try:
            server.warm_up()
        except BaseException:
            server.stop(0)
            raise
    return server


QUEUED_CALLS = 256
"""Calls gRPC accepts beyond its threads (they wait a moment for one) before refusing."""
STOP_MARGIN_SECONDS = 15.0
"""After ``grace``, how long stopping may still take (saving caches) before the process exits."""


def _exit_now(why: str) -> None:
    """Exit at once with status 1: caches are crash-safe, so nothing written is lost."""
    log.warning("%s: exiting now; unfinished extractions resume on their next call", why)
    logging.shutdown()
    os._exit(1)


def serve(options: ServeOptions) -> None:
    """Run until SIGTERM or Ctrl-C, then drain. Health says SERVING once models are warm."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s featcache %(message)s")
    server = start_server(options, warm=False)
    security = []
    if options.tls_cert:
        security.append("mutual TLS" if options.tls_client_ca else "TLS")
    if options.token_file:
        security.append("bearer token")
    log.info(
        "listening on %s:%d (%s)",
        options.host,
        server.port,
        ", ".join(security) or "insecure: no TLS, no token",
    )
    stop = threading.Event()

    def on_signal(number: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: leave now (every cache is crash-safe)
            _exit_now(f"second {signal.Signals(number).name}")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    began = time.monotonic()
    warm_error: list[BaseException] = []

    def warm() -> None:
        try:
            server.warm_up()
            log.info("serving (models warm after %.1f s)", time.monotonic() - began)
        except BaseException as exc:  # noqa: BLE001 - reported, then the server stops
            warm_error.append(exc)
            stop.set()

    threading.Thread(target=warm, name="featcache-preload", daemon=True).start()
    while not stop.wait(0.5):
        pass
    log.info("stopping: draining in-flight calls (up to %.0f s)", options.grace)
    watchdog = threading.Timer(
        options.grace + STOP_MARGIN_SECONDS, _exit_now, ("the grace period ended",)
    )
    watchdog.daemon = True
    watchdog.start()  # a call stuck in a read or a model call cannot hold the process
    server.stop()
    watchdog.cancel()
    log.info("stopped")
    if warm_error:
        raise warm_error[0]
