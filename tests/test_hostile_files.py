"""Hostile input (issue 13): odd file names, special files, huge arrays and labels never
crash, hang, exhaust memory or lose a row; each becomes a bad file or a one-line error."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from featcache import cache_info, extract, read_cache
from featcache.core.options import DEFAULT_MAX_PIXELS, MAX_CLASSES
from featcache.errors import DatasetError
from featcache.extractor import sources
from featcache.extractor.reader import read_one
from featcache.extractor.sources import scan_dataset
from helpers import TINY, make_class_folder, write_image

HANG_SECONDS = 120
"""A generous limit: a hang fails the test instead of hanging CI."""

needs_bytes_names = pytest.mark.skipif(
    os.name != "posix" or os.uname().sysname == "Darwin",
    reason="needs a file system that takes any bytes as a name (Linux)",
)


def _bytes_path(folder: Path, *names: bytes) -> bytes:
    return os.path.join(os.fsencode(folder), *names)


def _write_png_at(path: bytes, seed: int) -> None:
    """Write an image to a path given as bytes (its name is not valid UTF-8)."""
    scratch = write_image(Path(os.fsdecode(path)).parent / f".scratch{seed}.png", seed)
    os.rename(os.fsencode(scratch), path)


# -- item 1: file and folder names that are not valid UTF-8 ---------------------------------


@needs_bytes_names
def test_non_utf8_names_are_bad_files_and_never_abort_the_run(tmp_path):
    data = make_class_folder(tmp_path / "data")
    _write_png_at(_bytes_path(data, b"class_0", b"\xff.png"), 1)
    os.mkdir(_bytes_path(data, b"cl\xe9"))  # a Latin-1 class folder
    _write_png_at(_bytes_path(data, b"cl\xe9", b"a.png"), 2)
    _write_png_at(_bytes_path(data, b"cl\xe9", b"b.png"), 3)
    out = tmp_path / "c.h5"
    expected_bad = {
        "class_0/\\xff.png": "file name is not valid UTF-8; rename it",
        "cl\\xe9/a.png": "folder name 'cl\\xe9' is not valid UTF-8; rename it",
        "cl\\xe9/b.png": "folder name 'cl\\xe9' is not valid UTF-8; rename it",
    }

    first = extract(data, output=out, **TINY)
    assert (first.new, first.bad, first.rows) == (12, 3, 12)
    assert dict(first.bad_files) == expected_bad
    assert first.classes == ["class_0", "class_1", "class_2"]

    second = extract(data, output=out, **TINY)  # the same again: no abort, no duplicate
    assert (second.new, second.reused, second.bad, second.rows) == (0, 12, 3, 12)
    assert dict(second.bad_files) == expected_bad
    cache = read_cache(out)
    assert len(cache.paths) == len(set(cache.paths)) == 12
    assert cache.class_names == ["class_0", "class_1", "class_2"]
    info = cache_info(out)
    assert {b["path"]: b["reason"] for b in info["bad"]} == expected_bad


@needs_bytes_names
def test_non_utf8_names_scan_to_printable_paths(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=1)
    _write_png_at(_bytes_path(data, b"class_0", b"\xff.png"), 1)
    dataset = scan_dataset(data)
    for item in dataset.items:
        item.path.encode("utf-8")  # every path is valid UTF-8 (and printable)
        assert item.class_name is None or item.class_name.isprintable()
    odd = next(i for i in dataset.items if "\\xff" in i.path)
    with pytest.raises(OSError, match="file name is not valid UTF-8; rename it"):
        dataset.read(odd)
    assert read_one(dataset, odd).reason == "file name is not valid UTF-8; rename it"


@needs_bytes_names
def test_an_escaped_name_never_shadows_a_real_file_of_that_name(tmp_path):
    data = tmp_path / "data"
    write_image(data / "\\xff.png", 1)  # a real, valid name: backslash, x, f, f
    _write_png_at(_bytes_path(data, b"\xff.png"), 2)
    dataset = scan_dataset(data)
    assert [i.path for i in dataset.items] == ["\\xff.png"]
    assert dataset.ignored == 1
    content, _ = dataset.read(dataset.items[0])
    assert content == (data / "\\xff.png").read_bytes()


@needs_bytes_names
def test_a_data_folder_named_in_non_utf8_is_a_one_line_error(tmp_path):
    folder = _bytes_path(tmp_path, b"d\xff")
    os.mkdir(folder)
    _write_png_at(os.path.join(folder, b"a.png"), 1)
    with pytest.raises(DatasetError, match="not valid UTF-8; rename it") as info:
        extract(os.fsdecode(folder), output=tmp_path / "c.h5", **TINY)
    assert "\n" not in str(info.value)
    str(info.value).encode("utf-8")


# -- item 2: FIFOs, sockets and devices ------------------------------------------------------


def _unblock(fifo: Path) -> None:
    """Give a reader stuck opening ``fifo`` its end of file (cleanup after a hang)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_named_like_an_image_is_a_bad_file_not_a_hang(class_folder, tmp_path):
    fifo = class_folder / "class_0" / "x.png"
    os.mkfifo(fifo)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["summary"] = extract(class_folder, output=tmp_path / "c.h5", **TINY)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        _unblock(fifo)
        thread.join(30)
        pytest.fail(f"extract hung reading a FIFO for {HANG_SECONDS} s")
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert (summary.new, summary.bad) == (12, 1)
    assert summary.bad_files == [("class_0/x.png", "not a regular file (FIFO)")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    write_image(tmp_path / "x.png", 1)
    dataset = scan_dataset(tmp_path)
    (tmp_path / "x.png").unlink()
    os.mkfifo(tmp_path / "x.png")
    regular = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
    real_stat = os.stat
    monkeypatch.setattr(  # the check before opening still sees the old regular file
        sources.os, "stat", lambda p, *a, **k: regular if str(p).endswith("x.png") else real_stat(p)
    )
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(p=read_one(dataset, dataset.items[0])), daemon=True
    )
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        _unblock(tmp_path / "x.png")
        thread.join(30)
        pytest.fail("reading a FIFO swapped in after the check blocked")
    assert result["p"].reason == "not a regular file (FIFO)"


@pytest.mark.parametrize("kind", ["socket", "character device"])
def test_sockets_and_devices_are_bad_files(tmp_path, kind):
    write_image(tmp_path / "ok.png", 1)
    target = tmp_path / "x.png"
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        short = Path(os.path.relpath(target))  # AF_UNIX paths are short
        try:
            server.bind(str(short))
        except OSError as exc:
            pytest.skip(f"cannot bind a unix socket here: {exc}")
    else:
        if not os.path.exists("/dev/null"):
            pytest.skip("no /dev/null")
        os.symlink("/dev/null", target)
        server = None
    try:
        dataset = scan_dataset(tmp_path)
        item = next(i for i in dataset.items if i.path == "x.png")
        assert read_one(dataset, item).reason == f"not a regular file ({kind})"
    finally:
        if server is not None:
            server.close()


# -- item 3: huge arrays, out of memory, huge labels -----------------------------------------


def _sparse_npy(path: Path, shape: tuple[int, ...]) -> Path:
    """An ``.npy`` whose header claims ``shape`` (uint8), as a sparse file: nothing is
    written but the header."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del array
    return path


def test_npy_images_over_the_pixel_limit_are_refused_at_scan(tmp_path):
    path = _sparse_npy(tmp_path / "x.npy", (2, 20000, 20000, 3))
    with pytest.raises(DatasetError, match=f"max_pixels limit of {DEFAULT_MAX_PIXELS}") as info:
        scan_dataset(path)
    assert "\n" not in str(info.value) and "20000x20000" in str(info.value)


def test_npy_pixel_limit_follows_max_pixels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 20, 20, 3), np.uint8))
    with pytest.raises(DatasetError, match="max_pixels limit of 100"):
        extract(tmp_path / "x.npy", output=tmp_path / "c.h5", max_pixels=100, **TINY)
    assert not (tmp_path / "c.h5").exists()
    assert scan_dataset(tmp_path / "x.npy", max_pixels=400).items  # at the limit is fine


def test_memory_error_while_reading_is_a_bad_file(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8, 3), np.uint8))
    dataset = scan_dataset(tmp_path / "x.npy")
    real_read = sources.Dataset.read

    def read(self, item):
        if item.index == 1:
            raise MemoryError
        return real_read(self, item)

    monkeypatch.setattr(sources.Dataset, "read", read)
    reasons = [read_one(dataset, item).reason for item in dataset.items]
    assert reasons == [None, "unreadable: out of memory", None]


@pytest.mark.parametrize("label", [10**10, MAX_CLASSES])
def test_labels_outside_the_class_range_are_refused(tmp_path, label):
    np.save(tmp_path / "images.npy", np.zeros((3, 8, 8), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([0, label, 1], np.int64))
    with pytest.raises(DatasetError, match=f"{label}") as info:
        scan_dataset(tmp_path / "images.npy")
    message = str(info.value)
    assert "\n" not in message and str(MAX_CLASSES) in message and "negative" in message


@pytest.mark.parametrize("negative", [-1, -2, -(10**10)])
def test_negative_labels_still_mean_unlabelled(tmp_path, negative):
    np.save(tmp_path / "images.npy", np.zeros((3, 8, 8), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([0, negative, MAX_CLASSES - 1], np.int64))
    dataset = scan_dataset(tmp_path / "images.npy")
    assert [i.class_name for i in dataset.items] == ["0", None, str(MAX_CLASSES - 1)]
    assert len(dataset.class_names) == MAX_CLASSES


def test_unsigned_labels_too_large_are_refused(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((2, 8, 8), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(DatasetError, match=str(MAX_CLASSES)):
        scan_dataset(tmp_path / "images.npy")


def _short_png(width: int = 32, height: int = 32, rows: int = 16) -> bytes:
    """A PNG whose chunks are whole but whose image data holds only ``rows`` rows."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    raw = b"".join(
        b"\x00" + bytes((r * 7 + c) % 256 for c in range(width * 3)) for r in range(rows)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_truncated_images_of_every_format_are_bad_files_not_zero_filled(tmp_path):
    """Issue 25 item 7: image data that ends early (a file cut anywhere, or a PNG whose
    compressed rows stop short) is a bad file with its reason, never rows of zeros."""
    import io

    from PIL import Image

    data = tmp_path / "data"
    make_class_folder(data, classes=2, per_class=2)
    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8))
    cut = data / "class_0"
    expected_bad = []
    for fmt, ext in [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"),
                     ("WEBP", "webp"), ("TIFF", "tif")]:  # fmt: skip
        buffer = io.BytesIO()
        picture.save(buffer, fmt)
        whole = buffer.getvalue()
        for fraction in (0.3, 0.6, 0.95):
            name = f"cut_{ext}_{int(fraction * 100)}.{ext}"
            (cut / name).write_bytes(whole[: int(len(whole) * fraction)])
            expected_bad.append(f"class_0/{name}")
    (cut / "short_rows.png").write_bytes(_short_png())
    expected_bad.append("class_0/short_rows.png")
    summary = extract(data, output=tmp_path / "c.h5", **TINY)
    info = cache_info(tmp_path / "c.h5")
    bad = {b["path"]: b["reason"] for b in info["bad"]}
    assert sorted(bad) == sorted(expected_bad), set(expected_bad) ^ set(bad)
    assert summary.rows == 4 and summary.bad == len(expected_bad)
    assert "truncated" in bad["class_0/short_rows.png"]
