"""What a server shows beyond itself: binding, tokens over plaintext, paths and INTERNAL."""

from __future__ import annotations

import warnings
from pathlib import Path

import grpc
import pytest

from featcache import Client, InvalidOptionError, ServeOptions, start_server
from featcache.cli import main
from featcache.protos import extractor_pb2 as pb
from featcache.protos import extractor_pb2_grpc as pb_grpc
from helpers import make_class_folder


def test_a_non_loopback_bind_needs_a_token_tls_or_insecure(tmp_path):
    with pytest.raises(InvalidOptionError, match=r"^host '0.0.0.0': .*token_file"):
        start_server(ServeOptions(host="0.0.0.0", port=0), warm=False)
    with pytest.raises(InvalidOptionError, match="TLS alone"):  # encrypts, lets anyone in
        start_server(ServeOptions(host="0.0.0.0", port=0, tls_cert="c.pem", tls_key="k.pem"))
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    token.chmod(0o600)
    for extra in ({"token_file": str(token)}, {"insecure": True}):
        server = start_server(ServeOptions(host="0.0.0.0", port=0, **extra), warm=False)
        server.stop(0)
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2 and "--host '0.0.0.0'" in result.output


def test_a_token_file_others_can_read_is_refused_as_ssh_refuses_a_key(tmp_path):
    """Issue 25 item 10: serve refuses it in one line (--insecure: a warning); a client
    warns."""
    from click.testing import CliRunner

    token = tmp_path / "token"
    token.write_text("s3cret-token")
    token.chmod(0o644)
    with pytest.raises(InvalidOptionError, match=r"readable by group or others \(mode 0644\)"):
        start_server(ServeOptions(port=0, token_file=str(token)), warm=False)
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--token-file", str(token)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --token-file {token}: readable by group or others (mode 0644); "
        f"chmod 600 {token} (or serve with --insecure)"
    )
    with pytest.warns(UserWarning, match="chmod 600"):
        server = start_server(
            ServeOptions(port=0, token_file=str(token), insecure=True), warm=False
        )
    server.stop(0)
    with pytest.warns(UserWarning, match="readable by group or others"):
        Client("127.0.0.1:50051", token_file=token).close()
    token.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Client("127.0.0.1:50051", token_file=token).close()
        start_server(ServeOptions(port=0, token_file=str(token)), warm=False).stop(0)


def test_the_client_warns_before_sending_a_token_in_plaintext():
    with pytest.warns(UserWarning, match="without TLS"):
        Client("10.1.2.3:50051", token="t0ken").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Client("127.0.0.1:50051", token="t0ken").close()  # loopback: nothing on the way
        Client("[::1]:50051", token="t0ken").close()


@pytest.fixture
def server(tmp_path):
    roots = {name: tmp_path / name for name in ("data", "cache", "weights")}
    for path in roots.values():
        path.mkdir()
    make_class_folder(roots["data"] / "set", classes=2, per_class=2)
    srv = start_server(
        ServeOptions(port=0, **{f"{name}_root": str(path) for name, path in roots.items()}),
        warm=False,
    )
    yield srv, tmp_path
    srv.stop(0)


def test_errors_and_infos_show_paths_relative_to_the_roots(server):
    srv, base = server
    with Client(f"127.0.0.1:{srv.port}") as client:
        steps = list(client.extract_dataset("set", "vgg16", weights="none", image_size=32))
        assert steps[-1].finished and steps[-1].output == "vgg16-32px-random.h5"
        with pytest.raises(Exception) as failed:  # other settings: a mismatch naming the file
            list(
                client.extract_dataset(
                    "set", "vgg16", output=steps[-1].output, weights="none", image_size=40
                )
            )
        assert "vgg16-32px-random.h5" in str(failed.value) and str(base) not in str(failed.value)


def test_internal_errors_give_an_id_not_the_exception_text(server, monkeypatch):
    srv, _ = server

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /srv/private/path")

    monkeypatch.setattr(srv.servicer, "_embed", broken)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = pb_grpc.ExtractorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(backbone=pb.BackboneSettings(name="vgg16")), timeout=60)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details()
    assert "internal error" in details and "secret" not in details and "/srv" not in details


def test_weights_paths_in_replies_are_relative_to_the_weights_root(server):
    import keras

    srv, base = server
    net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    net.save_weights(base / "weights" / "w.weights.h5")
    with Client(f"127.0.0.1:{srv.port}") as client:
        info = client.info("vgg16", weights="w.weights.h5", image_size=32)
        listed = client.list_backbones()["loaded"]
    assert info.weights == "w.weights.h5"
    assert [entry["weights"] for entry in listed] == ["w.weights.h5"]
    assert all(str(base) not in str(entry) for entry in listed)
    assert Path(srv.servicer.roots.weights or "").is_dir()


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once_leaving_a_readable_cache(tmp_path):
    import signal
    import subprocess
    import sys
    import threading
    import time

    from featcache import RemoteError, read_cache
    from helpers import cache_rows, write_image

    data, cache = tmp_path / "data", tmp_path / "cache"
    for i in range(200):
        write_image(data / "big" / f"c{i % 2}" / f"img_{i:03d}.png", 7000 + i, (64, 64))
    cache.mkdir()
    command = [sys.executable, "-m", "featcache.cli", "serve", "--port", "0", "--grace", "600"]
    command += ["--data-root", str(data), "--cache-root", str(cache), "--preload", "vgg16=none@32"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
                break
        assert port is not None
        stopping = threading.Event()

        def watch(stream) -> None:  # read the log (a full pipe would block the server)
            for line in stream:
                if "stopping" in line:
                    stopping.set()

        threading.Thread(target=watch, args=(process.stderr,), daemon=True).start()
        with Client(f"127.0.0.1:{port}", timeout=300) as client:
            steps = client.extract_dataset(
                "big", "vgg16", weights="none", image_size=64, batch_size=1, checkpoint_seconds=0.01
            )
            with pytest.raises(RemoteError):
                for _ in steps:
                    # a checkpoint on disk (the first commits at once; later ones wait 10x
                    # a commit's cost, which a busy machine can stretch past the job's end)
                    if cache_rows(cache / "vgg16-64px-random.h5") >= 1 and process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                        assert stopping.wait(120), "the first SIGTERM was not handled"
                        process.send_signal(signal.SIGTERM)  # now a second, separate signal
                        began = time.monotonic()
        # the first signal alone would wait up to --grace (600 s) for the job to save
        assert process.wait(120) == 1
        assert time.monotonic() - began < 120
    finally:
        if process.poll() is None:
            process.kill()
    saved = read_cache(
        cache / "vgg16-64px-random.h5"
    )  # a checkpoint of the killed job: complete rows
    assert 0 < len(saved.paths) < 200
