"""Temporary files are made fresh (O_EXCL, random names) beside their output, and only what
this process made is removed (issue 25 item 3): a name an attacker or another tool planted
is never followed, overwritten or deleted."""

from __future__ import annotations

import itertools
import os

import h5py
import pytest

from featcache import extract
from featcache.store import CacheReader
from featcache.store.export import export_features
from helpers import TINY, make_class_folder, write_image


@pytest.fixture
def cache(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    out = tmp_path / "c.h5"
    extract(data, output=out, **TINY)
    return out


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_export_never_follows_or_deletes_what_is_planted_at_a_temporary_name(cache, tmp_path, fmt):
    pytest.importorskip("pyarrow")
    out = tmp_path / f"x.{fmt}"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    # the names the export used to write to: a symlink to a victim, and a folder
    (tmp_path / f".{out.name}.tmp-{os.getpid()}").symlink_to(victim)
    planted = tmp_path / f".{out.name}.tmp-{os.getpid() + 1}"
    planted.mkdir()
    (planted / "theirs.txt").write_text("theirs")
    summary = export_features(cache, out, format=fmt, progress=False)
    assert summary.rows == 6 and out.exists()
    assert victim.read_text() == "keep"
    assert (planted / "theirs.txt").read_text() == "theirs"
    leftovers = {p.name for p in tmp_path.iterdir() if ".tmp-" in p.name}
    assert leftovers == {f".{out.name}.tmp-{os.getpid()}", planted.name}  # only the planted


def test_extract_removes_only_a_killed_writers_checkpoints(cache, tmp_path):
    data = tmp_path / "data"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    link = tmp_path / "c.h5.tmp-link"
    link.symlink_to(victim)
    folder = tmp_path / "c.h5.tmp-folder"
    folder.mkdir()
    other = tmp_path / "c.h5.tmp-notes"
    other.write_text("not a checkpoint")
    leftover = tmp_path / "c.h5.tmp-12345"  # what a kill -9 mid-checkpoint leaves
    with h5py.File(leftover, "w") as handle:
        handle["x"] = [1]
    empty = tmp_path / "c.h5.tmp-67890"
    empty.touch()
    write_image(data / "class_0" / "new.png", 4242)
    summary = extract(data, output=cache, **TINY)  # a rerun that commits a checkpoint
    assert summary.rows == len(CacheReader(cache))
    assert not leftover.exists() and not empty.exists()
    assert link.is_symlink() and victim.read_text() == "keep"
    assert folder.is_dir() and other.read_text() == "not a checkpoint"
    assert not [p for p in tmp_path.glob("c.h5.tmp-*") if p not in (link, folder, other)]


def test_plot_parts_are_fresh_files_and_never_followed(cache, tmp_path):
    from featcache.audit.plot import plot_cache

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    folder = tmp_path / "map"
    folder.mkdir()
    for name in (".part-map.png", ".part-points.csv"):  # the parts' old, fixed names
        (folder / name).symlink_to(victim)
    leftover = folder / ".part-0123abcd.map.html"  # what a killed plot leaves
    leftover.write_text("partial")
    plot_cache(cache, folder, method="pca", progress=False)
    assert victim.read_text() == "keep"
    assert (folder / "map.png").is_file() and (folder / "points.csv").is_file()
    assert not leftover.exists()
    assert (folder / ".part-map.png").is_symlink()  # not plot's: left alone


def test_temporaries_get_a_new_files_permissions(cache, tmp_path):
    """A cache written through a temporary reads as any new file does (umask), not 0600."""
    umask = os.umask(0)
    os.umask(umask)
    assert cache.stat().st_mode & 0o777 == 0o666 & ~umask


def test_every_commit_replaces_the_cache_file_and_a_row_watch_sees_it(tmp_path):
    """A commit writes a new file and renames it over the cache, never writing in place:
    the kill tests' :class:`helpers.RowWatch` re-reads the file only when its inode (or
    size, or times) changed, and so sees every commit."""
    import numpy as np

    from featcache.core.settings import CacheSettings
    from featcache.store import CacheWriter
    from helpers import RowWatch

    settings = CacheSettings(
        "vgg16", "", "none", "", (32, 32), "stretch", "avg", "", "none", 0,
        dtype="float32", split_ratios=(0.6, 0.2, 0.2), split_source="hash",
        dataset_root=str(tmp_path),
    )  # fmt: skip
    out = tmp_path / "c.h5"
    watch = RowWatch(out)
    assert watch() == -1  # no file yet
    names = {f"a/{i}.png": 0 for i in range(3)}
    writer = CacheWriter(out, settings, ["a"], names)
    inodes = []
    for i in range(3):
        writer.add([f"a/{i}.png"], [f"{i}" * 64], ["a"], [0], np.full((1, 4), i, np.float32))
        assert writer.commit(final=i == 2)
        inodes.append(os.stat(out).st_ino)
        assert watch() == i + 1 == len(CacheReader(out))
        assert watch() == i + 1  # unchanged: the same answer
    assert all(a != b for a, b in itertools.pairwise(inodes))  # each time another file
