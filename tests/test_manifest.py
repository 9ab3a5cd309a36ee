"""Manifests: several caches read as one dataset (store/manifest.py, store/sharded.py,
store/opening.py), ``featcache manifest``, ``extract --shard``; on real HDF5 caches."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from test_audit import CLASSES, _settings, clustered, write_cache

from featcache.cli import main
from featcache.core.options import parse_shard
from featcache.errors import CacheError, DatasetError, InvalidOptionError, SettingsMismatchError
from featcache.extractor.sources import scan_dataset, shard_of, take_shard
from featcache.store import CacheReader, CacheWriter, open_cache, read_cache
from featcache.store.joint import JointCache
from featcache.store.opening import create_manifest
from featcache.store.search_index import load_index
from featcache.store.sharded import ShardedCache
from helpers import make_class_folder


def _halves(tmp_path, rows=None, x=None):
    """The clustered rows as one cache and as two shards (alternate rows)."""
    if rows is None:
        rows, x = clustered(per_class=10, dim=8)
    whole = write_cache(tmp_path / "whole.h5", rows, x)
    parts = [
        write_cache(tmp_path / f"part-{i}.h5", rows[i::2], x[i::2], root=tmp_path) for i in (0, 1)
    ]
    return whole, parts


def _write_with(path, rows, x, settings, classes=CLASSES):
    order = {name: i for i, (name, *_) in enumerate(rows)}
    writer = CacheWriter(path, settings, classes, order)
    import hashlib

    writer.add(
        [r[0] for r in rows],
        [hashlib.sha256(r[3].encode()).hexdigest() for r in rows],
        [r[1] for r in rows],
        [{"train": 0, "val": 1, "test": 2}[r[2]] for r in rows],
        np.asarray(x, np.float32),
    )
    writer.commit(final=True)
    return path


def test_shards_read_as_the_one_cache_of_their_rows(tmp_path):
    whole, parts = _halves(tmp_path)
    one = CacheReader(whole)
    sharded = create_manifest(tmp_path / "all.featcache.json", parts)
    assert isinstance(sharded, ShardedCache) and len(sharded) == len(one)
    order = {p: i for i, p in enumerate(one.paths)}
    at = np.asarray([order[p] for p in sharded.paths])
    assert sorted(sharded.paths) == sorted(one.paths)
    np.testing.assert_array_equal(sharded.features(), one.features(at))
    assert sharded.label_names(np.arange(len(sharded))) == one.label_names(at)
    np.testing.assert_array_equal(sharded.split, one.split[at])
    assert sharded.sha256 == [one.sha256[i] for i in at]
    rows = np.random.default_rng(0).permutation(len(sharded))[:13]
    np.testing.assert_array_equal(sharded.features(rows), one.features(at[rows]))
    seen = []
    for got, block in sharded.batches(batch_size=7, shuffle=True, seed=3):
        assert len(got) <= 7
        np.testing.assert_array_equal(block, one.features(at[got]))
        seen += got.tolist()
    assert sorted(seen) == list(range(len(sharded)))
    assert sharded.fingerprint == one.fingerprint  # the same settings
    loaded = read_cache(sharded.path)
    np.testing.assert_array_equal(loaded.features, one.features(at))
    assert loaded.paths == sharded.paths and loaded.class_names == one.class_names
    info = open_cache(sharded.path).info()
    assert [s["rows"] for s in info["shards"]] == [20, 20] and info["rows"] == 40


def test_the_manifest_stores_paths_relative_to_itself_and_moves_with_its_shards(tmp_path):
    _, parts = _halves(tmp_path / "a")
    create_manifest(tmp_path / "a" / "m.json", parts)
    body = json.loads((tmp_path / "a" / "m.json").read_text())
    assert body == {"featcache_manifest": 1, "kind": "shards", "caches": ["part-0.h5", "part-1.h5"]}
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert len(open_cache(tmp_path / "b" / "m.json")) == 40


def test_a_shard_with_other_settings_is_named_with_the_setting(tmp_path):
    rows, x = clustered(per_class=4, dim=8)
    a = write_cache(tmp_path / "a.h5", rows[::2], x[::2])
    other = replace(_settings(str(tmp_path)), image_size=(64, 64))
    b = _write_with(tmp_path / "b.h5", rows[1::2], x[1::2], other)
    with pytest.raises(SettingsMismatchError) as info:
        create_manifest(tmp_path / "m.json", [a, b])
    message = str(info.value)
    assert "\n" not in message and "b.h5" in message
    assert "image_size 32x32 (a.h5) vs 64x64 (b.h5)" in message
    assert not (tmp_path / "m.json").exists()


def test_shards_of_other_folders_may_differ_in_root_and_classes(tmp_path):
    """Two sub-folders extracted apart: their rows are named under the common folder,
    their class lists (other members, other order) unified by name."""
    rows, x = clustered(per_class=4, dim=8)
    first = [r for r in rows if r[1] in ("a", "b")]
    second = [r for r in rows if r[1] in ("c", "d", "a")][4:]  # c, d and no a
    settings = _settings(str(tmp_path / "data" / "one"))
    a = _write_with(tmp_path / "a.h5", first, x[: len(first)], settings, ["b", "a"])
    other = replace(settings, dataset_root=str(tmp_path / "data" / "two"))
    b = _write_with(tmp_path / "b.h5", second, x[: len(second)], other, ["d", "c"])
    both = create_manifest(tmp_path / "m.json", [a, b])
    assert both.class_names == ["a", "b", "c", "d"]
    names = both.label_names(np.arange(len(both)))
    assert names == [r[1] for r in first + second]
    assert both.settings.dataset_root == str(tmp_path / "data")
    assert both.paths[0] == "one/" + first[0][0] and both.paths[-1] == "two/" + second[-1][0]


def test_a_row_in_two_shards_is_refused_naming_both(tmp_path):
    _, parts = _halves(tmp_path)
    twin = shutil.copy(parts[0], tmp_path / "copy.h5")
    with pytest.raises(DatasetError, match=r"is in two shards: .*part-0\.h5 and .*copy\.h5"):
        create_manifest(tmp_path / "m.json", [parts[0], parts[1], twin])
    with pytest.raises(DatasetError, match="named twice"):
        (tmp_path / "n.json").write_text(
            json.dumps({"featcache_manifest": 1, "kind": "shards", "caches": ["part-0.h5"] * 2})
        )
        open_cache(tmp_path / "n.json")


def test_same_content_under_other_paths_is_a_duplicate_image_not_an_error(tmp_path):
    rows, x = clustered(per_class=4, dim=8)
    rows[1] = (rows[1][0], rows[1][1], rows[1][2], rows[0][3])  # row 1 has row 0's content
    a = write_cache(tmp_path / "a.h5", rows[::2], x[::2])
    b = write_cache(tmp_path / "b.h5", rows[1::2], x[1::2])
    assert len(create_manifest(tmp_path / "m.json", [a, b])) == len(rows)


def test_missing_damaged_or_foreign_manifests_fail_in_one_line(tmp_path):
    _, parts = _halves(tmp_path)
    manifest = tmp_path / "m.json"
    create_manifest(manifest, parts)
    parts[1].unlink()
    with pytest.raises(DatasetError, match=r"m\.json: cache .*part-1\.h5 is missing"):
        open_cache(manifest)
    cases = {
        '{"featcache_manifest": 9, "kind": "shards", "caches": ["x.h5"]}': "newer than",
        '{"featcache_manifest": 1, "kind": "mixed", "caches": ["part-0.h5"]}': "kind 'mixed'",
        '{"featcache_manifest": 1, "kind": "shards", "caches": []}': "non-empty list",
        '{"kind": "shards"}': "not a featcache manifest",
        "{not json": "not a readable manifest",
    }
    for text, words in cases.items():
        manifest.write_text(text)
        with pytest.raises(DatasetError, match=words):
            open_cache(manifest)
    manifest.write_text('{"featcache_manifest": 1, "kind": "shards", "caches": ["part-0.h5"]}')
    with pytest.raises(CacheError, match="a manifest of several caches, not one cache file"):
        CacheReader(manifest)  # what needs one file (audit --fix-splits, extract -o) says so


def test_the_search_index_of_a_manifest_is_rebuilt_when_a_shard_changes(tmp_path):
    rows, x = clustered(per_class=10, dim=8)
    _, parts = _halves(tmp_path, rows, x)
    manifest = tmp_path / "m.json"
    create_manifest(manifest, parts)
    _, built = load_index(open_cache(manifest), progress=False)
    index, again = load_index(open_cache(manifest), progress=False)
    assert built and not again and index.shape == (40, 8)
    parts[1].unlink()
    write_cache(parts[1], rows[1::2][:5], x[1::2][:5], root=tmp_path)  # the shard rewritten
    index, rebuilt = load_index(open_cache(manifest), progress=False)
    assert rebuilt and index.shape == (25, 8)


def test_a_joint_manifest_joins_by_content_and_may_name_shard_manifests(tmp_path):
    rows, x = clustered(per_class=10, dim=8)
    _, parts = _halves(tmp_path, rows, x)
    create_manifest(tmp_path / "shards.json", parts)
    wide = write_cache(tmp_path / "wide.h5", rows, np.hstack([x, x]))
    joint = create_manifest(tmp_path / "joint.json", [tmp_path / "shards.json", wide], "joint")
    assert isinstance(joint, JointCache) and joint.feature_dim == 24 and len(joint) == 40
    assert joint.path == tmp_path / "joint.json"
    runner = CliRunner()
    shown = runner.invoke(main, ["inspect", str(tmp_path / "joint.json")])
    assert shown.exit_code == 0 and "joined caches: 2" in shown.output, shown.output
    refused = runner.invoke(main, ["search", str(tmp_path / "joint.json"), str(parts[0])])
    assert refused.exit_code == 2 and "needs one backbone" in refused.output


def test_shard_option_partitions_a_folder_by_path(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=3, per_class=7)
    listed = scan_dataset(data)
    taken = [take_shard(listed, (i, 3)) for i in range(3)]
    paths = [{item.path for item in part.items} for part in taken]
    assert set().union(*paths) == {item.path for item in listed.items}
    assert sum(len(p) for p in paths) == len(listed.items) and all(paths)
    assert all(part.class_names == listed.class_names for part in taken)
    assert shard_of("class_0/img_0.png", 3) == shard_of("class_0/img_0.png", 3)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(InvalidOptionError, match=r"^shard "):
            parse_shard(bad)
    refused = CliRunner().invoke(main, ["extract", str(data), "--shard", "3/3"])
    assert refused.exit_code == 2 and refused.output.startswith("error: --shard '3/3'")


def test_default_cache_name_of_a_shard():
    from featcache.core.options import ExtractOptions
    from featcache.extractor.naming import cache_name

    assert cache_name(ExtractOptions(backbone="vgg16", shard="1/4")) == "vgg16-shard1of4"


TINY_FLAGS = ["-b", "vgg16", "-w", "none", "--image-size", "32", "--no-projection", "-q"]


def _sharded_folder(tmp_path, runner, shards=2):
    """A class folder extracted as ``shards`` caches with --shard, and their manifest."""
    data = make_class_folder(tmp_path / "data", classes=3, per_class=6)
    cache = tmp_path / "cache"
    for i in range(shards):
        args = ["extract", str(data), "--shard", f"{i}/{shards}", "-o", str(cache / f"p{i}.h5")]
        ran = runner.invoke(main, [*args, *TINY_FLAGS])
        assert ran.exit_code == 0, ran.output
    manifest = cache / "all.featcache.json"
    parts = [str(cache / f"p{i}.h5") for i in range(shards)]
    made = runner.invoke(main, ["manifest", str(manifest), *parts])
    assert made.exit_code == 0, made.output
    assert f"shards: {shards}" in made.output and f"{manifest}: 18 rows x 512" in made.output
    return data, manifest


def test_journey_shards_to_manifest_to_train_predict_search_audit_export(tmp_path):
    """extract --shard 0/2 and 1/2 -> manifest -> inspect -> train-head -> predict (images
    and the manifest) -> search -> audit (--fix-splits refused) -> export-features."""
    import csv

    import pyarrow.parquet as pq

    runner = CliRunner()
    data, manifest = _sharded_folder(tmp_path, runner)
    info = json.loads(runner.invoke(main, ["inspect", str(manifest), "--json"]).output)
    assert info["rows"] == 18 and sum(s["rows"] for s in info["shards"]) == 18
    assert all(s["rows"] for s in info["shards"])  # both shards got files
    assert [c["total"] for c in info["classes"]] == [6, 6, 6]

    run = tmp_path / "runs" / "lr"
    trained = runner.invoke(main, ["train-head", str(manifest), "--head", "logreg", "-o", str(run)])
    assert trained.exit_code == 0, trained.output
    report = json.loads((run / "report.json").read_text())
    assert report["cache"] == str(manifest) and sum(report["rows"].values()) == 18

    image = data / "class_1" / "img_2.png"
    out = tmp_path / "pred.csv"
    predicted = runner.invoke(main, ["predict", str(run), str(image), "-o", str(out), "-q"])
    assert predicted.exit_code == 0, predicted.output
    (first,) = csv.DictReader(out.open())
    assert first["class"] in ("class_0", "class_1", "class_2") and not first["error"]
    rows_out = tmp_path / "rows.csv"
    on_cache = runner.invoke(main, ["predict", str(run), str(manifest), "-o", str(rows_out)])
    assert on_cache.exit_code == 0, on_cache.output
    assert len(list(csv.DictReader(rows_out.open()))) == 18

    found = runner.invoke(main, ["search", str(manifest), str(image), "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)
    assert hits["hits"][0]["path"] == "class_1/img_2.png"  # the cached image itself
    assert hits["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "cache" / "all.featcache.json.search.npy").is_file()

    audited = runner.invoke(main, ["audit", str(manifest), "-o", str(tmp_path / "audit"), "-q"])
    assert audited.exit_code == 0, audited.output
    assert json.loads((tmp_path / "audit" / "report.json").read_text())["summary"]["rows"] == 18
    fix = runner.invoke(main, ["audit", str(manifest), "--fix-splits", "-q"])
    assert fix.exit_code == 2 and "manifest" in fix.output and "\n" not in fix.output.strip()

    parquet = tmp_path / "emb.parquet"
    exported = runner.invoke(
        main, ["export-features", str(manifest), "-o", str(parquet), "--absolute-paths"]
    )
    assert exported.exit_code == 0, exported.output
    table = pq.read_table(parquet)
    assert table.num_rows == 18
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in data.rglob("*.*g"))


def test_search_rpc_on_a_manifest_answers_as_the_api_does(tmp_path):
    import grpc

    from featcache import ServeOptions, search, start_server
    from featcache.protos import extractor_pb2 as pb
    from featcache.protos import extractor_pb2_grpc as pb_grpc

    runner = CliRunner()
    data, manifest = _sharded_folder(tmp_path, runner)
    query = data / "class_2" / "img_1.jpg"
    local = search(manifest, query, k=4, progress=False)
    by_row = search(manifest, row=5, k=4, progress=False)
    outside = tmp_path / "outside.json"  # under no root the server exposes
    outside.write_text(json.dumps({"featcache_manifest": 1, "kind": "shards", "caches": []}))
    (tmp_path / "cache" / "escape.json").write_text(
        json.dumps({"featcache_manifest": 1, "kind": "shards", "caches": ["../elsewhere.h5"]})
    )
    shutil.copy(tmp_path / "cache" / "p0.h5", tmp_path / "elsewhere.h5")
    options = ServeOptions(port=0, data_root=str(data), cache_root=str(tmp_path / "cache"))
    server = start_server(options, warm=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExtractorStub(channel)
            image = pb.Image(encoded=query.read_bytes())
            request = pb.SearchRequest(cache=manifest.name, image=image, k=4)
            reply = stub.Search(request, timeout=120)
            assert [(h.row, h.path) for h in reply.hits] == [
                (h["row"], h["path"]) for h in local.hits
            ]
            reply = stub.Search(pb.SearchRequest(cache=manifest.name, row=5, k=4), timeout=60)
            assert [h.row for h in reply.hits] == [h["row"] for h in by_row.hits]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Search(pb.SearchRequest(cache="escape.json", row=0), timeout=60)
            assert refused.value.code().name == "PERMISSION_DENIED"
    finally:
        server.stop(0)


def test_compare_on_a_manifest_scores_as_on_the_one_cache(tmp_path):
    """The same rows as one cache and as a 2-shard manifest: the same leaderboard."""
    from featcache import compare

    whole, parts = _halves(tmp_path)
    manifest = tmp_path / "all.featcache.json"
    create_manifest(manifest, parts)
    boards = [
        compare(c, tmp_path / f"cmp-{i}", heads="logreg,knn", progress=False)
        for i, c in enumerate((whole, manifest))
    ]
    # heads that tie keep no fixed order (the leaderboard breaks ties by fit time)
    scores = [sorted((r["head"], r["test_accuracy"]) for r in b.rows) for b in boards]
    assert scores[0] == scores[1] and len(scores[0]) == 2


def test_cached_views_of_shards_are_the_views_of_the_one_cache(tmp_path):
    """extract --views 2 per shard: the manifest's views (what train-head --views reads)
    are the one cache's, row for row."""
    from featcache import extract

    data = make_class_folder(tmp_path / "data", classes=2, per_class=5)
    tiny = {"backbone": "vgg16", "weights": "none", "image_size": 32, "progress": False}
    whole = extract(data, output=tmp_path / "whole.h5", views=2, **tiny)
    parts = [
        extract(data, output=tmp_path / f"p{i}.h5", views=2, shard=f"{i}/2", **tiny).output
        for i in range(2)
    ]
    one = CacheReader(whole.output)
    both = create_manifest(tmp_path / "m.json", parts)
    assert both.views == 2
    at = np.asarray([one.paths.index(p) for p in both.paths])
    np.testing.assert_allclose(both.view_features(), one.view_features(at), atol=1e-6)
    rows, views = np.arange(len(both))[::-1], np.arange(len(both)) % 2
    np.testing.assert_allclose(
        both.view_pairs(rows, views), one.view_pairs(at[rows], views), atol=1e-6
    )


def test_a_manifest_may_name_shard_manifests(tmp_path):
    """Shards written by two machines, each with its own manifest, then one for all."""
    rows, x = clustered(per_class=10, dim=8)
    whole = write_cache(tmp_path / "whole.h5", rows, x)
    parts = [
        write_cache(tmp_path / f"q{i}.h5", rows[i::4], x[i::4], root=tmp_path) for i in range(4)
    ]
    create_manifest(tmp_path / "left.json", parts[:2])
    create_manifest(tmp_path / "right.json", parts[2:])
    every = create_manifest(
        tmp_path / "all.json", [tmp_path / "left.json", tmp_path / "right.json"]
    )
    one = CacheReader(whole)
    at = np.asarray([one.paths.index(p) for p in every.paths])
    streamed = np.concatenate([block for _, block in every.batches(batch_size=9)])
    np.testing.assert_array_equal(streamed, one.features(at))
    with pytest.raises(DatasetError, match="is in two shards"):
        create_manifest(tmp_path / "twice.json", [tmp_path / "left.json", parts[0]])
