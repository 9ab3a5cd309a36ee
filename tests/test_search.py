"""search: exact cosine top-k over a cache, the index file and when it is rebuilt, image
queries embedded with the cache's own backbone, the CLI's errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from test_audit import clustered, write_cache

from featcache import extract
from featcache.audit.neighbors import normalize, query_top_k
from featcache.audit.search import index_paths, load_index, search
from featcache.cli import main
from featcache.errors import CacheChangedError
from featcache.service.convert import status_name
from featcache.store import CacheReader
from helpers import TINY, make_class_folder, write_image


def brute(x, row, k):
    x = normalize(x)
    s = x @ x[row]
    s[row] = -np.inf
    order = np.lexsort((np.arange(len(x)), -s))[:k]
    return order.tolist(), s[order]


def test_top_k_equals_brute_force(tmp_path):
    rows, x = clustered(per_class=25)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    for row in (0, 37, 99):
        result = search(cache, row=row, k=7, progress=False)
        want_rows, want_s = brute(x, row, 7)
        assert [h["row"] for h in result.hits] == want_rows
        np.testing.assert_allclose([h["similarity"] for h in result.hits], want_s, atol=1e-5)
        assert result.hits[0]["path"] == rows[want_rows[0]][0]


def test_blocked_query_equals_one_product():
    index = normalize(np.random.default_rng(0).normal(size=(300, 5)))
    queries = normalize(np.random.default_rng(1).normal(size=(4, 5)))
    for q, (s, r) in zip(queries, query_top_k(index, queries, 9)):
        full = index @ q
        assert r.tolist() == np.lexsort((np.arange(300), -full))[:9].tolist()
        np.testing.assert_allclose(s, full[r], atol=1e-6)


def test_index_built_once_and_rebuilt_when_the_cache_changes(tmp_path):
    rows, x = clustered(per_class=10)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    assert search(cache, row=1, progress=False).index_built
    assert not search(cache, row=1, progress=False).index_built
    array_path, meta_path = index_paths(cache)
    assert array_path.is_file() and json.loads(meta_path.read_text())["rows"] == 40
    # other features at the same path (one row fewer): rebuilt, and the answers follow
    x2 = np.random.default_rng(5).normal(size=(39, x.shape[1]))
    cache.unlink()
    write_cache(cache, rows[:-1], x2)
    again = search(cache, row=1, progress=False)
    assert again.index_built
    assert [h["row"] for h in again.hits] == brute(x2, 1, 10)[0]
    # same rows, only the file touched: rebuilt too (the mtime is part of the identity)
    stat = cache.stat()
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert search(cache, row=1, progress=False).index_built
    # a damaged index meta is not trusted
    meta_path.write_text("{")
    index, built = load_index(CacheReader(cache), progress=False)
    assert built and index.shape == (39, x.shape[1])


def test_a_reader_never_mixes_two_states_of_a_rewritten_cache(tmp_path):
    """A run rewrites a cache while a reader (a server's Search, an audit) holds it open:
    reading on says so (CacheChangedError, the gRPC ABORTED), never reads the new file's
    rows under the old file's paths; an index is never built from such a mix, and a search
    opens the new state and answers from it."""
    rows, x = clustered(per_class=10)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    stale = CacheReader(cache)
    x2 = np.random.default_rng(5).normal(size=(39, x.shape[1]))
    replacement = write_cache(tmp_path / "new.h5", rows[:-1], x2)
    os.replace(replacement, cache)  # as every checkpoint of a writer does
    with pytest.raises(CacheChangedError, match="rewritten since it was opened"):
        stale.features(np.arange(3))
    with pytest.raises(CacheChangedError):
        load_index(stale, progress=False)
    assert not index_paths(cache)[1].exists()  # no index of the mixed state was kept
    assert status_name(CacheChangedError("x")) == "ABORTED"
    again = search(cache, row=1, progress=False)
    assert [h["row"] for h in again.hits] == brute(x2, 1, 10)[0]
    assert len(CacheReader(cache)) == 39


def test_image_query_uses_the_caches_backbone(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, **TINY)
    reader = CacheReader(cache)
    # an image the cache holds: its own row, similarity 1
    held = search(cache, data / reader.paths[2], k=3, progress=False)
    assert held.hits[0]["row"] == 2 and held.hits[0]["similarity"] == pytest.approx(1.0)
    assert "row 2" in held.query
    # a new image: embedded now, the same as extracting it into a cache
    new = write_image(tmp_path / "new" / "one" / "q.png", 999)
    extract(tmp_path / "new", output=tmp_path / "q.h5", **TINY)
    want = normalize(CacheReader(tmp_path / "q.h5").features())[0]
    x = normalize(reader.features())
    result = search(cache, new, k=len(reader), progress=False)
    got = {h["row"]: h["similarity"] for h in result.hits}
    np.testing.assert_allclose([got[r] for r in range(len(reader))], x @ want, atol=1e-4)


def test_cli_prints_json(tmp_path):
    rows, x = clustered(per_class=5)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    result = CliRunner().invoke(main, ["search", str(cache), "--row", "0", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.h5", "--row", "0"], "no such cache file"),
        (["CACHE", "--row", "20"], "--row 20: expected 0 to 19"),
        (["CACHE", "--row", "-1"], "--row -1"),
        (["CACHE"], "an image, a row or a text"),
        (["CACHE", "nothing.png"], "no such file"),
        (["CACHE", "--row", "0", "-k", "0"], "--k 0"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    rows, x = clustered(per_class=5)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    args = [
        str(cache) if a == "CACHE" else str(tmp_path / a) if a.endswith((".h5", ".png")) else a
        for a in args
    ]
    result = CliRunner().invoke(main, ["search", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_search_rpc_answers_as_the_api_does(tmp_path):
    import grpc

    from featcache import Client, ServeOptions, start_server
    from featcache.protos import extractor_pb2 as pb
    from featcache.protos import extractor_pb2_grpc as pb_grpc

    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    caches = tmp_path / "cache"
    caches.mkdir()
    extract(data, output=caches / "tiny.h5", **TINY)
    query = write_image(tmp_path / "q.png", 999)
    local = search(caches / "tiny.h5", query, k=3, progress=False)
    by_row = search(caches / "tiny.h5", row=2, k=3, progress=False)
    options = ServeOptions(port=0, data_root=str(data), cache_root=str(caches))
    server = start_server(options, warm=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            image = pb.Image(encoded=query.read_bytes())
            reply = stub.Search(pb.SearchRequest(cache="tiny.h5", image=image, k=3), timeout=120)
            assert [h.row for h in reply.hits] == [h["row"] for h in local.hits]
            np.testing.assert_allclose(
                [h.similarity for h in reply.hits], [h["similarity"] for h in local.hits], atol=1e-4
            )
            reply = stub.Search(pb.SearchRequest(cache="tiny.h5", row=2, k=3), timeout=60)
            assert reply.index == "exact"  # a small cache: no approximate index
            assert [(h.row, h.path) for h in reply.hits] == [
                (h["row"], h["path"]) for h in by_row.hits
            ]
        with Client(f"127.0.0.1:{server.port}") as client:
            hits = client.search("tiny.h5", query, k=3)
            assert [h["row"] for h in hits] == [h["row"] for h in local.hits]
            assert client.search("tiny.h5", row=2, k=3)[0]["path"] == by_row.hits[0]["path"]
            assert client.search("tiny.h5", row=2, k=3, exact=True) == client.search(
                "tiny.h5", row=2, k=3
            )
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            bad = {
                "out of range": (pb.SearchRequest(cache="tiny.h5", row=99), "INVALID_ARGUMENT"),
                "no query": (pb.SearchRequest(cache="tiny.h5"), "INVALID_ARGUMENT"),
                "missing": (pb.SearchRequest(cache="nope.h5", row=0), "NOT_FOUND"),
                "escape": (pb.SearchRequest(cache="../x.h5", row=0), "PERMISSION_DENIED"),
            }
            for request, code in bad.values():
                with pytest.raises(grpc.RpcError) as info:
                    stub.Search(request, timeout=60)
                assert info.value.code().name == code, info.value.details()
    finally:
        server.stop(0)


def test_concurrent_searches_build_the_index_once_under_fresh_names(tmp_path):
    """Issue 25 item 1: threads that all find the index missing build it once (the others
    wait and map the one built); no temporary is shared, truncated or left behind."""
    import threading

    rows, x = clustered(per_class=50)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    planted = tmp_path / "victim.txt"
    planted.write_text("keep")
    array_path, _ = index_paths(cache)
    # the old predictable temporary name, planted as a symlink: never followed now
    (tmp_path / f"{array_path.name}.tmp-{os.getpid()}").symlink_to(planted)
    barrier = threading.Barrier(8)
    found, errors = [], []

    def load():
        try:
            barrier.wait()
            index, built = load_index(CacheReader(cache), progress=False)
            found.append((np.array(index), built))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(found) == 8 and sum(built for _, built in found) == 1
    for index, _ in found:
        np.testing.assert_array_equal(index, normalize(x))
    assert planted.read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_index_is_rebuilt_not_an_error(tmp_path, damage):
    rows, x = clustered(per_class=10)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    first = search(cache, row=3, k=5, progress=False)
    array_path, _ = index_paths(cache)
    data = array_path.read_bytes()
    array_path.write_bytes(
        {"garbage": b"not an index" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    again = search(cache, row=3, k=5, progress=False)
    assert again.index_built and again.hits == first.hits
    assert not search(cache, row=3, k=5, progress=False).index_built


@pytest.mark.parametrize(
    ("backbone", "weights", "allow"),
    [
        ("hf://someone/model", "preset", None),  # would be fetched from the network
        ("../outside.keras", "embedded", None),  # a relative model path leaving the root
        ("/tmp/outside.keras", "embedded", None),  # an absolute one
        ("vgg16", "../../etc/hostname", None),  # a weights file outside the root
        ("vgg16", "none", ["mobilenet"]),  # a backbone the allow-list leaves out
    ],
)
def test_search_by_image_builds_a_model_only_as_a_request_may(tmp_path, backbone, weights, allow):
    """Issue 25 item 2: a cache's recorded backbone goes through Embed's rules (remote
    presets, --weights-root, --allow-backbone) before any model is fetched or read."""
    import grpc

    from featcache import ServeOptions, start_server
    from featcache.core.settings import CacheSettings
    from featcache.protos import extractor_pb2 as pb
    from featcache.protos import extractor_pb2_grpc as pb_grpc
    from featcache.store import CacheWriter

    caches, roots = tmp_path / "cache", tmp_path / "weights"
    caches.mkdir()
    roots.mkdir()
    (tmp_path / "outside.keras").write_bytes(b"not a model")
    settings = CacheSettings(
        backbone, "", weights, "", (32, 32), "stretch", "avg", "", "none", 0,
        dtype="float32", split_ratios=(0.6, 0.2, 0.2), split_source="hash",
        dataset_root=str(tmp_path),
    )  # fmt: skip
    writer = CacheWriter(caches / "c.h5", settings, ["a"], {"a/0.png": 0, "a/1.png": 1})
    writer.add(["a/0.png", "a/1.png"], ["0" * 64, "1" * 64], ["a", "a"], [0, 0], np.eye(2, 4))
    writer.commit(final=True)
    options = ServeOptions(
        port=0, cache_root=str(caches), weights_root=str(roots), allow_backbone=allow or []
    )
    server = start_server(options, warm=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            image = pb.Image(encoded=write_image(tmp_path / "q.png", 1).read_bytes())
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(pb.SearchRequest(cache="c.h5", image=image, k=1), timeout=60)
            assert info.value.code().name == "PERMISSION_DENIED", info.value.details()
            assert str(tmp_path) not in info.value.details()
            by_row = stub.Search(pb.SearchRequest(cache="c.h5", row=0, k=1), timeout=60)
            assert [h.row for h in by_row.hits] == [1]  # a row query needs no model
    finally:
        server.stop(0)


def test_only_index_files_of_taps_the_cache_lost_are_removed(tmp_path):
    from featcache.store.search_index import drop_gone_tap_indexes

    names = [
        "c.h5.search.npy", "c.h5.search.json",  # the features' index: never touched
        "c.h5.search@layer1.0.conv.npy", "c.h5.search@layer1.0.conv.npy.lock",  # kept tap
        "c.h5.search@a+layer1.0.conv.json",  # side by side, both kept
        "c.h5.search@old.npy", "c.h5.search@old.json", "c.h5.search@old.npy.lock",
        "c.h5.search@old.faiss", "c.h5.search@old.slots.npz", "c.h5.search@old.ann.json",
        "c.h5.search@a+old.npy",  # one part gone
        "c.h5.search@old.h5", "c.h5.search@old.h5.lock",  # another cache, oddly named
        "c.h5x.search@old.npy", "d.h5.search@old.npy",  # other caches' indexes
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "c.h5.search@gone.npy").mkdir()  # not a file: left alone
    removed = drop_gone_tap_indexes(tmp_path / "c.h5", ["a", "layer1.0.conv"])
    gone = {p.name for p in removed}
    assert gone == {
        "c.h5.search@old.npy", "c.h5.search@old.json", "c.h5.search@old.npy.lock",
        "c.h5.search@old.faiss", "c.h5.search@old.slots.npz", "c.h5.search@old.ann.json",
        "c.h5.search@a+old.npy",
    }  # fmt: skip
    assert {p.name for p in tmp_path.iterdir()} == (set(names) - gone) | {"c.h5.search@gone.npy"}
    assert drop_gone_tap_indexes(tmp_path / "c.h5", ["a", "layer1.0.conv"]) == []
