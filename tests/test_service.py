"""The gRPC service on a real server (127.0.0.1, port 0) with a real random-weights model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from featcache import ServeOptions, extract, start_server
from featcache.backbones.hub import HUB_REGISTRY
from featcache.backbones.registry import REGISTRY
from featcache.cli import main
from featcache.core.settings import BackboneConfig
from featcache.core.splits import SplitAssigner
from featcache.errors import FeatcacheError, RemoteError
from featcache.protos import extractor_pb2 as pb
from featcache.service.client import BadImagesError, Client
from featcache.store import read_cache
from helpers import cache_lock, make_class_folder, write_image

REGISTERED = len(REGISTRY) + len(HUB_REGISTRY)
"""Backbones ListBackbones names: keras.applications and keras-hub entries."""

MODEL = {"weights": "none", "image_size": 32}
"""Client settings for the tiny random VGG16 (seed 20, as ``extract``'s default)."""
PRELOAD = "vgg16=none@32"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    data = base / "data"
    make_class_folder(data / "set")
    big = data / "big"
    for i in range(200):
        write_image(big / f"c{i % 2}" / f"img_{i:03d}.png", 5000 + i, (64, 64))
    outside = base / "outside"
    write_image(outside / "secret.png", 1)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    linked = data / "linked" / "a"
    write_image(linked / "own.png", 2)
    (linked / "stolen.png").symlink_to(outside / "secret.png")
    (data / "linked" / "b").symlink_to(outside, target_is_directory=True)
    (base / "cache").mkdir()
    (base / "weights").mkdir()
    return base


def options(roots: Path, **extra) -> ServeOptions:
    return ServeOptions(
        port=0,
        data_root=str(roots / "data"),
        cache_root=str(roots / "cache"),
        weights_root=str(roots / "weights"),
        **extra,
    )


@pytest.fixture(scope="module")
def server(roots):
    srv = start_server(options(roots, preload=[PRELOAD], max_message_mb=2, max_delay_ms=20))
    yield srv
    srv.stop(0)


@pytest.fixture
def client(server):
    with Client(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def local(roots, tmp_path_factory) -> dict[str, np.ndarray]:
    """Features of the ``set`` folder from a local ``extract`` run, by relative path."""
    out = tmp_path_factory.mktemp("local") / "local.h5"
    extract(roots / "data" / "set", backbone="vgg16", output=out, progress=False, **MODEL)
    data = read_cache(out)
    return dict(zip(data.paths, data.features))


def set_files(roots: Path) -> list[Path]:
    return sorted((roots / "data" / "set").rglob("*.*"))


def rel(path: Path, roots: Path) -> str:
    return path.relative_to(roots / "data" / "set").as_posix()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_health_goes_serving_once_preloaded_and_reflection_lists_the_service(roots):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    srv = start_server(options(roots, preload=[PRELOAD]), warm=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "featcache.v1.Extractor"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            srv.warm_up()
            reply = health.Check(health_pb2.HealthCheckRequest(service="featcache.v1.Extractor"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "featcache.v1.Extractor" in services
            assert "grpc.health.v1.Health" in services
    finally:
        srv.stop(0)


def test_list_backbones(client):
    listing = client.list_backbones()
    assert len(listing["backbones"]) == REGISTERED
    vgg = next(b for b in listing["backbones"] if b["name"] == "vgg16")
    assert vgg == {
        "name": "vgg16",
        "default_size": 224,
        "feature_dim": 512,
        "loaded": True,
        "family": "vgg16",
        "source": "keras.applications",
    }
    dinov2 = next(b for b in listing["backbones"] if b["name"] == "dinov2_small")
    assert dinov2["family"] == "dinov2" and dinov2["source"] == "keras-hub"
    assert listing["loaded"][0]["image_height"] == 32


def test_embed_equals_local_extraction_and_reports_bad_images(client, roots, local):
    files = set_files(roots)
    images = [str(f) for f in files[:3]] + [b"not an image"] + [str(f) for f in files[3:]]
    rows = client.embed(images, "vgg16", errors="nan", **MODEL)
    assert rows.shape == (len(files) + 1, 512)
    assert np.isnan(rows[3]).all()
    good = np.delete(rows, 3, axis=0)
    expected = np.stack([local[rel(f, roots)] for f in files])
    np.testing.assert_allclose(good, expected, atol=1e-5)
    with pytest.raises(BadImagesError, match="image 3: not an image") as info:
        client.embed(images, "vgg16", **MODEL)
    assert list(info.value.errors) == [3]


def test_raw_pixels_equal_encoded_files_and_large_sets_stream(client, roots, monkeypatch):
    files = set_files(roots)
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files if f.suffix == ".png"]
    pngs = [str(f) for f in files if f.suffix == ".png"]
    encoded = client.embed(pngs, "vgg16", **MODEL)
    np.testing.assert_allclose(client.embed(arrays, "vgg16", **MODEL), encoded, atol=1e-5)
    floats = [a.astype(np.float32) for a in arrays]
    np.testing.assert_allclose(client.embed(floats, "vgg16", **MODEL), encoded, atol=1e-5)
    gray = np.asarray(Image.open(pngs[0]).convert("L"))
    assert client.embed([gray], "vgg16", **MODEL).shape == (1, 512)

    import featcache.service.client as client_module

    monkeypatch.setattr(client_module, "CHUNK_IMAGES", 2)  # 6 images: a 3-request stream
    calls = []
    original = client._stream
    monkeypatch.setattr(client, "_stream", lambda r: calls.append(1) or original(r))
    np.testing.assert_allclose(client.embed(pngs, "vgg16", **MODEL), encoded, atol=1e-5)
    assert calls == [1]


def test_requests_stay_under_the_clients_size_limit(server, client):
    pixels = [np.random.default_rng(i).integers(0, 256, (300, 300, 3), np.uint8) for i in range(8)]
    with pytest.raises(RemoteError) as info:  # 2.1 MB in one request; the server takes 2 MB
        client.embed(pixels, "vgg16", **MODEL)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    with Client(f"127.0.0.1:{server.port}", max_request_mb=1) as small:
        assert small.embed(pixels, "vgg16", **MODEL).shape == (8, 512)


def test_models_with_different_seeds_load_side_by_side_correctly(server, roots):
    from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone
    from featcache.extractor.decode import decode_and_resize

    image = set_files(roots)[0]
    results: dict[int, np.ndarray] = {}

    def call(seed: int) -> None:
        with Client(f"127.0.0.1:{server.port}") as own:
            results[seed] = own.embed([str(image)], "vgg16", seed=seed, **MODEL)[0]

    threads = [threading.Thread(target=call, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    pixels = decode_and_resize(image.read_bytes(), (32, 32), "stretch")[None]
    for seed in (1, 2):
        config = BackboneConfig("vgg16", "none", 32, seed=seed)
        expected = FeatureExtractor(resolve_backbone(config))(pixels)[0]
        np.testing.assert_allclose(results[seed], expected, atol=1e-5)


def test_sixteen_concurrent_clients_get_their_own_rows(server, roots, local):
    files = (set_files(roots) * 2)[:16]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)
    model = server.pool.loaded()[0]
    calls_before = model.batcher.calls

    def call(i: int) -> None:
        try:
            with Client(f"127.0.0.1:{server.port}") as own:
                barrier.wait()
                results[i] = own.embed([str(files[i])], "vgg16", **MODEL)[0]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for i, path in enumerate(files):
        np.testing.assert_allclose(results[i], local[rel(path, roots)], atol=1e-5)
    assert model.batcher.calls - calls_before < 16  # requests were merged


def test_bad_requests_get_precise_status_codes_and_the_server_stays_up(server, client):
    stub = client.stub

    def embed(images=(), **settings):
        base = {"name": "vgg16", "weights": "none", "image_size": [32]}
        request = pb.EmbedRequest(backbone=pb.BackboneSettings(**{**base, **settings}))
        request.images.extend(images)
        return lambda: stub.Embed(request, timeout=30)

    png = pb.Image(encoded=Path(__file__).with_name("conftest.py").read_bytes())
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        embed(name="vgg61")()
    assert info.value.code() == invalid and "vgg16" in info.value.details()
    assert code_of(embed(name="")) == invalid
    assert code_of(embed(pooling="bogus")) == invalid
    assert code_of(embed(resize="squash")) == invalid
    assert code_of(embed(image_size=[8])) == invalid
    assert code_of(embed(image_size=[2048])) == invalid  # over --max-image-size
    assert code_of(embed(seed=-1)) == invalid
    assert code_of(embed(seed=2**40)) == invalid
    short = pb.Image(pixels=pb.Tensor(data=b"\0" * 10, shape=[4, 4, 3]))
    assert code_of(embed([short])) == invalid
    assert code_of(embed([pb.Image(pixels=pb.Tensor(data=b"\0" * 4, shape=[2, 2, 1, 1]))])) == (
        invalid
    )
    assert code_of(embed([pb.Image()])) == invalid
    assert code_of(embed(weights="missing.h5")) == invalid
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert code_of(embed(weights="/etc/passwd")) == denied
    assert code_of(embed(weights="../outside/secret.png")) == denied
    assert code_of(embed(name="/tmp/model.keras")) == denied
    big = pb.Image(encoded=os.urandom(3 << 20))
    assert code_of(embed([big])) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # An undecodable image alone is a per-image error, not a failed call.
    reply = embed([png])()
    assert reply.embeddings[0].error.startswith("not an image")
    # Bytes that are not a protobuf message at all.
    raw = client.channel.unary_unary("/featcache.v1.Extractor/Embed")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff garbage", timeout=30)
    assert info.value.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
    # A stream whose first request names no backbone.
    stream = stub.EmbedStream(iter([pb.EmbedRequest(images=[png])]), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == invalid
    # A deadline too short for the model: DEADLINE_EXCEEDED, and nothing breaks.
    request = pb.EmbedRequest(
        backbone=pb.BackboneSettings(name="vgg16", weights="none", image_size=[32]),
        images=[pb.Image(pixels=pb.Tensor(data=b"\x80" * 3072, shape=[32, 32, 3]))] * 64,
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(request, timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(client.list_backbones()["backbones"]) == REGISTERED
    assert len(stub.Embed(request, timeout=60).embeddings) == 64


def test_extract_dataset_equals_local_and_stays_inside_its_roots(client, roots, local):
    steps = list(client.extract_dataset("set", "vgg16", output="set.h5", **MODEL))
    final = steps[-1]
    assert final.finished and final.rows == 12 and final.embedded == 12
    assert final.output == "set.h5" and final.feature_dim == 512
    assert all(not s.finished for s in steps[:-1]) and steps[0].total == 12
    data = read_cache(roots / "cache" / "set.h5")
    for path, row in zip(data.paths, data.features):
        np.testing.assert_allclose(row, local[path], atol=1e-5)

    def refused(**kwargs) -> str:
        with pytest.raises(RemoteError) as info:
            list(client.extract_dataset(backbone="vgg16", **{**MODEL, **kwargs}))
        return info.value.code

    assert refused(data="../outside") == "PERMISSION_DENIED"
    assert refused(data=str(roots / "data" / "set")) == "PERMISSION_DENIED"
    assert refused(data="escape") == "PERMISSION_DENIED"
    assert refused(data="set", output="../stolen.h5") == "PERMISSION_DENIED"
    assert refused(data="missing") == "NOT_FOUND"
    assert refused(data="set", output="set.h5", pooling="max") == "FAILED_PRECONDITION"
    assert refused(data="set", output="s*.h5") == "INVALID_ARGUMENT"
    assert refused(data="set", dtype="int8") == "INVALID_ARGUMENT"
    assert refused(data="set", batch_size=10**9) == "INVALID_ARGUMENT"
    # Files and class folders that are links leading out of the data root are left out.
    linked = list(client.extract_dataset("linked", "vgg16", output="linked.h5", **MODEL))[-1]
    assert (linked.rows, linked.bad, linked.bad_files) == (1, 0, [])
    assert read_cache(roots / "cache" / "linked.h5").class_names == ["a"]


def test_requests_sharing_a_model_keep_their_own_seed_and_weights_path(roots, tmp_path):
    """Models are shared by contents, not by seed or path: each request's cache records its
    own seed (which assigns its splits) and its own weights path."""
    import keras

    weights = roots / "weights"
    keras.utils.set_random_seed(3)
    net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    net.save_weights(weights / "a.weights.h5")
    shutil.copyfile(weights / "a.weights.h5", weights / "b.weights.h5")
    srv = start_server(options(roots, preload=["vgg16=a.weights.h5@32"]))
    try:
        with Client(f"127.0.0.1:{srv.port}") as own:
            settings = {"weights": "b.weights.h5", "image_size": 32}
            info = own.info("vgg16", seed=7, **settings)
            assert info.seed == 7 and info.weights == "b.weights.h5"  # relative to the root
            for seed in (7, 8):
                output = f"seed{seed}.h5"
                steps = list(
                    own.extract_dataset("set", "vgg16", output=output, seed=seed, **settings)
                )
                assert steps[-1].rows == 12
        assert len(srv.pool.loaded()) == 1  # one model served both files and seeds
    finally:
        srv.stop(0)
    seven, eight = (read_cache(roots / "cache" / f"seed{s}.h5") for s in (7, 8))
    assert (seven.settings.seed, eight.settings.seed) == (7, 8)
    assert seven.settings.weights == str(weights / "b.weights.h5")
    assert seven.settings.split_method == "stratified"  # a new cache's default
    names = [seven.class_names[y] for y in seven.labels]
    assigner = SplitAssigner((0.7, 0.2, 0.1), 7, "stratified")  # the seed 7 placed the rows
    expected = assigner.assign(seven.paths, seven.sha256, names, [None] * len(names))
    assert seven.split.tolist() == expected
    np.testing.assert_allclose(seven.features, eight.features, atol=1e-6)
    local = tmp_path / "local.h5"
    extract(roots / "data" / "set", backbone="vgg16", weights=str(weights / "b.weights.h5"),
            image_size=32, seed=7, output=local, progress=False)  # fmt: skip
    mine = read_cache(local)
    assert mine.split.tolist() == seven.split.tolist()
    np.testing.assert_allclose(mine.features, seven.features, atol=1e-5)


def test_cancelling_extract_dataset_leaves_a_resumable_cache(client, roots):
    out = roots / "cache" / "big.h5"
    progress = client.extract_dataset("big", "vgg16", output="big.h5", batch_size=2, **MODEL)
    for step in progress:
        if step.embedded >= 4:
            break
    progress.close()  # cancels the call
    with cache_lock(out, 30):  # the job saved and let go
        first = read_cache(out)
    assert 4 <= len(first.paths) <= 200
    final = list(client.extract_dataset("big", "vgg16", output="big.h5", **MODEL))[-1]
    assert final.rows == 200 and final.reused == len(first.paths)
    assert final.embedded == 200 - len(first.paths)
    resumed = read_cache(out)
    rows = dict(zip(resumed.paths, resumed.features))
    for path, row in zip(first.paths, first.features):
        np.testing.assert_array_equal(rows[path], row)


def test_remote_extract_command_equals_local_and_resumes(server, class_folder, tmp_path):
    local_out, remote_out = tmp_path / "local.h5", tmp_path / "remote.h5"
    args = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--json"]
    runner = CliRunner()
    remote = ["--remote", f"127.0.0.1:{server.port}"]
    result = runner.invoke(
        main, ["extract", str(class_folder), "-o", str(remote_out), *remote, *args]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["new"] == 12
    runner.invoke(main, ["extract", str(class_folder), "-o", str(local_out), *args])
    a, b = read_cache(remote_out), read_cache(local_out)
    assert a.paths == b.paths and (a.labels == b.labels).all() and (a.split == b.split).all()
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    write_image(class_folder / "class_0" / "new.png", 99)
    (class_folder / "class_1" / "broken.png").write_bytes(b"truncated")
    result = runner.invoke(
        main, ["extract", str(class_folder), "-o", str(remote_out), *remote, *args]
    )
    summary = json.loads(result.output)
    assert (summary["new"], summary["reused"], summary["bad"]) == (1, 12, 1)
    assert summary["bad_files"][0]["reason"].startswith("not an image")
    # Local and remote runs write the same cache, so either can resume the other's.
    result = runner.invoke(main, ["extract", str(class_folder), "-o", str(local_out), *args])
    assert json.loads(result.output)["reused"] == 12
    result = runner.invoke(main, ["extract", str(class_folder), "-o", str(remote_out), *args])
    assert json.loads(result.output)["new"] == 0
    # --max-pixels applies on the server as it does here.
    tiny = {"backbone": "vgg16", "progress": False, "max_pixels": 1000, **MODEL}
    here = extract(class_folder, output=tmp_path / "l2.h5", **tiny)
    there = extract(
        class_folder, output=tmp_path / "r2.h5", remote=f"127.0.0.1:{server.port}", **tiny
    )
    assert here.bad == there.bad > 0 and here.rows == there.rows
    assert sorted(here.bad_files) == sorted(there.bad_files)


def test_remote_and_local_extracts_name_the_default_cache_alike(
    server, class_folder, tmp_path, monkeypatch
):
    """Without -o, a remote run writes the cache a local run with the same settings names
    (the settings in the name), so the local run resumes it."""
    monkeypatch.chdir(tmp_path)
    tiny = {"backbone": "vgg16", "progress": False, "pooling": "max", **MODEL}
    there = extract(class_folder, remote=f"127.0.0.1:{server.port}", **tiny)
    assert there.output == "cache/vgg16-32px-max-random.h5" and there.new == 12
    here = extract(class_folder, **tiny)
    assert (here.output, here.reused, here.new) == (there.output, 12, 0)


def test_unreachable_server_is_a_one_line_error(class_folder, tmp_path):
    result = CliRunner().invoke(
        main,
        ["extract", str(class_folder), "-o", str(tmp_path / "c.h5"), "--remote", "127.0.0.1:1"],
    )
    assert result.exit_code == 2
    assert "UNAVAILABLE" in result.output and len(result.output.strip().splitlines()) == 1


def test_bearer_token_is_required_except_for_health(roots, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    srv = start_server(options(roots, token_file=str(token)))
    address = f"127.0.0.1:{srv.port}"
    try:
        for kwargs in ({}, {"token": "wrong"}):
            with Client(address, **kwargs) as anonymous:
                with pytest.raises(RemoteError) as info:
                    anonymous.list_backbones()
                assert info.value.code == "UNAUTHENTICATED"
                with pytest.raises(RemoteError) as info:
                    list(anonymous.extract_dataset("set", "vgg16", **MODEL))
                assert info.value.code == "UNAUTHENTICATED"
                with pytest.raises(RemoteError) as info:
                    anonymous.classify([b"x"], "any")
                assert info.value.code == "UNAUTHENTICATED"
        with Client(address, token_file=token) as allowed:
            assert len(allowed.list_backbones()["backbones"]) == REGISTERED
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop(0)


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_and_mutual_tls(roots, tmp_path):
    pytest.importorskip("cryptography", reason="cryptography makes the test certificates")
    cert, key = _certificate(tmp_path, "server")
    srv = start_server(options(roots, tls_cert=str(cert), tls_key=str(key)))
    address = f"127.0.0.1:{srv.port}"
    try:
        with Client(address, tls_ca=cert, timeout=10) as secure:
            assert len(secure.list_backbones()["backbones"]) == REGISTERED
        with Client(address, timeout=3) as plain, pytest.raises(RemoteError):
            plain.list_backbones()
    finally:
        srv.stop(0)
    client_cert, client_key = _certificate(tmp_path, "client")
    srv = start_server(
        options(roots, tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(client_cert))
    )
    address = f"127.0.0.1:{srv.port}"
    try:
        with Client(address, tls_ca=cert, timeout=3) as anonymous, pytest.raises(RemoteError):
            anonymous.list_backbones()
        with Client(
            address, tls_ca=cert, tls_cert=client_cert, tls_key=client_key, timeout=10
        ) as known:
            assert len(known.list_backbones()["backbones"]) == REGISTERED
    finally:
        srv.stop(0)


@pytest.mark.slow
def test_sigterm_stops_jobs_cleanly_and_drains(roots, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copytree(roots / "data" / "big", tmp_path / "data" / "big")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "featcache.cli", "serve", "--port", "0"),
            *("--data-root", str(tmp_path / "data"), "--cache-root", str(cache)),
            *("--preload", PRELOAD),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
                break
        assert port is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.2)
        with Client(f"127.0.0.1:{port}") as client:
            progress = client.extract_dataset("big", "vgg16", batch_size=2, **MODEL)
            signalled = False  # once: a second SIGTERM exits at once, without draining
            with pytest.raises(RemoteError) as info:
                for step in progress:
                    if step.embedded >= 4 and not signalled:
                        process.send_signal(signal.SIGTERM)
                        signalled = True
            assert info.value.code == "UNAVAILABLE"
            assert "resume" in str(info.value)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    out = cache / "vgg16-32px-random.h5"  # the default name carries the settings
    with cache_lock(out, 1):
        saved = read_cache(out)
    assert 4 <= len(saved.paths) < 200


def test_client_does_not_import_tensorflow():
    code = (
        "import sys, featcache\n"
        "featcache.Client('127.0.0.1:1').close()\n"
        "print('HEAVY', [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_least_recently_used_models_are_unloaded(roots):
    srv = start_server(options(roots, max_loaded=1))
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            image = [str(set_files(roots)[0])]
            first = client.embed(image, "vgg16", **MODEL)
            client.embed(image, "vgg16", pooling="max", **MODEL)
            loaded = client.list_backbones()["loaded"]
            assert [m["pooling"] for m in loaded] == ["max"]
            np.testing.assert_allclose(client.embed(image, "vgg16", **MODEL), first, atol=1e-6)
            assert [m["pooling"] for m in client.list_backbones()["loaded"]] == ["avg"]
    finally:
        srv.stop(0)


def test_classify_serves_exported_models(roots, tmp_path):
    from featcache.heads.endtoend import export
    from featcache.heads.images import predict_images
    from featcache.heads.train import train_head

    cache = tmp_path / "set.h5"
    extract(roots / "data" / "set", backbone="vgg16", output=cache, progress=False, **MODEL)
    train_head(cache, head="dense", hidden=(8,), epochs=2, output=tmp_path / "head")
    model = export(tmp_path / "head", tmp_path / "tiny.keras")
    srv = start_server(options(roots, models=[f"tiny={model}"]))
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            assert client.list_backbones()["classifiers"] == ["tiny"]
            files = set_files(roots)[:4]
            results = client.classify([str(f) for f in files] + [b"junk"], "tiny", top_k=2)
            local = predict_images(model, [str(f) for f in files], None, top_k=2)
            for remote, here in zip(results, local):
                assert [n for n, _ in remote["top"]] == [n for n, _ in here.top]
                np.testing.assert_allclose(
                    [p for _, p in remote["top"]], [p for _, p in here.top], atol=1e-5
                )
                assert remote["probabilities"].sum() == pytest.approx(1.0, abs=1e-5)
            assert results[-1]["error"].startswith("not an image")
            with pytest.raises(RemoteError) as info:
                client.classify([str(files[0])], "missing")
            assert info.value.code == "INVALID_ARGUMENT" and "tiny" in str(info.value)
    finally:
        srv.stop(0)


def test_an_absolute_weights_path_for_a_server_is_refused_naming_it(server, roots, tmp_path):
    """`extract --remote --weights /abs/file.h5`: the path as given, and the server's
    --weights-root; the server itself, asked directly, names the flag and the relative path."""
    weights = roots / "weights" / "file.h5"
    result = CliRunner().invoke(
        main,
        [
            "extract", str(roots / "data" / "set"), "-o", str(tmp_path / "c.h5"),
            "--remote", f"127.0.0.1:{server.port}", "-b", "vgg16", "--weights", str(weights),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert f"--weights {weights}" in line and "--weights-root" in line and "file.h5" in line
    with Client(f"127.0.0.1:{server.port}") as client, pytest.raises(FeatcacheError) as refused:
        client.resolve(BackboneConfig("vgg16", str(weights), 32))
    assert "--weights-root" in str(refused.value) and "'file.h5'" in str(refused.value)
