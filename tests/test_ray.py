"""The Ray engine on a local Ray instance and on a `ray start` cluster: same cache as the local
engine, resume, bad files, errors."""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from filelock import FileLock

from featcache import extract, read_cache
from featcache.backbones.backbone import resolve_backbone
from featcache.cli import main
from featcache.core.settings import BackboneConfig
from featcache.errors import EngineError, InvalidOptionError
from helpers import TINY, RowWatch, make_class_folder, write_image

# One worker runs them all (--dist loadgroup), so the other never waits on the lock below.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from featcache import RayOptions  # noqa: E402
from featcache.extractor import ray_engine  # noqa: E402 - after the skip

CLI_TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "-q"]
RAY_TOKEN_ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
"""`ray start` turns on token authentication; a driver joining by address must ask for it.
The token is this run's own: Ray's default token file (~/.ray/auth_token) is shared by every
Ray on the machine, and another one started meanwhile may replace it."""


@pytest.fixture(autouse=True)
def one_ray_at_a_time(tmp_path_factory):
    """Each test starts its own local Ray instance; xdist workers take turns (2 cores)."""
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "featcache-ray.lock")):
        yield
    assert not ray.is_initialized()  # an instance featcache started is shut down


@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster started with `ray start --head`, as on a real head node.

    `--block` keeps it in this test's hands: stopping it kills only its own processes,
    never another Ray on the machine (which `ray stop` would).
    """
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    with open(tmp_path / "ray-start.log", "wb") as log:
        head = subprocess.Popen(
            start, env=RAY_TOKEN_ENV, stdout=log, stderr=log, start_new_session=True
        )
    address = f"127.0.0.1:{port}"
    try:
        status = [ray_cli, "status", "--address", address]
        deadline = time.monotonic() + 600  # a loaded machine is slow; a dead head fails at once
        while subprocess.run(status, env=RAY_TOKEN_ENV, capture_output=True).returncode != 0:
            assert head.poll() is None, (tmp_path / "ray-start.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not come up in 600 s"
            time.sleep(1)
        yield address
    finally:  # the head, its raylet, GCS and workers share the process group
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def _assert_same_cache(path, reference):
    ours, theirs = read_cache(path), read_cache(reference)
    assert ours.paths == theirs.paths
    assert ours.sha256 == theirs.sha256
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(ours.split, theirs.split)
    np.testing.assert_allclose(ours.features, theirs.features, atol=1e-5)
    assert ours.bad == theirs.bad


def test_two_actors_on_a_cluster_write_the_local_engines_cache(tmp_path, monkeypatch, ray_cluster):
    data = make_class_folder(tmp_path / "data", classes=3, per_class=5)
    (data / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    (data / "class_1" / "cut.png").write_bytes((data / "class_1" / "img_0.png").read_bytes()[:60])
    local = extract(data, output=tmp_path / "local.h5", **TINY)

    # The CLI as a user runs it on a head node.
    args = ["extract", str(data), "-o", str(tmp_path / "ray.h5"), "--engine", "ray"]
    args += ["--ray-address", ray_cluster, "--actors", "2", "--batch-size", "4", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "featcache.cli", *args, *CLI_TINY[:-1]],
        env=RAY_TOKEN_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["bad"], summary["rows"]) == (15, 2, 15)
    bad = sorted((b["path"], b["reason"]) for b in summary["bad_files"])
    assert bad == sorted(local.bad_files)
    assert summary["load_seconds"] > 0
    _assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")

    # Nothing new, the bad files still bad (checked on the driver): Ray is not started.
    def no_ray(*args):
        raise AssertionError("Ray was started with nothing to embed")

    monkeypatch.setattr(ray_engine, "_connect", no_ray)
    idle = extract(
        data, output=tmp_path / "ray.h5", engine="ray", ray_options=RayOptions(ray_cluster), **TINY
    )
    assert (idle.new, idle.reused, idle.bad) == (0, 15, 2)
    _assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")


def test_killed_ray_job_resumes_where_it_stopped(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=4, per_class=20)
    out = tmp_path / "ray.h5"
    args = ["extract", str(data), "-o", str(out), "--engine", "ray", "--actors", "1"]
    args += ["--batch-size", "1", "--checkpoint-seconds", "0", *CLI_TINY]
    process = subprocess.Popen(
        [sys.executable, "-m", "featcache.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the driver and the Ray instance it started die together
    )
    deadline = time.monotonic() + 600  # Ray, the actor's TensorFlow: slow on a busy machine
    rows_now = RowWatch(out)
    while rows_now() < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    checkpointed, running = rows_now() >= 1, process.poll() is None
    with contextlib.suppress(ProcessLookupError):  # the group may have gone with the run
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert running, "the run ended before the kill"
    assert checkpointed, "no checkpoint in 600 s"
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()

    kept = read_cache(out).paths
    assert 1 <= len(kept) < 80  # killed mid-run, after a checkpoint
    # Meanwhile one committed file is deleted and one new file appears: resume is incremental.
    (data / kept[0]).unlink()
    write_image(data / "class_3" / "new.png", seed=99)
    resumed = extract(data, output=out, engine="ray", ray_options=RayOptions(actors=1), **TINY)
    assert (resumed.reused, resumed.removed) == (len(kept) - 1, 1)
    assert resumed.new == 80 - (len(kept) - 1)
    extract(data, output=tmp_path / "local.h5", **TINY)
    _assert_same_cache(out, tmp_path / "local.h5")
    assert not list(tmp_path.glob("ray.h5.tmp-*"))


def test_a_keras_hub_preset_folder_on_ray_gives_the_local_cache(tmp_path, class_folder):
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub not installed (featcache[hub])")
    preset = tmp_path / "preset"
    keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    ).save_to_preset(str(preset))
    converter = keras_hub.layers.ImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1)
    converter.save_to_preset(str(preset))
    hub = {"backbone": str(preset), "weights": "preset", "pooling": "cls+mean", "progress": False}
    extract(class_folder, output=tmp_path / "local.h5", **hub)
    options = RayOptions(actors=1)
    extract(class_folder, output=tmp_path / "ray.h5", engine="ray", ray_options=options, **hub)
    _assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
    assert read_cache(tmp_path / "ray.h5").settings.pooling == "cls+mean"


def test_an_actor_that_cannot_build_the_model_fails_in_one_line(tmp_path, class_folder):
    out = tmp_path / "ray.h5"
    with pytest.raises(EngineError, match=r"^on Ray node .*no_such_layer"):
        extract(class_folder, output=out, engine="ray", layer="no_such_layer", **TINY)
    assert not out.exists()


def test_a_pool_larger_than_the_local_instance_is_refused(tmp_path, class_folder):
    options = RayOptions(actors=1, cpus_per_actor=10_000)
    with pytest.raises(InvalidOptionError, match="do not fit"):
        extract(class_folder, output=tmp_path / "r.h5", engine="ray", ray_options=options, **TINY)


def test_a_pool_the_cluster_cannot_start_fails_after_the_wait(tmp_path, class_folder, monkeypatch):
    # Ray started by the caller counts as a cluster: featcache joins it, waits for the pool
    # (here 3 s; no GPU exists), and leaves the caller's Ray and Ray Data settings alone.
    monkeypatch.setenv("RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S", "3")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        context = ray.data.DataContext.get_current()
        before = (context.execution_options.preserve_order, context.wait_for_min_actors_s)
        options = RayOptions(actors=1, gpus_per_actor=1)
        with pytest.raises(
            EngineError, match=r"^the Ray actor pool \(1 actor x 1 CPUs x 1 GPUs\) "
        ):
            extract(
                class_folder, output=tmp_path / "r.h5", engine="ray", ray_options=options, **TINY
            )
        assert ray.is_initialized()
        assert (context.execution_options.preserve_order, context.wait_for_min_actors_s) == before
    finally:
        ray.shutdown()


def test_an_actor_that_cannot_see_the_data_says_so(tmp_path, monkeypatch):
    # The actor class itself, as a node whose share is not mounted would run it: the mount
    # point is an empty folder, or not there at all.
    monkeypatch.setattr(ray_engine, "_configure_tensorflow", lambda threads, gpus: None)
    config = BackboneConfig("vgg16", "none", 32)
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "absent"):
        actor = ray_engine.EmbedBatches(
            config, resolve_backbone(config), 10**8, str(root), "classes", None, 1, probe="a/1.png"
        )
        result = actor({"row": np.array([0, 1]), "path": np.array(["a/1.png", "b"])})
        assert result["fatal"].tolist() == [actor.fatal] * 2
        assert f"a/1.png in the data folder {root} is not there" in actor.fatal


def test_ray_task_errors_are_reported_by_their_cause():
    try:
        raise ValueError("decoder ran out of memory\nmore detail")
    except ValueError as exc:
        wrapped = ray.exceptions.RayTaskError("MapWorker.__call__", "Traceback:\n  ...", exc)
    assert ray_engine._first_line(wrapped) == "decoder ran out of memory"
    assert ray_engine._from_ray(wrapped)
    assert not ray_engine._from_ray(ValueError("not Ray"))


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, class_folder):
    code = "import sys; sys.modules['ray'] = None; from featcache.cli import main; main()"
    out = tmp_path / "ray.h5"
    args = ["extract", str(class_folder), "-o", str(out), "--engine", "ray", *CLI_TINY]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "pip install 'featcache[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--actors", "2"], "need --engine ray"),
        (["--engine", "ray", "--actors", "0"], "--actors 0"),
        (["--engine", "ray", "--cpus-per-actor", "0"], "--cpus-per-actor 0"),
        (["--engine", "ray", "--remote", "127.0.0.1:1"], "cannot be combined"),
    ],
)
def test_ray_options_are_checked_before_anything_starts(tmp_path, class_folder, args, message):
    out = tmp_path / "ray.h5"
    result = CliRunner().invoke(main, ["extract", str(class_folder), "-o", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()
