"""Faults while writing or reading a cache: a full disk, a checkpoint that did not come out
whole, a damaged cache file, and (slow) ``kill -9`` at seeded points of a run."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featcache import CacheReader, extract, read_cache
from featcache.cli import main
from featcache.errors import CacheError
from featcache.store import writer as cache_writer
from featcache.store.format import FILE_STAT_DATASETS, ROW_DATASETS
from helpers import (
    COMMIT_EVERY_BATCH,
    TINY,
    RowWatch,
    cache_rows,
    make_class_folder,
    write_image,
)

CLI_TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "-q"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract_cli(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *CLI_TINY, *extra])


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


# -- a full disk ----------------------------------------------------------------------


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("how", ["copy", "rewrite", "flush"])
def test_disk_full_keeps_the_previous_cache_and_exits_2(class_folder, tmp_path, monkeypatch, how):
    out = tmp_path / "c.h5"
    assert _extract_cli(class_folder, out).exit_code == 0
    before, rows = _digest(out), cache_rows(out)
    if how == "copy":  # a new last image: the checkpoint copies the file and appends
        write_image(class_folder / "class_2" / "new.png", 991)

        def copy(src, dst, *args, **kwargs):
            with open(src, "rb") as source, open(dst, "wb") as target:
                target.write(source.read(4096))  # some bytes made it, then the disk filled
            raise _disk_full()

        monkeypatch.setattr(cache_writer.shutil, "copyfile", copy)
    elif how == "rewrite":  # a new class: the checkpoint writes a fresh file
        write_image(class_folder / "class_9" / "new.png", 992)
        real = h5py.Dataset.__setitem__

        def write(self, key, value):
            if ".tmp-" in self.file.filename and self.name == "/features":
                raise _disk_full()
            return real(self, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", write)
    else:  # HDF5 reports a failed flush of its metadata as a RuntimeError naming errno 28
        write_image(class_folder / "class_2" / "new.png", 993)
        real_flush = h5py.File.flush

        def flush(self):
            if ".tmp-" in self.filename:
                raise RuntimeError(
                    "Unable to synchronously flush file (file write failed: time = now\n, "
                    "filename = 'x', file descriptor = 4, errno = 28, error message = "
                    "'No space left on device', buf = 0x0, total write size = 848)"
                )
            return real_flush(self)

        monkeypatch.setattr(h5py.File, "flush", flush)
    result = _extract_cli(class_folder, out)
    assert result.exit_code == 2, result.output
    assert _one_error_line(result).startswith("error: disk full: ")
    assert _digest(out) == before and cache_rows(out) == rows
    assert not list(tmp_path.glob("c.h5.tmp-*"))
    monkeypatch.undo()
    assert _extract_cli(class_folder, out).exit_code == 0
    assert cache_rows(out) == rows + 1


def test_a_really_full_disk(class_folder, tmp_path):
    """A tmpfs too small for the checkpoint (root only; skipped where mounting is denied)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    first = tmp_path / "first.h5"
    extract(class_folder, output=first, **TINY)
    disk = tmp_path / "disk"
    disk.mkdir()
    size = first.stat().st_size * 3 // 2  # the cache fits, a rewritten copy beside it not
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "c.h5"
        shutil.copyfile(first, out)
        before = _digest(out)
        write_image(class_folder / "class_9" / "new.png", 996)  # a new class: a rewrite
        args = ["extract", str(class_folder), "-o", str(out), *CLI_TINY]
        command = [sys.executable, "-m", "featcache.cli", *args]
        result = subprocess.run(command, capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(errors) == 1 and errors[0].startswith("error: disk full: "), result.stderr
        assert "Traceback" not in result.stderr
        assert _digest(out) == before
        assert sorted(p.name for p in disk.iterdir()) == ["c.h5"]  # no temporary, no lock
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_disk_full_through_the_api_is_a_cache_error(class_folder, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before = _digest(out)
    write_image(class_folder / "class_2" / "new.png", 993)

    def copy(src, dst, *args, **kwargs):
        Path(dst).write_bytes(b"")
        raise _disk_full()

    monkeypatch.setattr(cache_writer.shutil, "copyfile", copy)
    with pytest.raises(CacheError, match=r"^disk full: "):
        extract(class_folder, output=out, **TINY)
    assert _digest(out) == before
    assert not list(tmp_path.glob("c.h5.tmp-*"))


# -- a checkpoint that did not come out whole ------------------------------------------


def test_a_torn_checkpoint_copy_is_never_installed(class_folder, tmp_path, monkeypatch):
    """The copy is reopened and checked before it replaces the cache."""
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before, rows = _digest(out), cache_rows(out)
    write_image(class_folder / "class_2" / "new.png", 994)
    real = cache_writer.CacheWriter._write_appended

    def torn(self, tmp):
        rows = real(self, tmp)
        with h5py.File(tmp, "r+") as f:  # one dataset lost its last rows
            f["labels"].resize(f["labels"].shape[0] - 1, axis=0)
        return rows

    monkeypatch.setattr(cache_writer.CacheWriter, "_write_appended", torn)
    with pytest.raises(CacheError, match="previous cache file is unchanged"):
        extract(class_folder, output=out, **TINY)
    assert _digest(out) == before and cache_rows(out) == rows
    assert not list(tmp_path.glob("c.h5.tmp-*"))


def test_a_checkpoint_with_rows_missing_everywhere_is_refused(class_folder, tmp_path, monkeypatch):
    """Datasets that agree with each other but not with the rows meant to be written."""
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before = _digest(out)
    write_image(class_folder / "class_2" / "new.png", 995)
    real = cache_writer.CacheWriter._write_appended

    def short(self, tmp):
        rows = real(self, tmp)
        with h5py.File(tmp, "r+") as f:
            for name in (*ROW_DATASETS, *FILE_STAT_DATASETS):
                f[name].resize(f[name].shape[0] - 1, axis=0)
            f.attrs["rows"] = f["paths"].shape[0]
        return rows

    monkeypatch.setattr(cache_writer.CacheWriter, "_write_appended", short)
    with pytest.raises(CacheError, match="expected 13 rows"):
        extract(class_folder, output=out, **TINY)
    assert _digest(out) == before


# -- a damaged cache file ----------------------------------------------------------------


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    data = make_class_folder(root / "data")
    extract(data, output=root / "good.h5", **TINY)
    return data, root / "good.h5"


def _replace_features(f: h5py.File, data: np.ndarray) -> None:
    del f["features"]
    f.create_dataset("features", data=data)


DAMAGE = {
    "features-longer": lambda f: _replace_features(
        f, np.zeros((f["features"].shape[0] + 7, f["features"].shape[1]), np.float32)
    ),
    "features-1d": lambda f: _replace_features(f, np.zeros(5, np.float32)),
    "features-width": lambda f: _replace_features(
        f, np.zeros((f["features"].shape[0], 3), np.float32)
    ),
    "labels-missing": lambda f: f.__delitem__("labels"),
    "split-shorter": lambda f: f["split"].resize(f["split"].shape[0] - 2, axis=0),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_malformed_cache_is_a_cache_error_naming_overwrite(good_cache, tmp_path, damage):
    data, good = good_cache
    path = tmp_path / "bad.h5"
    shutil.copyfile(good, path)
    with h5py.File(path, "r+") as f:
        DAMAGE[damage](f)
    with pytest.raises(CacheError, match="--overwrite"):
        CacheReader(path)
    for args in (["inspect", str(path)], ["extract", str(data), "-o", str(path), *CLI_TINY]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "--overwrite" in _one_error_line(result)
    assert _extract_cli(data, path, "--overwrite").exit_code == 0
    assert cache_rows(path) == 12


def test_a_damaged_caches_advice_is_what_each_user_can_do(good_cache, tmp_path):
    """Issue 25 item 9: commands that read a cache name ``featcache extract --overwrite``,
    extract its own ``--overwrite``, the gRPC calls a request field."""
    import grpc

    from featcache import ServeOptions, start_server
    from featcache.protos import extractor_pb2 as pb
    from featcache.protos import extractor_pb2_grpc as pb_grpc

    data, good = good_cache
    caches = tmp_path / "caches"
    caches.mkdir()
    path = caches / "bad.h5"
    shutil.copyfile(good, path)
    with h5py.File(path, "r+") as f:
        DAMAGE["labels-missing"](f)
    readers = [
        ["inspect", str(path)],
        ["audit", str(path), "-o", str(tmp_path / "report"), "-q"],
        ["search", str(path), "--row", "0", "-q"],
        ["plot", str(path), "-o", str(tmp_path / "map"), "-q"],
        ["train-head", str(path), "--head", "logreg", "-o", str(tmp_path / "run")],
        ["compare", str(path), "-o", str(tmp_path / "cmp")],
    ]
    for args in readers:
        line = _one_error_line(CliRunner().invoke(main, args))
        assert line.endswith("featcache extract --overwrite rebuilds it"), (args[0], line)
    line = _one_error_line(_extract_cli(data, path))
    assert line.endswith("overwrite replaces it (--overwrite)"), line
    server = start_server(
        ServeOptions(port=0, data_root=str(data.parent), cache_root=str(caches)), warm=False
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(pb.SearchRequest(cache="bad.h5", row=0), timeout=60)
            assert info.value.details().endswith("rebuild it with ExtractDataset (overwrite: true)")
            settings = pb.BackboneSettings(name="vgg16", weights="none", image_size=[32])
            request = pb.ExtractDatasetRequest(data=data.name, output="bad.h5", backbone=settings)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ExtractDataset(request, timeout=120))
            assert info.value.details().endswith("overwrite: true in the request replaces it")
            assert "--overwrite" not in info.value.details()
    finally:
        server.stop(0)


@pytest.mark.parametrize("where", [0.5, 0.25, 0.75, 600, 2000, 4096, 10_000, 30_000])
def test_overwritten_bytes_never_give_a_raw_error(good_cache, tmp_path, where):
    """Bytes overwritten anywhere: a CacheError (exit 2) naming --overwrite, or, where the
    damage is in no byte featcache reads, a normal result; never a raw error (exit 1)."""
    data, good = good_cache
    path = tmp_path / "bad.h5"
    shutil.copyfile(good, path)
    size = path.stat().st_size
    offset = int(size * where) if isinstance(where, float) else where
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(offset).randbytes(256))
    try:
        cache = CacheReader(path)
        cache.features()
        read_cache(path)
    except CacheError as exc:
        assert "--overwrite" in str(exc)
    for args in (
        ["inspect", str(path)],
        ["train-head", str(path), "--head", "logreg", "-o", str(tmp_path / "run")],
        ["extract", str(data), "-o", str(path), *CLI_TINY],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code in (0, 2), (args[0], result.output)
        if result.exit_code == 2:
            assert "--overwrite" in _one_error_line(result)


def test_damaged_feature_bytes_are_detected(good_cache, tmp_path):
    """The fixed-size datasets carry checksums: bytes changed in the middle of the features (which
    HDF5 itself would hand back as numbers) are a CacheError, not wrong features."""
    _, good = good_cache
    path = tmp_path / "bad.h5"
    shutil.copyfile(good, path)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + 16)
        handle.write(b"\x7f" * 64)
    with pytest.raises(CacheError, match="--overwrite"):
        CacheReader(path).features()
    result = CliRunner().invoke(
        main, ["train-head", str(path), "--head", "logreg", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "--overwrite" in _one_error_line(result)


# -- kill -9 at seeded points of a run ---------------------------------------------------

KILLS = 10
IMAGES = 40
BAD = {"class_0/broken.png": b"\x89PNG\r\n\x1a\nnot a png", "class_1/empty.jpg": b"",
       "class_3/notes.jpg": b"plain text, not an image"}  # fmt: skip
PACE = 0.05
"""Seconds the killed run pauses after each embedded batch (its writer thread goes on), so
that every kill point lies well before its end, however busy the machine is."""

_DRIVER = COMMIT_EVERY_BATCH + textwrap.dedent(
    """
    import sys, time
    from featcache import extract
    from featcache.extractor import recorder


    embedded = recorder.Recorder.embedded

    def paced(self, *args):
        embedded(self, *args)
        time.sleep(float(sys.argv[3]))

    recorder.Recorder.embedded = paced
    extract(sys.argv[1], output=sys.argv[2], backbone="vgg16", weights="none",
            image_size=32, batch_size=1, checkpoint_seconds=0, progress=False)
    """
)


def _wait(condition, process, what: str, bound: float = 180.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {bound:.0f} s")
        time.sleep(0.001)


def _kill_points(rng: random.Random) -> list[tuple[str, str, int, float]]:
    """(name, event, rows, extra delay): wait for the event, then the seeded delay."""
    return [
        ("reading", "lock", 0, rng.uniform(0.0, 0.02)),
        ("embedding", "lock", 0, rng.uniform(0.05, 0.4)),
        ("first checkpoint copy", "tmp", 0, 0.0),
        ("first checkpoint rename", "tmp", 0, rng.uniform(0.0005, 0.003)),
        ("between checkpoints", "rows", 3, rng.uniform(0.0, PACE)),
        ("checkpoint copy", "tmp", 8, 0.0),
        ("checkpoint rename", "tmp", 14, rng.uniform(0.0005, 0.003)),
        ("embedding", "rows", 18, rng.uniform(0.0, PACE)),
        ("checkpoint copy", "tmp", 22, rng.uniform(0.0, 0.001)),
        ("late", "rows", 27, rng.uniform(0.0, PACE)),
    ]


def _run_and_kill(data: Path, out: Path, event: str, rows: int, delay: float):
    """Start a run, wait for ``event`` (``lock``: the run holds the cache; ``rows``: that
    many rows committed; ``tmp``: that many, then a checkpoint copy on disk), sleep ``delay``,
    SIGKILL it. Returns the process, the rows committed just before and whether a copy
    was on disk."""
    lock = Path(f"{out}.lock")
    copies = f"{out.name}.tmp-*"
    rows_now = RowWatch(out)  # a stat a poll, not an HDF5 read: the run keeps the CPU
    with open(f"{out}.log", "wb") as log:  # a file, not a pipe that could fill up
        process = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, str(data), str(out), str(PACE)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        if event == "lock":
            _wait(lock.exists, process, "cache lock")
        elif rows:
            _wait(lambda: rows_now() >= rows, process, f"{rows} rows")
        if event == "tmp":  # a copy lives for milliseconds: a few checkpoints to catch one
            polls = itertools.count()

            def copying_or_past() -> bool:
                if any(out.parent.glob(copies)):
                    return True
                return next(polls) % 25 == 24 and rows_now() >= rows + 5

            _wait(copying_or_past, process, "checkpoint copy")
        time.sleep(delay)
        committed = max(rows_now(), 0)
        copying = any(out.parent.glob(copies))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
    return process, committed, copying


@pytest.fixture(scope="module")
def kill_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill9")
    data = make_class_folder(root / "data", classes=4, per_class=IMAGES // 4)
    for name, content in BAD.items():
        (data / name).write_bytes(content)
    reference = root / "reference.h5"
    extract(data, output=reference, batch_size=1, checkpoint_seconds=0, **TINY)
    return data, read_cache(reference)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a bound for a hung run, never reached on a healthy one
def test_kill_9_at_ten_seeded_points_loses_no_rows(tmp_path, kill_dataset, capsys):
    data, reference = kill_dataset
    assert len(reference.paths) == IMAGES and len(reference.bad) == len(BAD)
    ref_row = {p: i for i, p in enumerate(reference.paths)}
    started = time.monotonic()
    kills = lost = 0
    landed: list[str] = []
    for number, (name, event, rows, delay) in enumerate(_kill_points(random.Random(13))):
        out = tmp_path / f"k{number}.h5"
        process, committed, copying = _run_and_kill(data, out, event, rows, delay)
        process.wait()
        log = Path(f"{out}.log").read_text(errors="replace")
        assert process.returncode == -signal.SIGKILL, (name, log[-2000:])
        kills += 1
        landed.append(f"{name}: {committed} rows{', copy on disk' if copying else ''}")
        if out.exists():  # the killed run's file opens and holds only valid rows
            left = read_cache(out)
            lost += max(0, committed - len(left.paths))
            idx = [ref_row[p] for p in left.paths]
            np.testing.assert_allclose(left.features, reference.features[idx], atol=1e-6)
            np.testing.assert_array_equal(left.labels, reference.labels[idx])
        else:
            lost += committed
        summary = extract(data, output=out, batch_size=1, checkpoint_seconds=0, **TINY)
        assert summary.rows == IMAGES and summary.bad == len(BAD), name
        resumed = read_cache(out)
        assert resumed.paths == reference.paths, name
        np.testing.assert_array_equal(resumed.labels, reference.labels)
        np.testing.assert_array_equal(resumed.split, reference.split)
        np.testing.assert_array_equal(resumed.sha256, reference.sha256)
        np.testing.assert_allclose(resumed.features, reference.features, atol=1e-6, rtol=0)
        assert resumed.bad == reference.bad, name
        assert not list(tmp_path.glob(f"{out.name}.tmp-*"))
    with capsys.disabled():
        print("\nkilled at: " + "; ".join(landed))
        print(f"{kills}/{KILLS} kills, {lost} rows lost ({time.monotonic() - started:.0f} s)")
    assert (kills, lost) == (KILLS, 0)
