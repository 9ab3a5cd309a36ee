"""The approximate search index (store/ann_index.py): which kind a cache gets, recall
against exact, updates by content as the cache changes, one build at a time, damaged
files rebuilt, and the journey extract -> search -> extract more -> search (updated)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from test_audit import CLASSES, write_cache

from featcache import extract
from featcache.audit.search import search
from featcache.cli import main
from featcache.errors import InvalidOptionError
from featcache.store import CacheReader
from featcache.store.ann_index import ann_paths, match_rows, open_ann
from featcache.store.ann_plan import parse_memory, plan_index
from featcache.store.search_index import index_paths, normalize
from helpers import TINY, make_class_folder, write_image

ANN = {"exact_below": 0, "progress": False}


def mixture(n, dim=32, centres=40, seed=0):
    """Rows around ``centres`` Gaussian centres, so that neighbours exist."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return c[rng.integers(0, centres, n)] + rng.normal(0, 0.7, (n, dim))


def rows_for(n, start=0, tag="r"):
    return [
        (f"{CLASSES[i % 4]}/{i:06d}.png", CLASSES[i % 4], "train", f"{tag}{i}")
        for i in range(start, start + n)
    ]


def exact_top(x, row, k=10):
    x = normalize(x)
    s = x @ x[row]
    s[row] = -np.inf
    return np.lexsort((np.arange(len(x)), -s))[:k].tolist()


def test_the_kind_follows_rows_and_memory():
    assert plan_index(1000, 1024).kind == "exact"
    assert plan_index(10**6, 1024, exact=True).kind == "exact"
    assert plan_index(10**6, 1024, 8 << 30).kind == "ivf-flat"  # 4 GB of rows fit
    sq8 = plan_index(10**6, 1024, 2 << 30)
    assert (sq8.kind, sq8.factory) == ("ivf-sq8", "IVF1024,SQ8")
    pq = plan_index(10**6, 1024, 512 << 20)
    assert pq.kind == "ivf-pq" and pq.factory == "IVF1024,PQ256x4fs"  # 128 bytes a row
    assert plan_index(10**6, 1024, 128 << 20).pq_m < 256
    with pytest.raises(InvalidOptionError, match="too small"):
        plan_index(10**6, 1024, 1 << 20)
    assert parse_memory("2GB") == 2 << 30 and parse_memory("512m") == 512 << 20
    for bad in ("lots", "-1GB", "10"):
        with pytest.raises(InvalidOptionError, match="index_memory"):
            parse_memory(bad)


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8", "ivf-pq"])
def test_recall_at_10_against_exact(tmp_path, kind):
    x = mixture(3000)
    cache = write_cache(tmp_path / "c.h5", rows_for(3000), x)
    first = search(cache, row=0, index_kind=kind, **ANN)
    assert (first.index, first.index_status) == (kind, "built")
    meta = json.loads(ann_paths(cache)[2].read_text())
    assert meta["recall"] >= 0.95 and meta["kind"] == kind
    found = []
    for row in range(0, 3000, 60):
        hits = search(cache, row=row, index_kind=kind, **ANN)
        assert hits.index_status == "loaded" and row not in [h["row"] for h in hits.hits]
        found.append(len(set(h["row"] for h in hits.hits) & set(exact_top(x, row))) / 10)
    assert np.mean(found) >= 0.95
    exact = search(cache, row=0, exact=True, **ANN)
    assert exact.index == "exact" and [h["row"] for h in exact.hits] == exact_top(x, 0)


def test_rows_match_slots_by_content():
    keys = np.array([5, 6, 7, 7], np.uint64)
    rows = np.array([0, 1, 2, 3])
    # 6 gone, 7 once less, 9 new, and the rest moved
    new_rows, missing, dead = match_rows(keys, rows, np.array([9, 7, 5], np.uint64))
    assert new_rows.tolist()[0] == 2 and missing.tolist() == [0]
    assert sorted(dead.tolist()) == [1, 2] or sorted(dead.tolist()) == [1, 3]
    assert sorted(r for r in new_rows.tolist() if r >= 0) == [1, 2]


def test_an_update_adds_and_removes_only_what_changed(tmp_path):
    x = mixture(2400)
    cache = write_cache(tmp_path / "c.h5", rows_for(2400), x)
    reader = CacheReader(cache)
    old, how = open_ann(reader, kind="ivf-flat", **ANN)
    assert how == "built"
    before = old.search(normalize(x[:1]), 10)
    # 2% new rows (between the old ones in path order), 1% gone, rows shifted
    extra = mixture(2448)[2400:]  # new rows of the same distribution
    keep = np.ones(2400, bool)
    keep[::100] = False
    rows = [r for r, k in zip(rows_for(2400), keep) if k] + rows_for(48, 10**5, "new")
    both = np.concatenate([x[keep], extra])
    cache.unlink()
    write_cache(cache, rows, both)
    result = search(cache, row=len(rows) - 1, index_kind="ivf-flat", **ANN)
    assert (result.index_status, result.index_built) == ("updated", False)
    meta = json.loads(ann_paths(cache)[2].read_text())
    assert (meta["added"], meta["removed"], meta["live"]) == (48, 24, len(rows))
    for row in (0, 700, len(rows) - 1):
        hits = [h["row"] for h in search(cache, row=row, index_kind="ivf-flat", **ANN).hits]
        assert len(set(hits) & set(exact_top(both, row))) >= 8
    # the index the first reader opened still answers for its state
    np.testing.assert_array_equal(old.search(normalize(x[:1]), 10)[1], before[1])
    # most rows changed: rebuilt, not updated
    cache.unlink()
    write_cache(cache, rows_for(2400, tag="other"), mixture(2400, seed=3))
    assert search(cache, row=0, index_kind="ivf-flat", **ANN).index_status == "built"


def test_concurrent_searches_build_the_index_once(tmp_path):
    cache = write_cache(tmp_path / "c.h5", rows_for(2000), mixture(2000))
    barrier = threading.Barrier(6)
    got, errors = [], []

    def one():
        try:
            barrier.wait()
            got.append(open_ann(CacheReader(cache), kind="ivf-sq8", **ANN)[1])
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(got) == ["built"] + ["loaded"] * 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_damaged_index_file_is_rebuilt(tmp_path, which):
    cache = write_cache(tmp_path / "c.h5", rows_for(1000), mixture(1000))
    first = search(cache, row=3, index_kind="ivf-flat", **ANN)
    import featcache.store.ann_index as ann

    ann._LOADED.clear()  # as another process: only the files
    path = ann_paths(cache)[which]
    path.write_bytes(path.read_bytes()[:50])
    again = search(cache, row=3, index_kind="ivf-flat", **ANN)
    assert again.index_status == "built" and again.hits == first.hits


def test_journey_extract_search_extract_more_search_updated(tmp_path):
    """A user extracts a folder, searches it (the index is built), adds images and runs
    extract again (resume), then searches again: the index was updated, not rebuilt, it
    finds the new images, and on this small cache answers as the exact scan does."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=5)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, **TINY)
    runner = CliRunner()
    args = ["search", str(cache), "--exact-below", "0", "--json", "-k", "4"]
    first = json.loads(runner.invoke(main, [*args, "--row", "1"]).output)
    assert (first["index"], first["index_status"]) == ("ivf-flat", "built")
    assert ann_paths(cache)[0].is_file() and not index_paths(cache)[0].exists()
    new = [write_image(data / "class_1" / f"new_{i}.png", 500 + i) for i in range(2)]
    extract(data, output=cache, **TINY)  # resume: only the two new images are embedded
    reader = CacheReader(cache)
    assert len(reader) == 12
    done = runner.invoke(main, [*args, str(new[1])])
    assert done.exit_code == 0, done.output
    second = json.loads(done.output)
    assert (second["index"], second["index_status"]) == ("ivf-flat", "updated")
    top = second["hits"][0]
    assert top["path"] == "class_1/new_1.png" and top["similarity"] == pytest.approx(1.0, abs=1e-5)
    for row in range(len(reader)):
        ann = search(cache, row=row, k=5, **ANN)
        exact = search(cache, row=row, k=5, exact=True, **ANN)
        assert ann.index_status == "loaded"
        assert [h["row"] for h in ann.hits] == [h["row"] for h in exact.hits]
        np.testing.assert_allclose(
            [h["similarity"] for h in ann.hits], [h["similarity"] for h in exact.hits], atol=1e-5
        )
    bad = runner.invoke(main, [*args, "--row", "0", "--index-memory", "lots"])
    assert bad.exit_code == 2 and "--index-memory 'lots'" in bad.output


def test_a_server_answers_from_the_index_its_options_choose(tmp_path):
    """serve --exact-below / --index-memory (one declaration with search's): a server told
    to index small caches answers the Search RPC from the approximate index, with the hits
    the API gives from the same index; bad values are refused before it starts."""
    import grpc

    from featcache import ServeOptions, start_server
    from featcache.protos import extractor_pb2 as pb
    from featcache.protos import extractor_pb2_grpc as pb_grpc

    caches = tmp_path / "caches"
    caches.mkdir()
    x = mixture(2000)
    cache = write_cache(caches / "c.h5", rows_for(2000), x)
    options = ServeOptions(port=0, cache_root=str(caches), exact_below=0, index_memory="64MB")
    server = start_server(options, warm=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            reply = stub.Search(pb.SearchRequest(cache="c.h5", row=7, k=5), timeout=120)
            exact = stub.Search(pb.SearchRequest(cache="c.h5", row=7, k=5, exact=True), timeout=60)
    finally:
        server.stop(0)
    local = search(cache, row=7, k=5, **ANN)
    assert reply.index == local.index and reply.index.startswith("ivf-")
    assert [h.row for h in reply.hits] == [h["row"] for h in local.hits]
    assert exact.index == "exact" and [h.row for h in exact.hits] == exact_top(x, 7, 5)
    for bad in ({"exact_below": -1}, {"index_memory": "lots"}):
        with pytest.raises(InvalidOptionError):
            ServeOptions(port=0, **bad)
