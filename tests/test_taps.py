"""Journey: extract the Fashion-MNIST sample with --taps auto (the real MobileNet, one
forward pass) -> inspect lists the taps -> compare --taps all ranks tap x protocol with
intervals -> train-head --tap on an inner layer -> export builds a model that ends at that
layer -> predict on the images gives what the head gives on the cached tap features.
Then: a rerun adds taps for new images and refuses another tap list; a head on two taps
side by side exports, predicts and fine-tunes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featcache.audit.search import search
from featcache.cli import main
from featcache.extractor.decode import decode_image
from featcache.heads.train import load_head
from featcache.store import open_cache

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-mnist"
WEIGHTS = ROOT / "examples" / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
ARGS = ["-b", "mobilenet", "-w", str(WEIGHTS), "--image-size", "64", "-q"]
CLASSES = ("bag", "sandal", "trouser")


def _copy(target: Path, first: int, last: int) -> None:
    for name in CLASSES:
        (target / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((SAMPLE / name).glob("*.png"))[first:last]:
            shutil.copy2(image, target / name / image.name)


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def tapped_cache(tmp_path_factory, name: str, per_class: int):
    """``extract --taps auto`` of ``per_class`` sample images of each class into a new
    folder: (root, data, cache); skips where the sample or its weights are missing."""
    if not (SAMPLE.is_dir() and WEIGHTS.is_file()):
        pytest.skip("examples/fashion-mnist or its MobileNet weights are missing")
    root = tmp_path_factory.mktemp(name)
    data, cache = root / "data", root / "c.h5"
    _copy(data, 0, per_class)
    _ok(CliRunner(), "extract", data, "-o", cache, "--taps", "auto", *ARGS)
    return root, data, cache


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    return tapped_cache(tmp_path_factory, "taps", 10)


def _layers(model) -> set[str]:
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if hasattr(layer, "layers"):
            names |= _layers(layer)
    return names


def test_taps_journey(tapped):
    root, data, cache = tapped
    runner = CliRunner()
    info = json.loads(_ok(runner, "inspect", cache, "--json"))
    taps = info["taps"]
    # auto: the end of each stage before the last (64 px: maps of 32, 16, 8 and 4 px)
    assert [t["name"] for t in taps] == [
        "conv_pw_1_relu",
        "conv_pw_3_relu",
        "conv_pw_5_relu",
        "conv_pw_11_relu",
    ]
    assert [t["dim"] for t in taps] == [64, 128, 256, 512]
    assert "conv_pw_5_relu" in _ok(runner, "inspect", cache)
    with h5py.File(cache, "r") as handle:
        rows = handle["features"].shape[0]
        assert rows == 30
        assert all(handle[f"taps/{t['name']}"].shape == (rows, t["dim"]) for t in taps)

    board = json.loads(
        _ok(
            runner,
            "compare",
            cache,
            "--taps",
            "all",
            "--protocol",
            "linear-probe",
            "--bootstrap",
            "200",
            "-o",
            root / "cmp",
            "--json",
        )
    )
    sources = {row["source"] for row in board["rows"]}
    assert sources == {"main", *(t["name"] for t in taps), "concat(5 taps)"}
    every = "+".join(["main", *(t["name"] for t in taps)])
    note = f"concat(5 taps) is train-head --tap {every} (export, predict and fine-tune read it)"
    assert note in board["notes"]
    assert all(
        row["test_acc1_low"] <= row["test_acc1"] <= row["test_acc1_high"] for row in board["rows"]
    )
    few = json.loads(
        _ok(
            runner,
            "compare",
            cache,
            "--taps",
            "main,conv_pw_5_relu",
            "--protocol",
            "linear-probe",
            "--shots",
            "1,2",
            "--seeds",
            "2",
            "-o",
            root / "few",
            "--json",
        )
    )
    assert {row["source"] for row in few["rows"]} == {
        "main",
        "conv_pw_5_relu",
        "main+conv_pw_5_relu",
    }
    curve = sorted((row["source"], row["shots"], row["train_rows"]) for row in few["rows"])
    assert [(shots, rows) for _, shots, rows in curve] == [(1, 3), (2, 6)] * 3  # a curve per tap

    run = root / "run"
    _ok(runner, "train-head", cache, "--tap", "conv_pw_5_relu", "--head", "logreg", "-o", run)
    head = load_head(run)
    assert head.settings.layer == "conv_pw_5_relu" and head.meta["feature_dim"] == 256

    model_path = root / "m.keras"
    _ok(runner, "export", run, "-o", model_path)
    from featcache.heads.endtoend import load_model

    model, _, _ = load_model(model_path)
    layers = _layers(model)
    assert "conv_pw_5_relu" in layers and "conv_pw_6" not in layers  # ends at the tap

    reader = open_cache(cache).tap("conv_pw_5_relu")
    expected = head.predict_proba(reader.features())
    for path, row in zip(reader.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(pixels[None]))[0], row, atol=1e-4)
    out = root / "p.csv"
    _ok(runner, "predict", run, data, "-o", out)
    with open(out) as handle:
        predicted = {r["path"]: float(r["probability"]) for r in csv.DictReader(handle)}
    for path, row in zip(reader.paths, expected):
        assert abs(predicted[str(data / path)] - row.max()) < 1e-4
    on_cache = root / "pc.csv"  # the head on the cache: it reads the cache's tap
    _ok(runner, "predict", run, cache, "-o", on_cache)
    with open(on_cache) as handle:
        cached = {r["path"]: float(r["probability"]) for r in csv.DictReader(handle)}
    assert cached == pytest.approx({p: r.max() for p, r in zip(reader.paths, expected)}, abs=1e-5)


def test_rerun_adds_taps_for_new_images_and_keeps_the_tap_list(tapped, tmp_path):
    data, cache, first = tmp_path / "data", tmp_path / "c.h5", tmp_path / "first.h5"
    _copy(data, 0, 10)
    runner = CliRunner()
    _ok(runner, "extract", data, "-o", cache, "--taps", "auto", *ARGS)
    shutil.copy2(cache, first)
    _copy(data, 10, 12)
    _ok(runner, "extract", data, "-o", cache, *ARGS)  # no --taps: the cache's
    reader = open_cache(cache)
    assert len(reader) == 36 and reader.settings.taps == ("auto",)
    with h5py.File(first, "r") as old:
        kept = {p.decode(): i for i, p in enumerate(old["paths"][:])}
        before = old["taps/conv_pw_3_relu"][:]
    tap = reader.tap("conv_pw_3_relu").features()
    for row, path in enumerate(reader.paths):
        if path in kept:  # cached rows kept their tap features
            np.testing.assert_array_equal(tap[row], before[kept[path]])
        else:
            assert np.abs(tap[row]).sum() > 0
    result = runner.invoke(
        main, ["extract", str(data), "-o", str(cache), "--taps", "conv_pw_5_relu", *ARGS]
    )
    assert result.exit_code == 2
    assert "taps auto (cache) vs conv_pw_5_relu (now)" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert len(open_cache(cache)) == 36
    # searched in two taps and side by side; rewritten with one of them: only its index
    # files stay (and main's, which the next search rebuilds)
    for tap in ("main", "conv_pw_3_relu", "conv_pw_1_relu", "conv_pw_3_relu+conv_pw_1_relu"):
        assert search(cache, row=0, k=3, tap=tap, progress=False).tap == tap
    made = {p.name for p in tmp_path.glob("c.h5.search*")}
    assert {"c.h5.search@conv_pw_1_relu.npy", "c.h5.search@conv_pw_3_relu.json"} <= made
    _ok(runner, "extract", data, "-o", cache, "--taps", "conv_pw_3_relu", "--overwrite", *ARGS)
    left = {p.name for p in tmp_path.glob("c.h5.search*")}
    assert left == {n for n in made if "@" not in n or n.startswith("c.h5.search@conv_pw_3_relu.")}
    assert "c.h5.search.npy" in left and "c.h5.search@conv_pw_3_relu.npy" in left
    assert search(cache, row=0, k=3, tap="conv_pw_3_relu", progress=False).index_built
    _ok(runner, "extract", data, "-o", cache, "--overwrite", *ARGS)  # no taps at all
    assert not list(tmp_path.glob("c.h5.search@*")) and (tmp_path / "c.h5.search.npy").exists()


def test_a_head_on_taps_side_by_side_exports_predicts_and_fine_tunes(tapped, tmp_path):
    """compare ranks taps side by side; the head trained on them (an inner tap before main,
    so the order of the columns matters) exports a model ending at both layers that gives
    on the images what it gives on the cached taps, predicts on a folder and on the cache
    alike, and fine-tunes into a model that predict reads."""
    _, data, cache = tapped
    runner = CliRunner()
    board = json.loads(
        _ok(runner, "compare", cache, "--taps", "conv_pw_5_relu,main", "--protocol",
            "linear-probe", "--bootstrap", "50", "-o", tmp_path / "cmp", "--json")
    )  # fmt: skip
    tap = next(row["source"] for row in board["rows"] if "+" in row["source"])
    assert tap == "conv_pw_5_relu+main"  # the row side by side, named as --tap takes it
    run = tmp_path / "run"
    _ok(runner, "train-head", cache, "--tap", tap, "--epochs", "3", "-o", run)
    head = load_head(run)
    assert head.meta["feature_dim"] == 256 + 1024
    assert head.settings.layer == "conv_pw_5_relu+main"

    from featcache.heads.endtoend import load_model

    _ok(runner, "export", run, "-o", tmp_path / "m.keras")
    model, _, _ = load_model(tmp_path / "m.keras")
    reader = open_cache(cache)
    joined = np.concatenate([reader.tap("conv_pw_5_relu").features(), reader.features()], axis=1)
    expected = head.predict_proba(joined)
    pixels = np.stack(
        [decode_image((data / p).read_bytes()).astype(np.float32) for p in reader.paths]
    )
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, atol=1e-4)

    on_images, on_cache = tmp_path / "images.csv", tmp_path / "cache.csv"
    _ok(runner, "predict", run, data, "-o", on_images)
    _ok(runner, "predict", run, cache, "-o", on_cache)
    with open(on_images) as handle:
        from_images = {r["path"]: float(r["probability"]) for r in csv.DictReader(handle)}
    with open(on_cache) as handle:
        rows = csv.DictReader(handle)
        from_cache = {str(data / r["path"]): float(r["probability"]) for r in rows}
    assert from_images == pytest.approx(from_cache, abs=1e-4)
    assert from_cache == pytest.approx(
        {str(data / p): row.max() for p, row in zip(reader.paths, expected)}, abs=1e-5
    )

    tuned = tmp_path / "ft"
    _ok(runner, "fine-tune", cache, "--head", run, "--schedule", "fixed", "--epochs", "1",
        "-o", tuned)  # fmt: skip
    assert "conv_pw_5_relu" in _layers(load_model(tuned / "model.keras")[0])
    out = tmp_path / "tuned.csv"
    _ok(runner, "predict", tuned / "model.keras", data, "-o", out)
    with open(out) as handle:
        assert len(list(csv.DictReader(handle))) == len(reader.paths)


def test_heads_on_taps_side_by_side_saved_before_their_layers_were_recorded():
    """head.json of an older featcache recorded the first tap's layer only: main first is
    the cache's own output, later taps their names; main after the first is refused."""
    from featcache.errors import CacheError
    from featcache.heads.runs import head_settings

    settings = {"backbone": "mobilenet", "weights": "none", "image_size": [64, 64],
                "pooling": "avg", "layer": "", "feature_dim": 1280}  # fmt: skip
    old = {"cache_settings": settings, "caches": ["c.h5", "c.h5"], "feature_dim": 1280}
    assert head_settings({**old, "tap": "main+conv_pw_11_relu"}).layer == "main+conv_pw_11_relu"
    tapped = {**old, "cache_settings": {**settings, "layer": "conv_pw_5_relu", "feature_dim": 768}}
    assert head_settings({**tapped, "tap": "conv_pw_5_relu+conv_pw_11_relu"}).layer == (
        "conv_pw_5_relu+conv_pw_11_relu"
    )
    with pytest.raises(CacheError, match=r"did not record the layer of main .*: train it again"):
        head_settings({**tapped, "tap": "conv_pw_5_relu+main"})


def test_a_cache_without_taps_is_written_as_before(class_folder, tmp_path):
    from featcache import extract

    cache = tmp_path / "c.h5"
    extract(
        class_folder, output=cache, backbone="vgg16", weights="none", image_size=32, progress=False
    )
    with h5py.File(cache, "r") as handle:
        assert "taps" not in handle and "taps" not in handle.attrs
    assert open_cache(cache).taps == []
    with pytest.raises(Exception, match="no tap 'x'; the cache has main"):
        open_cache(cache).tap("x")


def test_hf_datasets_loads_each_tap_as_a_nested_column(tapped, tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra)")
    _, _, cache = tapped
    loaded = datasets.load_dataset(
        "hdf5", data_files=str(cache), split="train", cache_dir=str(tmp_path / "hf")
    )
    reader = open_cache(cache)
    assert loaded.num_rows == len(reader)
    for name in reader.taps:
        got = np.asarray([row[name] for row in loaded["taps"]], np.float32)
        np.testing.assert_array_equal(got, reader.tap(name).features())


def test_export_features_writes_a_tap(tapped, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the export extra)")
    _, _, cache = tapped
    out = tmp_path / "t.parquet"
    _ok(CliRunner(), "export-features", cache, "--tap", "conv_pw_3_relu", "-o", out, "-q")
    table = pq.read_table(out)
    got = np.asarray(table.column("features").to_pylist(), np.float32)
    np.testing.assert_array_equal(got, open_cache(cache).tap("conv_pw_3_relu").features())
    assert json.loads(table.schema.metadata[b"featcache"])["settings"]["layer"] == "conv_pw_3_relu"


@pytest.mark.xdist_group("ray")  # with tests/test_ray.py: one local Ray instance at a time
def test_the_ray_engine_writes_the_local_engines_taps(class_folder, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
    from featcache import RayOptions, extract

    tiny = {"backbone": "vgg16", "weights": "none", "image_size": 32, "progress": False}
    extract(class_folder, output=tmp_path / "local.h5", taps="auto", views=2, augment="flip",
            **tiny)  # fmt: skip
    extract(class_folder, output=tmp_path / "ray.h5", taps="auto", engine="ray",
            ray_options=RayOptions(actors=1), views=2, augment="flip", **tiny)  # fmt: skip
    local, ray = open_cache(tmp_path / "local.h5"), open_cache(tmp_path / "ray.h5")
    assert ray.taps == local.taps and len(local.taps) == 4
    assert ray.paths == local.paths
    np.testing.assert_allclose(ray.features(), local.features(), rtol=1e-5, atol=1e-5)
    for name in local.taps:
        np.testing.assert_allclose(
            ray.tap(name).features(), local.tap(name).features(), rtol=1e-5, atol=1e-5
        )
    np.testing.assert_allclose(ray.view_features(), local.view_features(), rtol=1e-5, atol=1e-5)
    assert local.view_features().shape == (len(local), 2, local.feature_dim)


def test_extract_dataset_on_a_server_writes_the_local_taps(tmp_path):
    pytest.importorskip("grpc", reason="the serve extra")
    from featcache import ServeOptions, extract, start_server
    from featcache.service.client import Client
    from helpers import make_class_folder

    make_class_folder(tmp_path / "data" / "set")
    (tmp_path / "cache").mkdir()
    tiny = {"weights": "none", "image_size": 32}
    local = tmp_path / "local.h5"
    extract(tmp_path / "data" / "set", backbone="vgg16", output=local, taps="auto",
            progress=False, **tiny)  # fmt: skip
    served = ServeOptions(port=0, data_root=str(tmp_path / "data"),
                          cache_root=str(tmp_path / "cache"))  # fmt: skip
    server = start_server(served)
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            steps = list(client.extract_dataset("set", "vgg16", output="s.h5", taps="auto", **tiny))
            assert steps[-1].finished and steps[-1].feature_dim == 512
            plain = client.embed([tmp_path / "data" / "set" / "class_0" / "img_0.png"],
                                 "vgg16", **tiny)  # fmt: skip
    finally:
        server.stop(0)
    ours, theirs = open_cache(local), open_cache(tmp_path / "cache" / "s.h5")
    assert theirs.taps == ours.taps and len(ours.taps) == 4 and theirs.paths == ours.paths
    for name in ours.taps:
        np.testing.assert_allclose(
            theirs.tap(name).features(), ours.tap(name).features(), atol=1e-5
        )
    row = ours.paths.index("class_0/img_0.png")
    np.testing.assert_allclose(np.asarray(plain)[0], ours.features()[row], atol=1e-5)


def test_gem_pooling_is_the_generalized_mean_and_exports(class_folder, tmp_path):
    from featcache import extract, train_head
    from featcache.backbones.backbone import FeatureExtractor, resolve_backbone
    from featcache.core.settings import BackboneConfig
    from featcache.heads.endtoend import export, load_model

    tiny = {"backbone": "vgg16", "weights": "none", "image_size": 32}
    cache = tmp_path / "gem.h5"
    extract(class_folder, output=cache, pooling="gem", taps="block4_conv3", progress=False, **tiny)
    reader = open_cache(cache)
    inner = BackboneConfig(**tiny, pooling="none", layer="block4_conv3")
    flat = FeatureExtractor(resolve_backbone(inner))
    from featcache.extractor.decode import resize_image

    images = [decode_image((class_folder / p).read_bytes()) for p in reader.paths]
    inputs = np.stack([resize_image(i, (32, 32), "stretch") for i in images])
    maps = flat(inputs).reshape(len(inputs), 16, 512)  # block4_conv3: 4x4 at 32 px
    expected = np.mean(np.maximum(maps, 1e-6) ** 3, axis=1) ** (1 / 3)
    tap = reader.tap("block4_conv3")
    np.testing.assert_allclose(tap.features(), expected, rtol=1e-4, atol=1e-5)
    assert reader.tap_info["block4_conv3"].pooling == "gem"
    run = train_head(cache, head="logreg", tap="block4_conv3", output=tmp_path / "run").run_dir
    model, _, _ = load_model(export(run, tmp_path / "m.keras"))
    proba = load_head(run).predict_proba(tap.features())
    for image, row in zip(images, proba):
        got = np.asarray(model(image[None].astype(np.float32)))[0]
        np.testing.assert_allclose(got, row, atol=1e-4)
