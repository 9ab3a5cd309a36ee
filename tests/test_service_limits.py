"""The server's limits (issue 13): memory budget, images per request, reply size, call slots,
jobs, model slots, allowed backbones and weights. Real servers on 127.0.0.1, port 0, with the
tiny random VGG16 at 32 px; nothing here depends on how fast the machine is (blocked calls
wait on events, and every wait has a generous bound)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featcache import ServeOptions, start_server
from featcache.backbones.hub import HUB_REGISTRY
from featcache.backbones.registry import REGISTRY
from featcache.errors import InvalidOptionError, WeightsError
from featcache.protos import extractor_pb2 as pb
from featcache.protos import extractor_pb2_grpc as pb_grpc
from featcache.service.client import Client
from helpers import make_class_folder

REGISTERED = len(REGISTRY) + len(HUB_REGISTRY)
"""Backbones ListBackbones names: keras.applications and keras-hub entries."""

PRELOAD = "vgg16=none@32"
BOUND = 60.0
"""Generous bound for anything the test waits on."""


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("limits")
    make_class_folder(base / "data" / "set")
    (base / "cache").mkdir()
    (base / "weights").mkdir()
    return base


def options(roots: Path, **extra: Any) -> ServeOptions:
    return ServeOptions(
        port=0,
        data_root=str(roots / "data"),
        cache_root=str(roots / "cache"),
        weights_root=str(roots / "weights"),
        **extra,
    )


@contextmanager
def serving(roots: Path, **extra: Any) -> Iterator[Any]:
    srv = start_server(options(roots, **extra))
    try:
        yield srv
    finally:
        srv.stop(0)


def settings(**extra: Any) -> Any:
    base: dict[str, Any] = {"name": "vgg16", "weights": "none", "image_size": [32]}
    return pb.BackboneSettings(**{**base, **extra})


def pixels(count: int, side: int = 32) -> list[Any]:
    tensor = pb.Tensor(data=b"\x80" * (side * side * 3), shape=[side, side, 3])
    return [pb.Image(pixels=tensor)] * count


def embed_request(count: int, side: int = 32, **extra: Any) -> Any:
    return pb.EmbedRequest(backbone=settings(**extra), images=pixels(count, side))


def error_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def block_model(model: Any) -> tuple[threading.Event, threading.Event]:
    """Make ``model``'s inference thread wait for ``release``; ``entered`` is set once a
    batch is waiting there."""
    entered, release = threading.Event(), threading.Event()
    original = model.batcher.fn

    def blocked(images: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(BOUND)
        return original(images)

    model.batcher.fn = blocked
    return entered, release


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- item 3: memory ------------------------------------------------------------------


def test_requests_over_the_memory_budget_are_refused_before_decoding(roots, monkeypatch):
    import featcache.service.models as models

    decoded: list[int] = []
    real_decode = models.decode_and_resize
    monkeypatch.setattr(
        models, "decode_and_resize", lambda *a, **k: decoded.append(1) or real_decode(*a, **k)
    )
    with serving(roots, preload=[PRELOAD], max_inflight_mb=1, max_batch_images=100) as srv:
        with Client(f"127.0.0.1:{srv.port}") as client:
            stub = client.stub
            # 64 images at 32 px: 64 * (32*32*3*4 + 512*4) bytes = 0.9 MiB fit in 1 MiB.
            reply = stub.Embed(embed_request(64), timeout=BOUND)
            assert len(reply.embeddings) == 64 and len(decoded) == 64
            decoded.clear()
            exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
            # 90 images: 1.2 MiB.
            error = error_of(lambda: stub.Embed(embed_request(90), timeout=BOUND))
            assert error.code() == exhausted and "max_inflight_mb" in error.details()
            # 100 one-pixel images (1 kB) asking for 1024 px without pooling (1.2 GiB decoded):
            # refused before any model is built or image decoded.
            huge = embed_request(100, side=1, image_size=[1024], pooling="none")
            error = error_of(lambda: stub.Embed(huge, timeout=BOUND))
            assert error.code() == exhausted and "max_inflight_mb" in error.details()
            assert len(srv.pool.loaded()) == 1
            # Images per request (max_batch_images).
            error = error_of(lambda: stub.Embed(embed_request(101, side=1), timeout=BOUND))
            assert error.code() == exhausted and "max_batch_images" in error.details()
            assert decoded == []
            # A reply bigger than the send limit: refused before decoding, not INTERNAL.
            srv.servicer.max_reply_bytes = 10_000
            error = error_of(lambda: stub.Embed(embed_request(8), timeout=BOUND))
            assert error.code() == exhausted and "reply" in error.details()
            assert decoded == []
            srv.servicer.max_reply_bytes = 1 << 20
            # ExtractDataset: its read-ahead and batch count against the same budget.
            request = pb.ExtractDatasetRequest(
                data="set", output="big.h5", backbone=settings(), batch_size=64
            )
            error = error_of(lambda: list(stub.ExtractDataset(request, timeout=BOUND)))
            assert error.code() == exhausted and "batch_size 64" in error.details()
            request.backbone.image_size[:] = [1024]
            request.batch_size = 4096
            error = error_of(lambda: list(stub.ExtractDataset(request, timeout=BOUND)))
            assert error.code() == exhausted and "max_inflight_mb" in error.details()
            assert not (roots / "cache" / "big.h5").exists()
            small = dataset_request("small.h5")
            small.batch_size = 2
            assert list(stub.ExtractDataset(small, timeout=BOUND))[-1].rows == 12
            assert srv.servicer.budget.used == 0  # everything given back
            assert len(client.list_backbones()["backbones"]) == REGISTERED


# -- item 4: call slots and jobs -----------------------------------------------------


def test_health_answers_and_extra_calls_are_refused_while_every_worker_is_busy(roots):
    with serving(roots, preload=[PRELOAD], workers=2) as srv:
        model = srv.pool.loaded()[0]
        entered, release = block_model(model)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            try:
                busy = [stub.Embed.future(embed_request(1), timeout=BOUND) for _ in range(2)]
                assert entered.wait(BOUND)
                wait_until(lambda: model.users == 2, "both calls to reach the model")
                health = health_pb2_grpc.HealthStub(channel)
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND / 2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                error = error_of(lambda: stub.Embed(embed_request(1), timeout=BOUND / 2))
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "workers" in error.details()
            finally:
                release.set()
            assert all(len(f.result(BOUND).embeddings) == 1 for f in busy)
            assert len(stub.Embed(embed_request(1), timeout=BOUND).embeddings) == 1


@contextmanager
def stuck_jobs(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The first ``ExtractDataset`` job hangs (ignoring cancellation) until ``release``;
    later ones run normally."""
    import featcache.service.jobs as jobs

    entered, release = threading.Event(), threading.Event()
    real = jobs.run_extraction

    def run(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            release.wait(BOUND)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "run_extraction", run)
    try:
        yield entered, release
    finally:
        release.set()


def dataset_request(output: str) -> Any:
    return pb.ExtractDatasetRequest(data="set", output=output, backbone=settings(), batch_size=4)


def test_a_cancelled_extract_dataset_frees_its_worker(roots, monkeypatch):
    with (
        stuck_jobs(monkeypatch) as (entered, _),
        serving(roots, preload=[PRELOAD], workers=1) as srv,
        Client(f"127.0.0.1:{srv.port}") as client,
    ):
        call = client.stub.ExtractDataset(dataset_request("stuck.h5"), timeout=BOUND)
        assert entered.wait(BOUND)
        call.cancel()
        # The worker is free again although the job itself still hangs.
        deadline = time.monotonic() + BOUND / 2
        while True:
            try:
                reply = client.stub.Embed(embed_request(1), timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                assert time.monotonic() < deadline, "the cancelled call kept its worker"
        assert len(reply.embeddings) == 1


def test_jobs_beyond_max_jobs_are_refused(roots, monkeypatch):
    with (
        stuck_jobs(monkeypatch) as (entered, release),
        serving(roots, preload=[PRELOAD], max_jobs=1) as srv,
        Client(f"127.0.0.1:{srv.port}") as client,
    ):
        first = client.stub.ExtractDataset(dataset_request("one.h5"), timeout=BOUND)
        assert entered.wait(BOUND)
        error = error_of(
            lambda: list(client.stub.ExtractDataset(dataset_request("two.h5"), timeout=BOUND))
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_jobs" in error.details()
        release.set()
        assert list(first)[-1].rows == 12
        wait_until(lambda: not srv.servicer._jobs, "the first job to end")
        assert (
            list(client.stub.ExtractDataset(dataset_request("two.h5"), timeout=BOUND))[-1].rows
            == 12
        )


# -- item 5: models ------------------------------------------------------------------


def test_max_loaded_holds_while_every_model_is_in_use(roots):
    with (
        serving(roots, preload=[PRELOAD], max_loaded=1) as srv,
        Client(f"127.0.0.1:{srv.port}") as client,
    ):
        model = srv.pool.loaded()[0]
        entered, release = block_model(model)
        try:
            busy = client.stub.Embed.future(embed_request(1), timeout=BOUND)
            assert entered.wait(BOUND)
            other = embed_request(1, pooling="max")  # another model
            error = error_of(lambda: client.stub.Embed(other, timeout=3))
            assert error.code() in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert srv.pool.loaded() == [model]  # no second model beside the busy one
        finally:
            release.set()
        assert len(busy.result(BOUND).embeddings) == 1
        assert len(client.stub.Embed(other, timeout=BOUND).embeddings) == 1
        assert [m.settings.pooling for m in srv.pool.loaded()] == ["max"]


def test_a_failed_model_build_is_forgotten_and_retried(roots, monkeypatch):
    import featcache.service.models as models

    real = models.FeatureExtractor
    failures = [WeightsError("weights: could not be read (test)")]

    def build(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "FeatureExtractor", build)
    with serving(roots) as srv, Client(f"127.0.0.1:{srv.port}") as client:
        error = error_of(lambda: client.stub.Embed(embed_request(1), timeout=BOUND))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert srv.pool._loading == {}  # no stale entry
        assert len(client.stub.Embed(embed_request(1), timeout=BOUND).embeddings) == 1


def test_allowed_backbones_fixed_weights_and_bounded_model_waits(roots):
    denied = grpc.StatusCode.PERMISSION_DENIED
    with (
        serving(
            roots,
            preload=[PRELOAD],
            allow_backbone=["vgg16"],
            fixed_weights=True,
            max_loaded=1,
            max_wait=0.5,
        ) as srv,
        Client(f"127.0.0.1:{srv.port}") as client,
    ):
        stub = client.stub
        error = error_of(lambda: stub.Embed(embed_request(1, name="mobilenet"), timeout=BOUND))
        assert error.code() == denied and "allow_backbone" in error.details()
        error = error_of(lambda: stub.Embed(embed_request(1, seed=21), timeout=BOUND))
        assert error.code() == denied and "fixed_weights" in error.details()
        request = dataset_request("m.h5")
        request.backbone.name = "mobilenet"
        error = error_of(lambda: list(stub.ExtractDataset(request, timeout=BOUND)))
        assert error.code() == denied
        assert [b["name"] for b in client.list_backbones()["backbones"]] == ["vgg16"]
        assert len(stub.Embed(embed_request(1, pooling="max"), timeout=BOUND).embeddings) == 1
        # max_loaded=1 and that model busy: another waits max_wait, then RESOURCE_EXHAUSTED.
        model = srv.pool.loaded()[0]
        entered, release = block_model(model)
        try:
            busy = stub.Embed.future(embed_request(1, pooling="max"), timeout=BOUND)
            assert entered.wait(BOUND)
            error = error_of(lambda: stub.Embed(embed_request(1), timeout=BOUND))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_loaded" in error.details()
        finally:
            release.set()
        assert len(busy.result(BOUND).embeddings) == 1
    with pytest.raises(InvalidOptionError, match="vgg61"):
        start_server(options(roots, allow_backbone=["vgg61"]))
    with pytest.raises(InvalidOptionError, match="fixed_weights"):
        start_server(options(roots, fixed_weights=True))
    with pytest.raises(Exception, match="allow_backbone"):
        start_server(options(roots, preload=[PRELOAD], allow_backbone=["mobilenet"]))
