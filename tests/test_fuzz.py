"""gRPC fuzz: over a thousand malformed or hostile requests against a real ``featcache serve``.

The server runs as its own process on 127.0.0.1 (port 0), with a token, so that its peak
memory can be read from ``/proc`` and a crash would show as a dead process. Every reply must
carry one of the documented status codes for its kind of request (never UNKNOWN), health must
stay SERVING throughout, and the server's peak RSS must stay under :data:`RSS_BOUND_MB`.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featcache.protos import extractor_pb2 as pb
from featcache.protos import extractor_pb2_grpc as pb_grpc
from helpers import make_class_folder, write_image

pytestmark = pytest.mark.slow

CASES = 1200
RSS_BOUND_MB = 3072
"""The server process's peak resident memory (TensorFlow and the tiny VGG16 included)."""
TOKEN = "fuzz-token-0123456789"
SEED = 1234
C = grpc.StatusCode
DOCUMENTED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.PERMISSION_DENIED,
    C.NOT_FOUND,
    C.RESOURCE_EXHAUSTED,
    C.FAILED_PRECONDITION,
    C.ABORTED,
    C.UNAUTHENTICATED,
    C.DEADLINE_EXCEEDED,
    C.CANCELLED,
    C.UNAVAILABLE,
}
"""The codes docs/grpc.md documents (INTERNAL is for bugs: never expected)."""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    data, cache, weights = tmp_path / "data", tmp_path / "cache", tmp_path / "weights"
    make_class_folder(data / "set", classes=2, per_class=3)
    write_image(tmp_path / "outside" / "secret.png", 1)
    (data / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    cache.mkdir()
    weights.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    command = [sys.executable, "-m", "featcache.cli", "serve", "--port", "0"]
    command += ["--data-root", str(data), "--cache-root", str(cache)]
    command += ["--weights-root", str(weights), "--preload", "vgg16=none@32"]
    command += ["--token-file", str(tmp_path / "token"), "--max-message-mb", "4"]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "listening on" in line:
            port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
            # keep reading its log, so that a full pipe never blocks the server
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, port
    raise AssertionError(f"the server exited ({process.wait()}) before listening")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _settings(rng: random.Random, hostile: bool) -> pb.BackboneSettings:
    settings = pb.BackboneSettings(name="vgg16", weights="none", image_size=[32])
    if not hostile:
        return settings
    choice = rng.randrange(12)
    if choice == 0:
        settings.name = "".join(rng.choice("abcxyz_-./") for _ in range(rng.randrange(0, 12)))
    elif choice == 1:
        settings.pooling = rng.choice(["zzz", "AVG", " ", "none\x00"])
    elif choice == 2:
        settings.resize = rng.choice(["zoom", "PAD", "\u00e9"])
    elif choice == 3:
        settings.ClearField("image_size")
        settings.image_size.extend(rng.choice([[0], [-5], [5000], [1, 2, 3], [2**31 - 1, 7]]))
    elif choice == 4:
        settings.weights = rng.choice(["../secret.h5", "/etc/passwd", "missing.h5", "~/x.h5"])
    elif choice == 5:
        settings.layer = rng.choice(["no_such_layer", "block1_conv1\x00", "x" * 300])
    elif choice == 6:
        settings.name = rng.choice(["../model.keras", "/tmp/model.keras", "nothere.keras"])
    elif choice == 7:
        settings.preprocessing = rng.choice(["zzz", "resnet9000", ""])
    elif choice == 8:
        settings.seed = rng.choice([2**40, 2**63 - 1, -1])
    elif choice == 9:
        settings.name = "vgg16\u202e"
    elif choice == 10:
        settings.image_size[:] = [31]  # below VGG16's minimum
    else:
        settings.weights = "imagenet"  # cannot download here: FAILED_PRECONDITION
    return settings


def _image(rng: random.Random) -> pb.Image:
    kind = rng.randrange(6)
    if kind == 0:
        return pb.Image(encoded=rng.randbytes(rng.randrange(0, 3000)))
    if kind == 1:  # a PNG signature followed by garbage
        return pb.Image(encoded=b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randrange(0, 500)))
    if kind == 2:  # pixels whose shape and byte count disagree
        shape = [rng.randrange(0, 40) for _ in range(rng.randrange(0, 5))]
        data = rng.randbytes(rng.randrange(0, 2000))
        return pb.Image(pixels=pb.Tensor(data=data, shape=shape, dtype="uint8"))
    if kind == 3:
        dtype = rng.choice(["int64", "float64", "complex", "", "float32"])
        return pb.Image(pixels=pb.Tensor(data=b"\x00" * 48, shape=[2, 2, 3], dtype=dtype))
    if kind == 4:  # NaN and infinite floats
        values = np.array([np.nan, np.inf, -np.inf, 1e30] * 3, np.float32)
        return pb.Image(pixels=pb.Tensor(data=values.tobytes(), shape=[2, 2, 3], dtype="float32"))
    pixels = np.frombuffer(rng.randbytes(20 * 24 * 3), np.uint8)  # a valid small image
    return pb.Image(pixels=pb.Tensor(data=pixels.tobytes(), shape=[20, 24, 3], dtype="uint8"))


KINDS = ("images", "settings", "many", "dataset", "stream", "deadline", "auth", "raw", "classify")


def _send(
    kind: str, rng: random.Random, stub: pb_grpc.ExtractorStub, channel: grpc.Channel, auth
) -> None:
    """Send one hostile request of this kind; raises ``grpc.RpcError`` with its status."""
    if kind == "images":
        images = [_image(rng) for _ in range(rng.randrange(0, 6))]
        stub.Embed(pb.EmbedRequest(backbone=_settings(rng, False), images=images), metadata=auth)
    elif kind == "settings":
        images = [_image(rng) for _ in range(rng.randrange(0, 2))]
        stub.Embed(pb.EmbedRequest(backbone=_settings(rng, True), images=images), metadata=auth)
    elif kind == "many":
        count = rng.choice([4097, 20000, 60000])
        images = [pb.Image(encoded=b"")] * count
        stub.Embed(pb.EmbedRequest(backbone=_settings(rng, False), images=images), metadata=auth)
    elif kind == "dataset":
        data = rng.choice(["../", "/etc", "escape", "missing", "set", "set/class_0/img_0.png", ""])
        output = rng.choice(["", "../out.h5", "/tmp/x.h5", "s*.h5", "a/b/c.h5", "."])
        request = pb.ExtractDatasetRequest(
            data=data,
            output=output,
            backbone=_settings(rng, rng.random() < 0.5),
            batch_size=rng.choice([0, -1, 1, 5000, 2**31 - 1]),
            split=rng.choice(["", "1,1,1", "x", "0.5,0.5"]),
            dtype=rng.choice(["", "int8", "float16"]),
        )
        call = stub.ExtractDataset(request, metadata=auth, timeout=60)
        for _ in call:  # read one message, then walk away: the job must stop
            call.cancel()
            break
    elif kind == "stream":
        requests = [pb.EmbedRequest(images=[_image(rng)]) for _ in range(rng.randrange(1, 4))]
        if rng.random() < 0.5:
            requests[0].backbone.CopyFrom(_settings(rng, rng.random() < 0.5))
        call = stub.EmbedStream(iter(requests), metadata=auth, timeout=60)
        for _ in call:
            if rng.random() < 0.5:
                call.cancel()
                break
    elif kind == "deadline":
        images = [_image(rng) for _ in range(3)]
        request = pb.EmbedRequest(backbone=_settings(rng, False), images=images)
        stub.Embed(request, metadata=auth, timeout=0.001)
    elif kind == "auth":
        metadata = rng.choice([(), (("authorization", "Bearer wrong"),), (("authorization", ""),)])
        stub.ListBackbones(pb.ListBackbonesRequest(), metadata=metadata, timeout=60)
    elif kind == "raw":  # bytes that may not even parse as the request message
        method = rng.choice(["Embed", "Classify", "ListBackbones"])
        call = channel.unary_unary(f"/featcache.v1.Extractor/{method}")
        call(rng.randbytes(rng.randrange(0, 200)), metadata=auth, timeout=60)
    else:
        request = pb.ClassifyRequest(model=rng.choice(["", "nope", "../x"]), top_k=-3)
        stub.Classify(request, metadata=auth, timeout=60)


def test_a_thousand_hostile_requests_get_documented_codes(tmp_path):
    process, port = _start(tmp_path)
    rng = random.Random(SEED)
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 300
            while True:  # wait for the preload: SERVING
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                assert time.monotonic() < deadline, "the server never became SERVING"
                time.sleep(0.2)
            stub = pb_grpc.ExtractorStub(channel)
            for i in range(CASES):
                kind, code = rng.choice(KINDS), C.OK
                try:
                    _send(kind, rng, stub, channel, auth)
                except grpc.RpcError as exc:
                    code = exc.code()
                seen[kind][code.name] += 1
                assert code in DOCUMENTED, f"case {i} ({kind}): {code.name}"
                if i % 50 == 0:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=60).status
                    assert status == health_pb2.HealthCheckResponse.SERVING, f"after case {i}"
                    assert process.poll() is None, "the server died"
        peak = _peak_rss_mb(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
    total = sum(sum(c.values()) for c in seen.values())
    codes = collections.Counter()
    for counter in seen.values():
        codes.update(counter)
    print(f"\n{total} fuzz cases; codes {dict(codes)}; peak RSS {peak:.0f} MiB")
    for kind, counter in sorted(seen.items()):
        print(f"  {kind}: {dict(counter)}")
    assert total == CASES
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MiB"
    assert process.returncode == 0, "the server did not stop cleanly on SIGTERM"
