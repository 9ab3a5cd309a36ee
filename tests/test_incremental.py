"""Incremental reruns: a cached file whose stat is unchanged is not read again, ``rehash``
reads every file, old caches without stats are upgraded, ``.npy`` rows key on the array."""

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featcache import cache_info, extract, read_cache
from featcache.cli import main
from featcache.extractor.sources import Dataset
from featcache.store import FORMAT_VERSION, CacheWriter
from featcache.store.format import FILE_STAT_DATASETS
from featcache.store.known import FileStat
from helpers import TINY, make_class_folder, write_image

CLI_TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "-q"]


@pytest.fixture
def reads(monkeypatch):
    """The items :meth:`Dataset.read` is asked for (files read and hashed), in this process."""
    seen: list[str] = []
    real = Dataset.read

    def counting(self, item):
        seen.append(item.path)
        return real(self, item)

    monkeypatch.setattr(Dataset, "read", counting)
    return seen


def _stats(out):
    """Path -> FileStat recorded in the cache (None where unknown)."""
    with h5py.File(out, "r") as f:
        paths = [p.decode() for p in f["paths"][:]]
        columns = [f[name][:].tolist() for name in FILE_STAT_DATASETS]
    return {
        path: FileStat(*row) if row[0] >= 0 else None
        for path, row in zip(paths, zip(*columns, strict=True), strict=True)
    }


def _stat(path):
    return FileStat.of(os.stat(path))


def test_unchanged_files_are_not_read_and_rehash_reads_them_all(class_folder, tmp_path, reads):
    out = tmp_path / "c.h5"
    first = extract(class_folder, output=out, **TINY)
    assert first.new == 12 and len(reads) == 12
    stats = _stats(out)
    assert stats == {p: _stat(class_folder / p) for p in stats}  # every row has its stat
    with h5py.File(out, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION == 3
        assert f["file_size"].dtype == np.int64 and f["file_inode"].dtype == np.uint64

    write_image(class_folder / "class_1" / "new.png", 99)
    reads.clear()
    second = extract(class_folder, output=out, **TINY)
    assert (second.new, second.reused, second.rows) == (1, 12, 13)
    assert reads == ["class_1/new.png"]  # only the new file was read
    assert _stats(out)["class_1/new.png"] == _stat(class_folder / "class_1" / "new.png")

    reads.clear()
    forced = extract(class_folder, output=out, rehash=True, **TINY)
    assert (forced.new, forced.reused) == (0, 13) and len(reads) == 13

    reads.clear()
    idle = extract(class_folder, output=out, **TINY)
    assert (idle.new, idle.reused, idle.removed) == (0, 13, 0) and reads == []


def test_a_changed_stat_rehashes_and_new_content_is_embedded(class_folder, tmp_path, reads):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before = read_cache(out)
    touched = class_folder / "class_0" / "img_1.jpg"
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes
    changed = class_folder / "class_2" / "img_0.png"
    write_image(changed, 1234, (31, 37))  # other bytes, other size

    reads.clear()
    rerun = extract(class_folder, output=out, **TINY)
    assert sorted(reads) == ["class_0/img_1.jpg", "class_2/img_0.png"]
    assert (rerun.new, rerun.reused) == (1, 11)
    after = read_cache(out)
    row = after.paths.index("class_0/img_1.jpg")
    np.testing.assert_array_equal(after.features[row], before.features[row])  # row reused
    assert (
        after.sha256[after.paths.index("class_2/img_0.png")]
        != before.sha256[before.paths.index("class_2/img_0.png")]
    )
    stats = _stats(out)  # the reused row now records the stat it was hashed under
    assert stats["class_0/img_1.jpg"] == _stat(touched)
    assert stats["class_2/img_0.png"] == _stat(changed)

    reads.clear()
    assert extract(class_folder, output=out, **TINY).reused == 12 and reads == []


def test_same_size_rewrite_with_the_old_mtime_is_found_by_ctime(class_folder, tmp_path, reads):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    path = class_folder / "class_1" / "img_2.png"
    old_sha = read_cache(out).sha256[read_cache(out).paths.index("class_1/img_2.png")]
    data = bytearray(path.read_bytes())
    st = os.stat(path)
    data[-20] ^= 0xFF  # other bytes, same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored (as cp -p, tar do)
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    reads.clear()
    rerun = extract(class_folder, output=out, **TINY)
    assert reads == ["class_1/img_2.png"]  # the ctime gave the rewrite away
    assert rerun.new + rerun.bad == 1  # re-embedded, or bad if the flip broke the PNG
    after = read_cache(out)
    assert old_sha not in after.sha256


def test_a_rewrite_within_one_tick_is_the_limit_and_rehash_finds_it(class_folder, tmp_path, reads):
    """Same size, mtime, ctime and inode: the stale row stays until ``rehash``."""
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before = read_cache(out)
    name = "class_0/img_0.png"
    path = class_folder / name
    replacement = tmp_path / "other.png"
    write_image(replacement, 4321, (30, 36))
    path.write_bytes(replacement.read_bytes())
    with h5py.File(out, "r+") as f:  # as if the rewrite had landed in the same clock tick
        row = [p.decode() for p in f["paths"][:]].index(name)
        now = _stat(path)
        for dataset, field in FILE_STAT_DATASETS.items():
            f[dataset][row] = getattr(now, field)

    reads.clear()
    stale = extract(class_folder, output=out, **TINY)
    assert (stale.new, reads) == (0, [])
    kept = read_cache(out)
    assert kept.sha256[kept.paths.index(name)] == before.sha256[before.paths.index(name)]

    reads.clear()
    fixed = extract(class_folder, output=out, rehash=True, **TINY)
    assert (fixed.new, fixed.reused, len(reads)) == (1, 11, 12)
    after = read_cache(out)
    assert after.sha256[after.paths.index(name)] != before.sha256[before.paths.index(name)]


def test_a_cache_without_stats_is_hashed_once_and_upgraded(class_folder, tmp_path, reads):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    reference = read_cache(out)
    with h5py.File(out, "r+") as f:  # a format version 1 cache, as earlier featcache wrote
        for name in FILE_STAT_DATASETS:
            del f[name]
        f.attrs["format_version"] = 1
    assert cache_info(out)["rows"] == 12  # readable as it is
    assert set(_stats_or_none(out)) == set()

    reads.clear()
    upgrade = extract(class_folder, output=out, **TINY)
    assert (upgrade.new, upgrade.reused, len(reads)) == (0, 12, 12)
    with h5py.File(out, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
    stats = _stats(out)
    assert stats == {p: _stat(class_folder / p) for p in stats}
    upgraded = read_cache(out)
    assert upgraded.paths == reference.paths and upgraded.sha256 == reference.sha256
    np.testing.assert_array_equal(upgraded.features, reference.features)

    reads.clear()
    assert extract(class_folder, output=out, **TINY).reused == 12 and reads == []


def _stats_or_none(out):
    with h5py.File(out, "r") as f:
        return [name for name in FILE_STAT_DATASETS if name in f]


def test_npy_rows_key_on_the_array_files_stat(tmp_path, reads):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "n.h5"
    extract(tmp_path / "x.npy", output=out, **TINY)
    assert set(_stats(out).values()) == {_stat(tmp_path / "x.npy")}

    reads.clear()
    assert extract(tmp_path / "x.npy", output=out, **TINY).reused == 6 and reads == []

    images[3] = 255 - images[3]
    np.save(tmp_path / "x.npy", images)  # the array file changes: every row is hashed
    reads.clear()
    rerun = extract(tmp_path / "x.npy", output=out, **TINY)
    assert (rerun.new, rerun.reused, len(reads)) == (1, 5, 6)
    assert set(_stats(out).values()) == {_stat(tmp_path / "x.npy")}

    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 1]))  # labels still count
    reads.clear()
    relabelled = extract(tmp_path / "x.npy", output=out, **TINY)
    assert (relabelled.new, relabelled.reused) == (1, 5)
    assert reads == ["x.npy#5"]


def test_rehash_flag_of_the_cli(class_folder, tmp_path, reads):
    out = tmp_path / "c.h5"
    assert "--rehash" in CliRunner().invoke(main, ["extract", "--help"]).output
    args = ["extract", str(class_folder), "-o", str(out), *CLI_TINY]
    assert CliRunner().invoke(main, args).exit_code == 0
    reads.clear()
    assert CliRunner().invoke(main, args).exit_code == 0
    assert reads == []
    result = CliRunner().invoke(main, [*args, "--rehash"])
    assert result.exit_code == 0, result.output
    assert len(reads) == 12


def test_a_stat_is_recorded_only_with_the_hash_of_what_was_read(class_folder, tmp_path):
    """A file that changed between the driver's hash and the embedding (Ray's actors read
    it again) gets no stat, so that the next run hashes it rather than trusting it."""
    from featcache.store import CacheReader

    extract(class_folder, output=tmp_path / "c.h5", **TINY)
    settings = CacheReader(tmp_path / "c.h5").settings
    out = tmp_path / "w.h5"
    writer = CacheWriter(out, settings, ["a"], {"x.png": 0, "y.png": 1})
    known = writer.index()
    stat = FileStat(10, 20, 30, 40)
    known.hashed["x.png"] = ("aa" * 32, stat)
    known.hashed["y.png"] = ("bb" * 32, stat)
    features = np.ones((2, 4), np.float32)
    writer.add(["x.png", "y.png"], ["aa" * 32, "cc" * 32], ["a", "a"], [0, 0], features)
    writer.commit(final=True)
    assert _stats(out) == {"x.png": stat, "y.png": None}
    assert known.hashed == {}


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # with tests/test_ray.py: one local Ray instance at a time
def test_ray_reruns_read_only_new_files(tmp_path, reads):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    # a user's chain: the cache made on this machine, the data grown, the rerun on Ray
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    out = tmp_path / "r.h5"
    extract(data, output=out, **TINY)
    write_image(data / "class_0" / "new.png", 77)
    reads.clear()
    rerun = extract(data, output=out, engine="ray", **TINY)
    assert (rerun.new, rerun.reused) == (1, 6)
    assert reads == ["class_0/new.png"]  # the driver hashed only the new file
    stats = _stats(out)
    assert len(stats) == 7 and stats["class_0/new.png"] is not None
    assert stats == {p: _stat(data / p) for p in stats}  # the actors' row has its stat too


def test_inspect_verify_finds_content_the_incremental_rule_cannot_see(tmp_path):
    """Issue 25 item 8: a file rewritten behind the cache's back (as an mmap write that
    keeps size, mtime and ctime would be) is listed by inspect --verify, exit status 1;
    extract --rehash re-embeds it and verify passes again."""
    import json

    from featcache import verify_cache

    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, **TINY)
    runner = CliRunner()
    clean = runner.invoke(main, ["inspect", str(cache), "--verify", "-q"])
    assert clean.exit_code == 0 and "6 unchanged, 0 changed, 0 unreadable" in clean.output
    target = next(data.glob("class_0/*.png"))
    size = target.stat().st_size
    write_image(target, 777)  # other pixels, the same size
    with open(target, "r+b") as handle:
        handle.truncate(size)
    gone = next(data.glob("class_1/*.jpg"))
    gone.unlink()
    found = runner.invoke(main, ["inspect", str(cache), "--verify", "--json"])
    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert report["changed"] == [f"class_0/{target.name}"] and not report["ok"]
    assert [path for path, _ in report["unreadable"]] == [f"class_1/{gone.name}"]
    sampled = verify_cache(cache, sample=2, progress=False)
    assert sampled.checked == 2 and sampled.rows == 6
    extract(data, output=cache, rehash=True, **TINY)
    assert verify_cache(cache, progress=False).ok
    bad = runner.invoke(main, ["inspect", str(cache), "--verify-sample", "2"])
    assert bad.exit_code == 2 and bad.output.strip() == "error: --verify-sample needs --verify"
