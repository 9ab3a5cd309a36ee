"""A cache is a file Hugging Face ``datasets`` loads: ``load_dataset("hdf5", data_files=...)``
gives one row per cache row. Its ``hdf5`` builder reads every dataset of the file (groups as
nested columns) and needs them all to have one entry per row, so the bad-file records live in
a root attribute; caches written before (``bad/`` group) are still read, and lose the group
when next written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from featcache import extract
from featcache.core.splits import SPLIT_NAMES
from featcache.errors import CacheError
from featcache.store import CacheReader
from featcache.store.format import BAD_FILES_ATTR
from helpers import TINY, make_class_folder

datasets = pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra)")


def _cache_with_a_bad_file(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    (data / "class_1" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "c.h5"
    summary = extract(data, output=out, **TINY)
    assert summary.rows == 6 and summary.bad == 1
    return data, out


def _load(path, tmp_path):
    return datasets.load_dataset(
        "hdf5", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )


def _assert_rows_equal(loaded, cache: CacheReader) -> None:
    assert loaded.num_rows == len(cache)
    np.testing.assert_array_equal(
        np.asarray(loaded["features"], np.float32), cache.features().astype(np.float32)
    )
    assert loaded["labels"] == cache.labels.tolist()
    assert loaded["paths"] == cache.paths
    assert [v.decode() for v in loaded["sha256"]] == cache.sha256
    assert loaded["split"] == cache.split.tolist()


def test_an_extracted_cache_loads_with_hf_datasets(tmp_path):
    _, out = _cache_with_a_bad_file(tmp_path)
    cache = CacheReader(out)
    loaded = _load(out, tmp_path)
    _assert_rows_equal(loaded, cache)
    assert loaded.features["features"].length == cache.feature_dim
    assert {"file_size", "file_mtime_ns"} <= set(loaded.column_names)
    assert not any(c.startswith("bad") for c in loaded.column_names)
    # the bad file is recorded (not a row) and the readers see it
    assert cache.bad == [("class_1/broken.png", cache.bad[0][1])] and cache.bad[0][1]
    assert cache.info()["bad"] == [{"path": "class_1/broken.png", "reason": cache.bad[0][1]}]
    assert BAD_FILES_ATTR not in cache.attrs and BAD_FILES_ATTR not in cache.info()["settings"]
    assert {SPLIT_NAMES[s] for s in loaded["split"]} <= set(SPLIT_NAMES)


def _old_layout(out):
    """Rewrite a cache's bad-file records as featcache wrote them before: a bad/ group."""
    want = CacheReader(out).bad
    with h5py.File(out, "r+") as f:
        del f.attrs[BAD_FILES_ATTR]
        group = f.create_group("bad")
        string = h5py.string_dtype("utf-8")
        group.create_dataset("paths", data=[p for p, _ in want], dtype=string)
        group.create_dataset("reasons", data=[r for _, r in want], dtype=string)
    return want


def test_a_cache_with_the_old_bad_group_is_read_and_upgraded_when_written(tmp_path):
    data, out = _cache_with_a_bad_file(tmp_path)
    want = _old_layout(out)
    assert CacheReader(out).bad == want
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        _load(out, tmp_path / "old")  # why the records moved: the builder cannot load it
    again = extract(data, output=out, **TINY)  # nothing changed: the file is still upgraded
    assert (again.new, again.removed, again.reused, again.bad) == (0, 0, 6, 1)
    with h5py.File(out, "r") as f:
        assert "bad" not in f
        assert json.loads(f.attrs[BAD_FILES_ATTR]) == [list(pair) for pair in want]
    cache = CacheReader(out)
    assert cache.bad == want
    _assert_rows_equal(_load(out, tmp_path / "new"), cache)


@contextlib.contextmanager
def _read_only(folder):
    """``folder`` where no file can be made: mode 555, or for root (whom modes do not stop)
    the immutable attribute; skips where neither holds."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif (
        shutil.which("chattr")
        and not subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode
    ):
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("cannot make a read-only folder here (root without chattr +i)")
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_no_change_rerun_leaves_a_read_only_old_layout_cache_alone(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    (data / "class_1" / "broken.png").write_bytes(b"not an image")
    folder = tmp_path / "caches"
    out = folder / "c.h5"
    extract(data, output=out, **TINY)
    want = _old_layout(out)
    before = out.read_bytes()
    with _read_only(folder):
        again = extract(data, output=out, **TINY)  # the upgrade cannot be written: skipped
        assert (again.new, again.removed, again.reused, again.bad) == (0, 0, 6, 1)
        assert out.read_bytes() == before and CacheReader(out).bad == want
    extract(data, output=out, **TINY)  # writable again: the next rerun upgrades it
    with h5py.File(out, "r") as f:
        assert "bad" not in f and BAD_FILES_ATTR in f.attrs
    assert CacheReader(out).bad == want


def test_a_malformed_bad_files_attribute_is_a_damaged_cache(tmp_path):
    _, out = _cache_with_a_bad_file(tmp_path)
    with h5py.File(out, "r+") as f:
        f.attrs[BAD_FILES_ATTR] = json.dumps({"class_1/broken.png": "x"})
    with pytest.raises(CacheError, match=r"damaged.*bad_files attribute"):
        CacheReader(out)


@pytest.mark.parametrize("options", [{"views": 3}, {"dtype": "float16"}])
def test_caches_with_views_or_float16_load(tmp_path, options):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=2)
    out = tmp_path / "c.h5"
    extract(data, output=out, **TINY, **options)
    cache = CacheReader(out)
    loaded = _load(out, tmp_path)
    _assert_rows_equal(loaded, cache)
    stored = "float16" if options.get("dtype") == "float16" else "float32"
    assert loaded.features["features"].feature.dtype == stored
    if "views" in options:  # (N, 2, D): views 1 and 2 of each row
        np.testing.assert_array_equal(
            np.asarray(loaded["views"], np.float32), cache.view_features()[:, 1:]
        )
