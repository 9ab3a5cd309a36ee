"""Export, prediction on images and fine-tuning: real models on tiny real image folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from featcache import extract, read_cache
from featcache.cli import main
from featcache.errors import InvalidOptionError, SettingsMismatchError
from featcache.extractor.decode import decode_image
from featcache.heads.train import load_head, train_head
from helpers import TINY, make_class_folder, write_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A class folder, its crop-resized cache and a dense head trained on it."""
    root = tmp_path_factory.mktemp("finetune")
    data = make_class_folder(root / "data", classes=3, per_class=6)
    cache = root / "c.h5"
    extract(data, output=cache, resize="crop", split="0.6,0.2,0.2", **TINY)
    run = root / "head"
    train_head(cache, head="dense", hidden=(16,), epochs=5, output=run)
    return root, data, cache, run


def test_export_equals_the_head_on_cached_features(setup):
    from featcache.heads.endtoend import export, load_model

    root, data, cache, run = setup
    out = export(run, root / "model.keras")
    model, names, classes = load_model(out)
    cached = read_cache(cache)
    expected = load_head(run).predict_proba(cached.features)
    for path, row in zip(cached.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)  # original size
        got = np.asarray(model(pixels[None]))[0]
        np.testing.assert_allclose(got, row, atol=1e-4)
    assert names == [f"class_{c}" for c in classes]
    saved = export(run, root / "saved", format="savedmodel")
    assert (saved / "saved_model.pb").is_file()
    with pytest.raises(InvalidOptionError, match=r"\.keras"):
        export(run, root / "model.h5")


def test_scikit_learn_heads_cannot_be_exported(setup):
    from featcache.heads.endtoend import export

    root, _, cache, _ = setup
    train_head(cache, head="logreg", output=root / "logreg")
    with pytest.raises(InvalidOptionError, match="head 'dense'"):
        export(root / "logreg", root / "logreg.keras")


def test_predict_on_files_folders_globs_and_bad_files(setup, tmp_path, monkeypatch):
    from featcache.heads.images import predict_images

    root, data, _, run = setup
    (data / "class_1" / "broken.png").write_bytes(b"not a png")
    try:
        model = root / "predict.keras"
        CliRunner().invoke(main, ["export", str(run), "-o", str(model)])
        folder = predict_images(model, str(data), tmp_path / "p.csv")
        assert len(folder) == 19
        bad = [r for r in folder if r.error]
        assert [r.path.rsplit("/", 1)[-1] for r in bad] == ["broken.png"]
        assert bad[0].error.startswith("not an image")
        rows = list(csv.DictReader(open(tmp_path / "p.csv")))
        assert len(rows) == 19 and rows[0]["class"].startswith("class_")
        assert abs(sum(float(t.split(":")[1]) for t in rows[0]["top_k"].split("|")) - 1) < 1e-3
        globbed = predict_images(model, str(data / "class_0" / "*.png"), None)
        assert len(globbed) == 3
        single = predict_images(run, str(data / "class_0" / "img_0.png"), None, top_k=1)
        by_path = {r.path: r for r in folder}
        assert single[0].top[0][0] == by_path[single[0].path].top[0][0]
        assert abs(single[0].top[0][1] - by_path[single[0].path].top[0][1]) < 1e-4
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["predict", str(model), str(data / "class_2")])
        assert result.exit_code == 0, result.output
        assert "6 images classified, 0 bad" in result.output
        result = CliRunner().invoke(main, ["predict", str(model), str(tmp_path / "none*.png")])
        assert result.exit_code == 2 and result.output.startswith("error:")
    finally:
        (data / "class_1" / "broken.png").unlink()


def test_fine_tune_trains_exactly_the_unfrozen_layers(setup, tmp_path):
    import keras

    from featcache.heads.endtoend import build, load_model
    from featcache.heads.finetune import fine_tune

    _, _, cache, run = setup
    before = {
        layer.name: [w.copy() for w in layer.get_weights()] for layer in build(run).backbone.layers
    }
    result = fine_tune(
        cache, run, output=tmp_path / "ft", unfreeze=2, lr=1e-3, epochs=4, batch_size=4, patience=4
    )
    report = result.report
    assert report["unfrozen_layers"] == ["block5_conv3"]  # block5_pool has no weights
    for name in ("model.keras", "report.json", "history.csv", "history.png", "confusion.png"):
        assert (tmp_path / "ft" / name).is_file()
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(report["test"])
    assert (
        report["head_only"]["test"]
        == json.loads((run / "report.json").read_text())["test"]["accuracy"]
    )
    history = list(csv.DictReader(open(tmp_path / "ft" / "history.csv")))
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    model, _, _ = load_model(tmp_path / "ft" / "model.keras")
    after = {
        layer.name: layer.get_weights() for layer in model.layers if layer.name.startswith("block")
    }
    if not after:  # the backbone is one nested layer
        nested = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        after = {layer.name: layer.get_weights() for layer in nested.layers}
    changed = {
        name
        for name, weights in after.items()
        if name in before and any(not np.array_equal(a, b) for a, b in zip(weights, before[name]))
    }
    assert changed == {"block5_conv3"}


def test_fine_tune_keeps_batchnorm_statistics_and_skips_changed_files(tmp_path):
    import keras

    from featcache.heads.endtoend import build, load_model
    from featcache.heads.finetune import fine_tune

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    cache = tmp_path / "m.h5"
    extract(
        data, backbone="mobilenet", weights="none", image_size=32, output=cache, progress=False,
        split="0.5,0.25,0.25",
    )  # fmt: skip
    train_head(cache, head="dense", epochs=2, output=tmp_path / "head")
    backbone = build(tmp_path / "head").backbone
    stats = {
        layer.name: [layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()]
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    write_image(data / "class_0" / "img_1.jpg", 1234, fmt="JPEG")  # changed since the cache
    result = fine_tune(
        cache, tmp_path / "head", output=tmp_path / "ft", unfreeze="all", lr=1e-2, epochs=2,
        batch_size=4, augment="flip,zoom",
    )  # fmt: skip
    assert ("class_0/img_1.jpg", "changed since the cache was made") in result.skipped
    model, _, _ = load_model(tmp_path / "ft" / "model.keras")
    found = 0
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name in stats:
            np.testing.assert_array_equal(layer.moving_mean.numpy(), stats[layer.name][0])
            np.testing.assert_array_equal(layer.moving_variance.numpy(), stats[layer.name][1])
            found += 1
    assert found == len(stats) > 10


def test_a_changed_weights_file_is_refused(tmp_path):
    import keras

    from featcache.heads.endtoend import export

    weights = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cache = tmp_path / "w.h5"
    extract(data, backbone="vgg16", weights=str(weights), image_size=32, output=cache,
            progress=False, split="0.5,0.25,0.25")  # fmt: skip
    train_head(cache, head="dense", epochs=1, output=tmp_path / "head")
    keras.utils.set_random_seed(7)
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    with pytest.raises(SettingsMismatchError, match="changed since the cache was made") as refused:
        export(tmp_path / "head", tmp_path / "m.keras")
    assert "with other contents (SHA-256 differs) (now)" in str(refused.value)
    result = CliRunner().invoke(
        main, ["fine-tune", str(cache), "--head", str(tmp_path / "head"), "--epochs", "1"]
    )
    assert result.exit_code == 2 and "changed since the cache was made" in result.output


def test_fine_tune_arrays_without_a_val_split_and_refuses_other_classes(tmp_path, setup):
    from featcache.errors import DatasetError
    from featcache.heads.finetune import fine_tune

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 36, 36, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.arange(24) % 3)
    cache = tmp_path / "arrays.h5"
    extract(tmp_path / "x.npy", output=cache, split="0.6,0,0.4", resize="crop", **TINY)
    train_head(cache, head="dense", epochs=2, output=tmp_path / "head")
    result = fine_tune(cache, tmp_path / "head", output=tmp_path / "ft", epochs=1, batch_size=8)
    report = result.report
    assert report["rows"]["val"] > 0  # carved from train as train-head did
    assert report["rows"]["train"] + report["rows"]["val"] + report["rows"]["test"] == 24
    assert len(report["unfrozen_layers"]) == 13  # the default 20 is more than VGG16 has
    _, _, other_cache, _ = setup  # classes class_0..2, the arrays' classes are 0..2
    with pytest.raises(DatasetError, match="classes"):
        fine_tune(other_cache, tmp_path / "head", output=tmp_path / "x", epochs=1)


def test_export_of_a_saved_model_backbone_and_a_float16_cache(tmp_path):
    import keras

    from featcache.heads.endtoend import export, load_model

    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    keras.Model(inputs, keras.layers.Conv2D(16, 3, name="top")(x)).save(tmp_path / "net.keras")
    data = make_class_folder(tmp_path / "data", classes=2, per_class=5)
    cache = tmp_path / "f16.h5"
    extract(data, backbone=str(tmp_path / "net.keras"), output=cache, dtype="float16",
            split="0.6,0.2,0.2", resize="pad", progress=False)  # fmt: skip
    train_head(cache, head="dense", epochs=2, standardize=True, output=tmp_path / "head")
    model, _, _ = load_model(export(tmp_path / "head", tmp_path / "m.keras"))
    cached = read_cache(cache)
    expected = load_head(tmp_path / "head").predict_proba(cached.features)
    for path, row in zip(cached.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(pixels[None]))[0], row, atol=1e-4)


def test_fine_tune_options_are_checked_first_and_name_the_parameter(setup, tmp_path):
    from featcache.heads.finetune import fine_tune
    from featcache.heads.options import FineTuneOptions

    _, _, cache, run = setup
    for values, parameter in (
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"unfreeze": "some"}, "unfreeze"),
        ({"augment": "flip,blur"}, "augment"),
    ):
        with pytest.raises(InvalidOptionError, match=f"^{parameter} ") as refused:
            fine_tune(cache, run, output=tmp_path / "ft", **values)
        assert refused.value.parameter == parameter
        with pytest.raises(InvalidOptionError, match=f"^{parameter} "):
            FineTuneOptions(**values)
    assert not (tmp_path / "ft").exists()
    options = FineTuneOptions(epochs=1, batch_size=8, unfreeze=0)
    result = fine_tune(cache, run, output=tmp_path / "ft", options=options, unfreeze="all")
    assert result.report["params"]["epochs"] == 1 and result.report["params"]["unfreeze"] == "all"


def test_cache_row_paths_read_back_from_the_dataset(tmp_path):
    from featcache.extractor.sources import array_row_path, item_from_path, open_source

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.save(tmp_path / "x.npy", images)
    path = array_row_path("x.npy", 1)
    assert path == "x.npy#1" and item_from_path(path).index == 1
    content, _ = open_source(tmp_path / "x.npy").read(item_from_path(path))
    np.testing.assert_array_equal(content, images[1])
    write_image(tmp_path / "d" / "a#2.png", 0)  # a file name with a mark is still a file
    assert item_from_path("a#2.png").index == -1
    data, _ = open_source(tmp_path / "d").read(item_from_path("a#2.png"))
    assert data == (tmp_path / "d" / "a#2.png").read_bytes()
