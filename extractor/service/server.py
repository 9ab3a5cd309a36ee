"""``featcache serve``: the gRPC server around :class:`.servicer.ExtractorServicer`.

:func:`start_server` builds and starts it (tests use port 0); :func:`serve` also preloads
models, reports health, and drains on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ...errors import InvalidOptionError
from ...protos import extractor_pb2 as pb
from ...protos import extractor_pb2_grpc as pb_grpc
from ..options import DEFAULT_WEIGHTS, NAMED_WEIGHTS, check_range
from ..settings import BackboneConfig
from .auth import TokenAuthInterceptor, read_token
from .convert import Roots, confine
from .models import BatchOptions, Classifier, ModelPool
from .options import ServeOptions
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
    if weights.lower() not in NAMED_WEIGHTS:
        weights = str(confine(weights_root, weights, "weights file"))
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


class Server:
    """A started server: its port, health, model pool and servicer."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        roots = Roots(
            _root(options.data_root, "data_root"),
            _root(options.cache_root, "cache_root"),
            _root(options.weights_root, "weights_root"),
        )
        self.preload = [parse_preload(entry, roots.weights) for entry in options.preload]
        self.models = [parse_model(entry) for entry in options.models]
        for option in ("max_loaded", "max_message_mb", "workers", "max_batch", "max_image_size"):
            check_range(option, getattr(options, option), 1, wording="must be at least 1")
        if self.models and options.load_classifier is None:
            raise InvalidOptionError(
                "models need load_classifier (featcache.serve and featcache.start_server set it)",
                "models",
            )
        interceptors = []
        if options.token_file:
            interceptors.append(TokenAuthInterceptor(read_token(options.token_file)))
        limit = options.max_message_mb * 1024 * 1024
        self.pool = ModelPool(
            options.max_loaded,
            BatchOptions(options.max_batch, options.max_delay_ms / 1000, options.batching),
        )
        self.servicer = ExtractorServicer(
            self.pool, roots, options.max_pixels, max_side=options.max_image_size
        )
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(options.workers, thread_name_prefix="featcache-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ExtractorServicer_to_server(self.servicer, self.grpc)
        self.health = health.HealthServicer(experimental_non_blocking=True)
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
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
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
    server.stop()
    log.info("stopped")
    if warm_error:
        raise warm_error[0]
