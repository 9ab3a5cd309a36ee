"""A run killed with SIGKILL at any point leaves a valid cache that the next run completes."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from featcache import extract, read_cache
from helpers import COMMIT_EVERY_BATCH, TINY, RowWatch, make_class_folder

pytestmark = pytest.mark.slow


_CLI = (
    COMMIT_EVERY_BATCH
    + """
import sys
from featcache.cli import main
sys.argv = ["featcache", *sys.argv[1:]]
main()
"""
)
"""``featcache`` as a user runs it, checkpointing after every batch even on a busy machine."""


def _start(data, out):
    args = [
        sys.executable,
        "-c",
        _CLI,
        "extract",
        str(data),
        "-o",
        str(out),
        "--backbone",
        "vgg16",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "1",
        "--checkpoint-seconds",
        "0",
        "-q",
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process, out, rows, extra_delay):
    deadline = time.monotonic() + 280  # a busy machine starts TensorFlow slowly
    rows_now = RowWatch(out)  # a stat a poll, not an HDF5 read: the run keeps the CPU
    while rows_now() < rows and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(extra_delay)
    running = process.poll() is None
    if running:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert running, f"the run ended before {rows} rows were on disk"
    return process.returncode


def _assert_rows_valid(out, reference):
    """Every row present equals the uninterrupted run's row for the same path."""
    data = read_cache(out)
    ref = {p: i for i, p in enumerate(reference.paths)}
    idx = [ref[p] for p in data.paths]
    np.testing.assert_allclose(data.features, reference.features[idx], atol=1e-5)
    np.testing.assert_array_equal(data.labels, reference.labels[idx])
    np.testing.assert_array_equal(data.split, reference.split[idx])
    return len(data.paths)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 images and the cache of an uninterrupted run over them."""
    root = tmp_path_factory.mktemp("resume")
    data = make_class_folder(root / "d", classes=4, per_class=10)
    extract(data, output=root / "ref.h5", **TINY)
    return data, read_cache(root / "ref.h5")


@pytest.mark.parametrize(
    ("rows", "delay"),
    [(0, 0.0), (1, 0.0), (8, 0.013), (25, 0.004)],
    ids=["before-first-commit", "after-first-commit", "mid-batch", "late"],
)
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, dataset, rows, delay):
    data, reference = dataset
    out = tmp_path / "killed.h5"
    process = _start(data, out)
    code = _kill_when(process, out, rows, delay)
    assert code == -signal.SIGKILL, process.stderr.read().decode() if process.stderr else ""
    if out.exists():  # a killed run's file always opens and holds only valid rows
        assert _assert_rows_valid(out, reference) <= 40
    summary = extract(data, output=out, **TINY)
    assert summary.reused + summary.new == 40
    assert _assert_rows_valid(out, reference) == 40
    assert read_cache(out).paths == reference.paths
    assert not list(tmp_path.glob("killed.h5.tmp-*"))


def test_two_kills_in_a_row_then_completion(tmp_path, dataset):
    data, reference = dataset
    out = tmp_path / "killed.h5"
    seen = []
    for rows in (5, 15):
        process = _start(data, out)
        assert _kill_when(process, out, rows, 0.0) == -signal.SIGKILL
        seen.append(_assert_rows_valid(out, reference))
    assert seen[1] >= seen[0] >= 5
    summary = extract(data, output=out, **TINY)
    assert summary.reused == seen[1] and summary.new == 40 - seen[1]
    assert _assert_rows_valid(out, reference) == 40
