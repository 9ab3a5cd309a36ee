"""Export, prediction on images and fine-tuning: real models on tiny real image folders."""

from __future__ import annotations

import csv
import json
import shutil

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
    # --test-views mirror: the mean of the model on each image and on its mirror image
    result = CliRunner().invoke(
        main, ["export", str(run), "-o", str(root / "mirror.keras"), "--test-views", "mirror"]
    )
    assert result.exit_code == 0, result.output
    mirrored, _, _ = load_model(root / "mirror.keras")
    from featcache.heads.images import load_classifier

    prepare = load_classifier(out).prepare  # at the model's size: the mirror follows resizing
    for path in cached.paths[:4]:
        pixels = prepare((data / path).read_bytes())[None]
        expected = (np.asarray(model(pixels)) + np.asarray(model(pixels[:, :, ::-1].copy()))) / 2
        np.testing.assert_allclose(np.asarray(mirrored(pixels)), expected, atol=1e-5)
    result = CliRunner().invoke(main, ["export", str(run), "-o", "x.keras", "--test-views", "up"])
    assert result.exit_code == 2 and "--test-views" in result.output
    with pytest.raises(InvalidOptionError, match=r"\.keras"):
        export(run, root / "model.h5")


def test_non_linear_scikit_learn_heads_cannot_be_exported(setup):
    from featcache.heads.endtoend import export

    root, _, cache, _ = setup
    train_head(cache, head="knn", k=3, output=root / "knn")
    with pytest.raises(InvalidOptionError, match=r"knn head cannot be one Keras model.*logreg"):
        export(root / "knn", root / "knn.keras")
    assert not (root / "knn.keras").exists()


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
        with pytest.raises(InvalidOptionError, match="--overwrite"):  # before the model loads
            predict_images(root / "no-model.keras", str(data), tmp_path / "p.csv")
        again = predict_images(model, str(data / "class_0"), tmp_path / "p.csv", overwrite=True)
        assert len(again) == 6 and len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 6
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["predict", str(model), str(data / "class_2")])
        assert result.exit_code == 0, result.output
        assert "6 images classified, 0 bad" in result.output
        written = (tmp_path / "predictions.csv").read_text()
        result = CliRunner().invoke(main, ["predict", str(model), str(data / "class_0")])
        assert result.exit_code == 2 and "--overwrite" in result.output, result.output
        assert (tmp_path / "predictions.csv").read_text() == written
        args = ["predict", str(model), str(data / "class_0"), "--overwrite"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "6 images classified" in result.output, result.output
        result = CliRunner().invoke(main, ["predict", str(model), str(tmp_path / "none*.png")])
        assert result.exit_code == 2 and result.output.startswith("error:")
    finally:
        (data / "class_1" / "broken.png").unlink()


def test_predict_with_fine_tune_saved_models_warns_nothing(setup, tmp_path):
    """export -> the model saved as fine-tune saves it now, and as it did before issue 26
    (input and output in lists of one) -> predict: the same classes, and no Keras
    "structure of inputs doesn't match" warning per batch."""
    import warnings

    import keras

    from featcache.heads.endtoend import export, load_model
    from featcache.heads.finetune import _uncompiled
    from featcache.heads.images import predict_images

    _, data, _, run = setup
    exported = export(run, tmp_path / "exported.keras")
    model, _, _ = load_model(exported)
    _uncompiled(model).save(tmp_path / "tuned.keras")
    keras.Model(model.inputs, model.outputs, name=model.name).save(tmp_path / "old.keras")
    got = {}
    for name in ("exported", "tuned", "old"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = predict_images(tmp_path / f"{name}.keras", str(data), None, batch_size=4)
        assert not [w for w in caught if "structure" in str(w.message)], name
        got[name] = [(r.path, r.top[0][0]) for r in rows]
    assert got["exported"] == got["tuned"] == got["old"] and len(got["old"]) == 18


def test_fine_tune_trains_exactly_the_unfrozen_layers(setup, tmp_path):
    import keras

    from featcache.heads.endtoend import build, load_model
    from featcache.heads.finetune import fine_tune

    _, _, cache, run = setup
    before = {
        layer.name: [w.copy() for w in layer.get_weights()] for layer in build(run).backbone.layers
    }
    result = fine_tune(
        cache, run, output=tmp_path / "ft", unfreeze=2, lr=1e-3, epochs=4, batch_size=4,
        patience=4, schedule="fixed",
    )  # fmt: skip
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
        batch_size=4, augment="flip,zoom", schedule="fixed",
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
    result = fine_tune(
        cache, tmp_path / "head", output=tmp_path / "ft", epochs=1, batch_size=8, schedule="fixed"
    )
    report = result.report
    assert report["rows"]["val"] > 0  # carved from train as train-head did
    assert report["rows"]["train"] + report["rows"]["val"] + report["rows"]["test"] == 24
    assert len(report["unfrozen_layers"]) == 13  # fixed's 20 is more than VGG16 has
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
        ({"schedule": "slow"}, "schedule"),
        ({"image_size": 0}, "image_size"),
        ({"balance": "oversample"}, "balance"),
        ({"warmup": 1.0}, "warmup"),
        ({"lr_decay": 0.0}, "lr_decay"),
        ({"schedule": "fixed", "augment": "rotate90"}, "augment"),
        ({"schedule": "fixed", "image_size": 64}, "image_size"),
    ):
        with pytest.raises(InvalidOptionError, match=f"^{parameter} ") as refused:
            fine_tune(cache, run, output=tmp_path / "ft", **values)
        assert refused.value.parameter == parameter
        with pytest.raises(InvalidOptionError, match=f"^{parameter} "):
            FineTuneOptions(**values)
    assert not (tmp_path / "ft").exists()
    options = FineTuneOptions(epochs=1, batch_size=8, unfreeze=0, schedule="fixed")
    result = fine_tune(cache, run, output=tmp_path / "ft", options=options, unfreeze="all")
    assert result.report["params"]["epochs"] == 1 and result.report["params"]["unfreeze"] == "all"
    assert result.report["params"]["lr"] == 1e-5  # fixed's default, as before
    assert FineTuneOptions().resolved().lr == 1e-4 and FineTuneOptions().schedule == "auto"


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


def test_auto_schedule_plans_phases_and_rates():
    from featcache.heads.schedule import group_scales, plan_phases, warmup_cosine

    phases = plan_phases(10, 1e-4, 27)
    assert [(p.name, p.units, p.epochs, p.lr) for p in phases] == [
        ("top", 7, 3, 1e-4),
        ("deeper", 27, 7, 1e-4),
    ]
    phases = plan_phases(6, 1e-4, 27, head_epochs=1)
    assert [(p.name, p.units, p.epochs) for p in phases] == [
        ("head", 0, 1),
        ("top", 7, 1),
        ("deeper", 27, 4),
    ]
    assert phases[0].lr == pytest.approx(1e-3) and phases[2].lr == 1e-4
    assert [(p.name, p.epochs) for p in plan_phases(2, 1e-4, 27)] == [("top", 1), ("deeper", 1)]
    assert [(p.name, p.units) for p in plan_phases(1, 1e-4, 2)] == [("deeper", 2)]
    assert [(p.name, p.epochs) for p in plan_phases(5, 1e-4, 0)] == [("head", 5)]
    assert [(p.name, p.units) for p in plan_phases(3, 1e-4, 1)] == [("deeper", 1)]
    scales = group_scales(8, 0.5)
    assert scales == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    rate = warmup_cosine(1e-3, 100, 0.1)  # 10 warm-up steps, the first already at 1/10
    values = [float(rate(step)) for step in (0, 4, 9, 55, 100)]
    assert values[0] == pytest.approx(1e-4) and values[1] == pytest.approx(5e-4)
    assert values[2] == pytest.approx(1e-3)
    assert values[3] == pytest.approx(1e-3 * (1 + np.cos(np.pi * 46 / 91)) / 2, rel=1e-4)
    assert values[4] == pytest.approx(0, abs=1e-9)
    tiny = warmup_cosine(1e-3, 2, 0.1)  # one warm-up step: no step of a tiny phase at rate 0
    assert float(tiny(0)) == pytest.approx(1e-3) and float(tiny(1)) == pytest.approx(5e-4)
    assert float(warmup_cosine(1e-3, 100, 0.0)(0)) == pytest.approx(1e-3)


def test_layerwise_optimizer_scales_each_variables_step():
    import keras

    from featcache.heads.schedule import layerwise_optimizer

    top, bottom = keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(3, "float32"))
    optimizer = layerwise_optimizer("adam", 1e-2, {id(bottom): 0.25})
    gradient = np.array([1.0, -2.0, 0.5], "float32")
    optimizer.apply_gradients([(gradient, top), (gradient, bottom)])
    step_top, step_bottom = np.asarray(top), np.asarray(bottom)
    np.testing.assert_allclose(step_top, -1e-2 * np.sign(gradient), rtol=1e-3)  # Adam's first
    np.testing.assert_allclose(step_bottom, 0.25 * step_top, rtol=1e-5)


def test_augmentations_are_seeded_per_key_and_keep_the_image():
    import tensorflow as tf

    from featcache.heads.augment import augment_function

    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (24, 24, 3)).astype("float32"))
    every = "flip,vflip,rotate90,crop,zoom,contrast,brightness,rotate,translate"
    augment = augment_function(every, 3, (24, 24))
    key = tf.constant([1, 5], tf.int64)
    first, again = augment(image, key), augment(image, key)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    other = augment(image, tf.constant([2, 5], tf.int64))  # the next epoch draws anew
    assert first.shape == (24, 24, 3) and not np.array_equal(first.numpy(), other.numpy())
    assert 0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 255
    turns = augment_function("rotate90", 3, (24, 24))
    seen = set()
    for row in range(12):
        out = turns(image, tf.constant([0, row], tf.int64)).numpy()
        match = [k for k in range(4) if np.array_equal(out, np.rot90(image.numpy(), k))]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 1
    tall = tf.constant(rng.integers(0, 256, (24, 16, 3)).astype("float32"))
    for row in range(6):  # not square: half turns only, the shape stays
        out = augment_function("rotate90", 3, (24, 16))(tall, tf.constant([0, row], tf.int64))
        assert out.shape == (24, 16, 3)
    # an augmentation is seeded by its name, not its place: one put before crop (a flip,
    # which changes nothing on a mirror-symmetric image) leaves crop's draws as they were
    half = rng.integers(0, 256, (24, 12, 3)).astype("float32")
    mirrored = tf.constant(np.concatenate([half, half[:, ::-1]], axis=1))
    for row in range(4):
        key = tf.constant([1, row], tf.int64)
        alone = augment_function("crop", 3, (24, 24))(mirrored, key).numpy()
        after_flip = augment_function("flip,crop", 3, (24, 24))(mirrored, key).numpy()
        np.testing.assert_array_equal(alone, after_flip)
    key = tf.constant([1, 5], tf.int64)
    # one augmentation's draws do not depend on the others chosen with it
    alone = augment_function("crop", 3, (24, 24))(image, key)
    with_flip_after = augment_function("crop,flip", 3, (24, 24))(image, key).numpy()
    assert np.array_equal(alone.numpy(), with_flip_after) or np.array_equal(
        alone.numpy()[:, ::-1], with_flip_after
    )


def _coloured_folder(root, per_class=10):
    """Three classes told apart by their colour (red, green, blue), with noise."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for k in range(3):
        for i in range(per_class):
            pixels = rng.integers(0, 90, (36, 36, 3))
            pixels[..., k] += 150
            folder = root / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def coloured(tmp_path_factory):
    """A colour-coded cache (random VGG16 at 32 px) and a head that learned nothing yet."""
    root = tmp_path_factory.mktemp("coloured")
    data = _coloured_folder(root / "data")
    cache = root / "c.h5"
    # the hash split these tests were written on (the stratified one makes the trained head
    # of test_auto_augments... so sure of one val image that float32 rounds its p to 0)
    extract(data, output=cache, split="0.5,0.25,0.25", split_method="hash", **TINY)
    run = root / "head"
    train_head(cache, head="dense", hidden=(8,), epochs=1, lr=1e-7, output=run)
    return root, data, cache, run


def test_auto_keeps_the_best_phase_and_reports_every_phase(coloured, tmp_path):
    from featcache.heads.endtoend import build, load_model

    _, _, cache, run = coloured
    before = {layer.name: layer.get_weights() for layer in build(run).backbone.layers}
    # through the CLI, as a user's script runs it: --json prints the report and nothing else
    args = ["fine-tune", str(cache), "--head", str(run), "-o", str(tmp_path / "ft")]
    args += ["--epochs", "4", "--batch-size", "4", "--lr", "1e-3", "--balance", "none", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads((tmp_path / "ft" / "report.json").read_text())
    assert report["schedule"] == "auto" and report["params"]["unfreeze"] == "all"
    assert report["params"]["balance"] == "none" and report["class_weight"] is None
    phases = report["phases"]
    assert [p["name"] for p in phases] == ["head-only", "top", "deeper"]
    assert [p["epochs_run"] for p in phases[1:]] == [len(p["val_accuracy"]) for p in phases[1:]]
    head_val = phases[0]["val_accuracy"][0]
    assert report["head_only"]["val_on_images"] == head_val  # and "val": the cached features'
    assert report["head_only"]["measured_on"].startswith("cached features")
    assert head_val == report["val"]["accuracy"] or report["exported"] == "fine-tuned"
    assert report["exported"] == "fine-tuned" and report["beat_head_on_val"]
    best = report["best"]
    assert best["selected_by"] == "val_accuracy" and best["score"] == best["val_accuracy"]
    assert all(len(p["val_balanced_accuracy"]) == len(p["val_accuracy"]) for p in phases)
    assert best["val_accuracy"] > head_val
    assert best["val_accuracy"] == pytest.approx(
        max(v for p in phases[1:] for v in p["val_accuracy"]), abs=1e-6
    )
    assert report["val"]["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert {"test_accuracy", "test_balanced_accuracy", "minority_classes"} <= set(report)
    assert {c["class"] for c in report["test"]["per_class"]} == {"c0", "c1", "c2"}
    model, _, _ = load_model(tmp_path / "ft" / "model.keras")
    nested = next(layer for layer in model.layers if layer.name.startswith("featcache_"))
    changed = {
        layer.name
        for layer in nested.layers
        if layer.get_weights()
        and any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before[layer.name]))
    }
    assert changed == set(report["kept_layers"])  # the kept phase's layers, nothing else
    import keras

    import featcache.heads.layers  # noqa: F401  (registers the custom layers, as docs/commands.md says)

    plain = keras.models.load_model(tmp_path / "ft" / "model.keras")  # no training optimizer
    assert getattr(plain, "optimizer", None) is None
    weights_bytes = 4 * plain.count_params()
    assert (tmp_path / "ft" / "model.keras").stat().st_size < 1.2 * weights_bytes  # no moments
    assert len(report["unfrozen_layers"]) == 13  # every VGG16 layer with weights, at most
    assert phases[1]["layers"] == 3  # the top quarter of VGG16's 13 layers with weights
    if best["phase"] == "top":
        assert len(changed) == 3


def test_auto_fallback_on_a_bfloat16_cache_is_the_model_phase_0_scored(tmp_path):
    from featcache.heads.finetune import fine_tune

    data = _coloured_folder(tmp_path / "data")
    cache = tmp_path / "bf16.h5"
    extract(data, output=cache, split="0.5,0.25,0.25", precision="bfloat16", **TINY)
    train_head(cache, head="dense", hidden=(8,), epochs=1, lr=1e-7, output=tmp_path / "head")
    report = fine_tune(
        cache, tmp_path / "head", output=tmp_path / "ft", epochs=1, batch_size=8, lr=1e-12
    ).report
    assert report["exported"] == "head-only"
    assert report["model_precision"] == "bfloat16" and report["cache_precision"] == "bfloat16"
    assert report["precision"] == "float32"  # what training ran in, as before
    # val of the saved (bfloat16) head-only model, one view, is exactly what phase 0 scored
    views = report["test_views"]
    one_view = views.get("one_view_val", views["val"])["accuracy"]
    assert one_view == pytest.approx(report["phases"][0]["val_accuracy"][0], abs=1e-4)
    if views["chosen"] == "none":
        assert report["val"]["accuracy"] == report["phases"][0]["val_accuracy"][0]


def test_auto_weighs_imbalanced_classes_and_reports_the_minority(tmp_path):
    from featcache.heads.finetune import fine_tune
    from featcache.heads.finetune_phases import class_weights

    columns = np.array([0] * 8 + [1] * 4 + [2] * 2)
    weights = class_weights(columns, 3, "weights")
    assert weights == pytest.approx({0: 14 / 24, 1: 14 / 12, 2: 14 / 6})
    assert class_weights(columns, 3, "auto") is None  # auto balances by sampling
    assert class_weights(np.array([0, 1, 2]), 3, "weights") == {0: 1.0, 1: 1.0, 2: 1.0}
    assert class_weights(columns, 3, "none") is None
    data = _coloured_folder(tmp_path / "data")
    for i in range(2, 10):  # c2 keeps 2 images: the minority
        (data / "c2" / f"{i}.png").unlink()
    cache = tmp_path / "c.h5"
    extract(data, output=cache, split="0.6,0.2,0.2", **TINY)
    train_head(cache, head="dense", hidden=(8,), epochs=1, output=tmp_path / "head")
    report = fine_tune(
        cache, tmp_path / "head", output=tmp_path / "ft", epochs=1, batch_size=8, unfreeze=0,
        balance="weights",
    ).report  # fmt: skip
    assert report["class_weight"] is not None
    assert report["class_weight"]["2"] > report["class_weight"]["0"]
    minority = report["minority_classes"]
    assert [m["class"] for m in minority] == ["c2"]
    recall = {c["class"]: c["recall"] for c in report["test"]["per_class"]}
    assert minority[0]["test_recall"] == recall["c2"] and minority[0]["train_rows"] >= 1
    assert [p["name"] for p in report["phases"]] == ["head-only", "head"]  # unfreeze 0
    # classes weighted: the best epoch is chosen on val balanced accuracy, reported per epoch
    best = report["best"]
    assert best["selected_by"] == "val_balanced_accuracy"
    phases = report["phases"]
    epochs = [e for p in phases for e in zip(p["val_accuracy"], p["val_balanced_accuracy"])]
    head = epochs[0]  # no epoch below the head on either figure is kept (no trade)
    kept = [b for a, b in epochs if a >= head[0] - 1e-6 and b >= head[1] - 1e-6]
    assert len(epochs) == 2 and best["score"] == pytest.approx(max(kept), abs=1e-6)
    assert report["trade"] is None and report["balance"] == {"asked": "weights", "used": "weights"}
    assert report["val"]["balanced_accuracy"] == pytest.approx(best["score"], abs=1e-6)


def test_auto_trains_at_a_larger_image_size(coloured, tmp_path):
    from featcache.heads.endtoend import build, load_model
    from featcache.heads.finetune import fine_tune

    _, _, cache, run = coloured
    assert build(run, image_size=48).image_size == (48, 48)
    report = fine_tune(
        cache, run, output=tmp_path / "ft", epochs=2, batch_size=4, lr=1e-3, image_size=48,
        unfreeze=2,
    ).report  # fmt: skip
    # the re-fit head at 48 px alone (no layer kept) or with the backbone's top layers
    assert report["exported"] == "fine-tuned"
    assert bool(report["kept_layers"]) == (report["best"]["phase"] != "head")
    assert report["image_size"] == [48, 48] and report["params"]["image_size"] == 48
    # the head learned on 32 px features: it is re-fit on 48 px features first
    assert [p["name"] for p in report["phases"]] == ["head-only", "head", "deeper"]
    model, _, _ = load_model(tmp_path / "ft" / "model.keras")
    resize = model.get_layer("resize")
    assert (resize.height, resize.width) == (48, 48)  # what it trained and is saved at
    nested = next(layer for layer in model.layers if layer.name.startswith("featcache_"))
    assert nested.input_shape[1:3] == (48, 48)


def test_image_size_needs_size_free_features(tmp_path):
    from featcache.heads.endtoend import build

    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cache = tmp_path / "n.h5"
    extract(data, backbone="vgg16", weights="none", image_size=32, pooling="none",
            output=cache, progress=False, split="0.5,0.25,0.25")  # fmt: skip
    train_head(cache, head="dense", epochs=1, output=tmp_path / "head")
    with pytest.raises(InvalidOptionError, match=r"^image_size 64: the features would have"):
        build(tmp_path / "head", image_size=64)


def test_auto_exports_the_head_when_fine_tuning_cannot_beat_it(coloured, tmp_path):
    """fine-tune on the CLI at a rate too small to learn: the head is exported as it came
    (averaged over the test views auto kept), the summary says so; an earlier run's -o
    folder is refused without --overwrite, replaced with it; bad options are one line each."""
    from featcache.heads.endtoend import export, load_model, with_test_views

    _, data, cache, run = coloured
    head = tmp_path / "head"  # a copy of the head whose test accuracy is exactly 0
    shutil.copytree(run, head)
    head_report = json.loads((head / "report.json").read_text())
    head_report["test"]["accuracy"] = 0.0
    (head / "report.json").write_text(json.dumps(head_report))
    out = tmp_path / "ft"  # a folder an earlier run left
    out.mkdir()
    (out / "report.json").write_text("{}")
    args = ["fine-tune", str(cache), "--head", str(head), "-o", str(out)]
    again = CliRunner().invoke(main, args)  # refused before any work, the folder as it was
    assert again.exit_code == 2 and "--overwrite" in again.output, again.output
    assert (out / "report.json").read_text() == "{}"
    args.append("--overwrite")
    result = CliRunner().invoke(
        main, [*args, "--epochs", "1", "--batch-size", "4", "--lr", "1e-12"]
    )
    assert result.exit_code == 0, result.output
    assert "phase head-only" in result.output and "plan: " in result.output
    assert "(head-only (fallback), model.keras as predict runs it) vs 0.000," in result.output
    assert "fine-tuned," not in result.output and "nan" not in result.output
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert report["schedule"] == "auto" and report["phases"][0]["name"] == "head-only"
    assert report["exported"] == "head-only" and not report["beat_head_on_val"]
    assert report["best"]["phase"] == "head-only" and "did not beat the head" in report["note"]
    assert report["kept_layers"] == []
    assert report["val"]["accuracy"] == report["phases"][0]["val_accuracy"][0]
    tuned, _, _ = load_model(tmp_path / "ft" / "model.keras")
    plain, _, _ = load_model(export(run, tmp_path / "head.keras"))
    # the head's model, averaged over the test views auto kept (if any)
    plain = with_test_views(plain, report["test_views"]["chosen"])
    pixels = np.stack([decode_image(p.read_bytes()) for p in sorted(data.glob("c*/*.png"))[:6]])
    np.testing.assert_allclose(
        np.asarray(tuned(pixels.astype("float32"))), np.asarray(plain(pixels.astype("float32")))
    )
    for bad, flag in (
        (["--image-size", "0"], "--image-size"),
        (["--schedule", "fixed", "--augment", "rotate90"], "--augment"),
        (["--warmup", "2"], "--warmup"),
    ):
        result = CliRunner().invoke(main, [*args, *bad])
        assert result.exit_code == 2 and result.output.startswith("error:"), result.output
        assert flag in result.output and len(result.output.strip().splitlines()) == 1


def test_ctrl_c_stops_fine_tuning_at_an_epoch_end_and_saves_the_best_so_far(
    coloured, tmp_path, monkeypatch, capfd
):
    """A user's chain: a head trained, fine-tune started, Ctrl-C at the first epoch's end:
    training stops there, the best model so far is evaluated and saved (exit 130) with a
    report that says so, and predict runs it on the images."""
    import signal
    import threading

    from featcache.heads import finetune_phases

    assert threading.current_thread() is threading.main_thread()  # where signals land
    _, data, cache, run = coloured
    real, pressed = finetune_phases._keep_best, []

    def keep_best_then_press(model, best, phase_run, patience, select):
        callback = real(model, best, phase_run, patience, select)
        keep = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            keep(epoch, logs)
            if not pressed:
                pressed.append(phase_run.phase.name)
                signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C

        callback.on_epoch_end = on_epoch_end
        return callback

    monkeypatch.setattr(finetune_phases, "_keep_best", keep_best_then_press)
    # as in a terminal: a pytest started in the background (`&`) inherits SIGINT ignored,
    # and fine-tune rightly leaves an ignored SIGINT alone
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "ft"
    args = ["fine-tune", str(cache), "--head", str(run), "-o", str(out),
            "--batch-size", "4", "--lr", "1e-3", "--balance", "none"]  # fmt: skip
    try:
        result = CliRunner().invoke(main, args)
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert result.exit_code == 130, result.output
    assert f"interrupted: training stopped early; the best model so far is in {out}" in (
        result.output
    )
    assert "stopping at the end of this epoch" in capfd.readouterr().err
    assert after is before  # fine-tune's handler removed
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_early"] is True and report["epochs_run"] == 1
    first, second = report["plan"]["phases"][:2]  # a phase's last epoch cuts nothing there
    cut = [] if first["epochs"] == 1 else ["Ctrl-C: stopped after epoch 1 of this phase"]
    notes = [n for n in report["plan"]["notes"] if n.startswith("Ctrl-C")]
    assert notes == [*cut, f"Ctrl-C: phases from {second['name']} on skipped"]
    assert [p["name"] for p in report["phases"]][1:] == pressed
    assert report["recipe"]["epochs"]["by"] == "Ctrl-C"  # no epochs added while val improves
    listing = tmp_path / "predictions.csv"
    done = CliRunner().invoke(main, ["predict", str(out / "model.keras"), str(data),
                                     "-o", str(listing)])  # fmt: skip
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(listing.open()))
    assert len(rows) == sum(1 for _ in data.rglob("*.png"))


def test_phases_train_only_the_top_layers_and_never_batchnorm():
    import keras

    from featcache.heads.finetune_layers import set_trainable

    backbone = keras.applications.MobileNet(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    units = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    norms = (keras.layers.BatchNormalization,)
    allowed = [u for u in units if u.weights and not isinstance(u, norms)]
    set_trainable(backbone, units, allowed, 3)
    trained = {v.path.split("/")[0] for v in backbone.trainable_weights}
    assert trained == {layer.name for layer in allowed[-3:]} == {
        "conv_dw_13", "conv_pw_13", "conv_pw_12"
    }  # fmt: skip
    set_trainable(backbone, units, allowed, len(allowed))
    assert not any(isinstance(layer, norms) and layer.trainable for layer in units)
    assert len(backbone.trainable_weights) == len(allowed)  # one kernel each, no BN weights
    set_trainable(backbone, units, allowed, 0)
    assert backbone.trainable_weights == []


def _loss(model, labels, data, paths, split, resize, augment=None):
    """Mean cross-entropy of ``model`` on the images of a cache split, decoded and resized to
    32 px as fine-tuning reads them (float32, not rounded), each passed through ``augment``
    first when given."""
    import tensorflow as tf

    from featcache.extractor.decode import decode_and_resize

    pixels = [
        decode_and_resize((data / paths[i]).read_bytes(), (32, 32), resize) for i in split.rows
    ]
    images = tf.constant(np.stack(pixels).astype("float32"))
    if augment is not None:
        images = tf.stack(
            [augment(im, tf.constant([0, j], tf.int64)) for j, im in enumerate(images)]
        )
    probabilities = np.asarray(model(images), np.float64)
    column = {int(label): k for k, label in enumerate(labels)}
    picked = [probabilities[j, column[int(label)]] for j, label in enumerate(split.labels)]
    return float(-np.mean(np.log(picked)))


def test_auto_augments_train_batches_only_never_val(coloured, tmp_path):
    from featcache.heads.augment import augment_function
    from featcache.heads.data import load_splits
    from featcache.heads.endtoend import load_model
    from featcache.heads.finetune import fine_tune

    _, data, cache, _ = coloured
    run = tmp_path / "head"  # a head that learned something: its loss follows the images
    train_head(cache, head="dense", hidden=(8,), epochs=60, standardize=True, output=run)
    chosen = "vflip,rotate90,crop,contrast,brightness"
    fine_tune(
        cache, run, output=tmp_path / "ft", epochs=1, batch_size=4, lr=1e-12, unfreeze=0,
        augment=chosen, test_views="none",  # model.keras: the head, one view
    )  # fmt: skip
    with open(tmp_path / "ft" / "history.csv") as f:
        epoch = next(csv.DictReader(f))
    model, _, labels = load_model(tmp_path / "ft" / "model.keras")  # the head, as it started
    splits = load_splits(cache)
    resize = load_head(run).settings.resize
    val = _loss(model, labels, data, splits.paths, splits.val, resize)
    # lr 1e-12: the weights stay, so Keras' val loss is the head's on the plain val images
    assert abs(float(epoch["val_loss"]) - val) < 1e-4
    # which tells augmented val images apart: they move it far beyond that (train's, augmented,
    # is far from val's too)
    augmented = _loss(
        model, labels, data, splits.paths, splits.val, resize, augment_function(chosen, 0, (32, 32))
    )
    assert abs(augmented - val) > 1e-2


def test_auto_phases_keep_batchnorm_statistics_and_follow_the_schedule():
    import keras
    import tensorflow as tf

    from featcache.heads.finetune_phases import Best, run_phases
    from featcache.heads.schedule import plan_phases

    keras.utils.set_random_seed(0)
    x = image = keras.Input((32, 32, 3))
    for k in range(4):  # conv, batch norm, relu blocks: a small real backbone
        x = keras.layers.Conv2D(8, 3, name=f"conv{k}")(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"bn{k}")(x))
    backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    inputs = keras.Input((32, 32, 3))
    features = backbone(inputs, training=False)  # as endtoend.build calls it
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features))
    units = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    norms = [u for u in units if isinstance(u, keras.layers.BatchNormalization)]
    allowed = [u for u in units if u.weights and u not in norms]
    stats = [(n.moving_mean.numpy().copy(), n.moving_variance.numpy().copy()) for n in norms]
    kernels = [layer.get_weights()[0].copy() for layer in allowed]
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 5, (16, 32, 32, 3)).astype("float32")  # batch stats far from 0/1
    data = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 2, 16))).batch(8)
    phases = plan_phases(3, 1e-2, len(allowed))
    best = Best(-1.0, model.get_weights())  # any epoch beats it: trained weights are kept
    run_phases(
        model, backbone, units, allowed, len(allowed), phases, data, data, 2, best,
        optimizer="adam", warmup=0.1, lr_decay=1 / 2.6, class_weight=None, patience=0,
    )  # fmt: skip
    assert best.phase in {"top", "deeper"}
    assert any(not np.array_equal(k, u.get_weights()[0]) for k, u in zip(kernels, allowed))
    for norm, (mean, variance) in zip(norms, stats):
        np.testing.assert_array_equal(norm.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(norm.moving_variance.numpy(), variance)
    # the last phase's warm-up + cosine drove fit: every step taken, the rate decayed to 0
    assert int(model.optimizer.iterations) == 2 * phases[-1].epochs
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-12)


def test_unfreeze_units_are_layers_not_names():
    import keras

    from featcache.heads.finetune_layers import unfreeze_layers, unfreeze_units

    class TwinEncoder(keras.Model):  # opened into its layers, as keras-hub encoders are
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.proj = keras.layers.Dense(4, name="proj")  # the same name in both

        def call(self, x):
            return self.proj(x)

    inputs = keras.Input((4,))
    lower, upper = TwinEncoder(name="lower"), TwinEncoder(name="upper")
    backbone = keras.Model(inputs, upper(lower(inputs)))
    assert [id(u) for u in unfreeze_units(backbone, 1)] == [id(upper.proj)]
    assert upper.proj.trainable and not lower.proj.trainable
    assert unfreeze_layers(backbone, 1) == ["proj"]
    assert [id(u) for u in unfreeze_units(backbone, "all")] == [id(lower.proj), id(upper.proj)]


def test_auto_phases_pass_the_class_weights_to_fit():
    import keras
    import tensorflow as tf

    from featcache.heads.finetune_phases import Best, run_phases
    from featcache.heads.schedule import plan_phases

    def trained_loss(class_weight):
        keras.utils.set_random_seed(0)
        x = image = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(x)
        backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x))
        inputs = keras.Input((8, 8, 3))
        head = keras.layers.Dense(2, activation="softmax")(backbone(inputs, training=False))
        model = keras.Model(inputs, head)
        units = [layer for layer in backbone.layers if layer.weights]
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 1, (8, 8, 8, 3)).astype("float32")
        data = tf.data.Dataset.from_tensor_slices((images, np.array([0] * 6 + [1] * 2))).batch(4)
        _, history = run_phases(
            model, backbone, units, units, 1, plan_phases(1, 1e-3, 1), data, data, 2,
            Best(-1.0, model.get_weights()), optimizer="adam", warmup=0.1, lr_decay=1.0,
            class_weight=class_weight, patience=0,
        )  # fmt: skip
        return history["loss"][0]

    plain = trained_loss(None)
    assert plain > 0.1
    assert trained_loss({0: 0.0, 1: 0.0}) == 0.0  # fit weighed every row by its class
    assert trained_loss({0: 1.0, 1: 3.0}) > plain  # the minority's rows count 3 times


def test_balanced_accuracy_metric_equals_scikit_learns():
    from sklearn.metrics import balanced_accuracy_score

    from featcache.heads.finetune_phases import balanced_accuracy

    rng = np.random.default_rng(0)
    truth = np.array([0] * 12 + [1] * 5 + [3] * 3)  # class 2 absent
    scores = rng.uniform(0, 1, (20, 4)).astype("float32")
    metric = balanced_accuracy(4)
    metric.update_state(truth[:7], scores[:7])  # over two batches, as an epoch's val
    metric.update_state(truth[7:], scores[7:])
    expected = balanced_accuracy_score(truth, scores.argmax(axis=1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    metric.update_state(truth, np.eye(4, dtype="float32")[truth])
    assert float(metric.result()) == pytest.approx(1.0)


def test_thawing_starts_from_the_re_fit_head_even_below_the_best():
    import keras
    import tensorflow as tf

    from featcache.heads.finetune_phases import Best, run_phases
    from featcache.heads.finetune_refit import Refit
    from featcache.heads.schedule import Phase

    keras.utils.set_random_seed(0)
    x = image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x))
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(backbone(inputs, training=False)))
    units = [layer for layer in backbone.layers if layer.weights]
    images = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)).astype("float32")
    labels = np.array([0] * 12 + [1] * 4)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    kernel = np.zeros((4, 2), np.float32)
    dense.set_weights([kernel, np.array([0.0, 10.0], np.float32)])  # the head: always 1

    def refit(title):  # the re-fit head: always 0 (val 0.75), yet below the kept score
        assert "head re-fit on frozen features" in title
        dense.set_weights([kernel, np.array([10.0, 0.0], np.float32)])
        return Refit(1e-3, None, [0.25, 0.75], [0.5, 0.5], best_epoch=1, rows=16)

    best = Best(0.9, model.get_weights())  # nothing here reaches 0.9
    runs, _ = run_phases(
        model, backbone, units, units, 1, [Phase("head", 0, 1, 0.0), Phase("top", 1, 1, 1e-12)],
        data, data, 2, best, optimizer="adam", warmup=0.0, lr_decay=1.0, class_weight=None,
        patience=0, refit=refit,
    )  # fmt: skip
    assert runs[0].val_accuracy == [0.75] and runs[0].record()["best_epoch"] == 1
    assert runs[1].val_accuracy == [pytest.approx(0.75)]  # thawed from the re-fit head
    assert best.phase == "head-only"  # and the kept weights are still the best's
    assert np.argmax(model.predict(images, verbose=0), axis=1).tolist() == [1] * 16
