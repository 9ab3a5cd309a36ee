"""Head trainer on real caches made by ``extract`` from small image folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache import extract
from featcache.cli import main
from featcache.core.ranking import top_k
from featcache.errors import DatasetError, InvalidOptionError, SettingsMismatchError
from featcache.heads.dense import DenseHead
from featcache.heads.options import HeadOptions
from featcache.heads.predict import predict_cache
from featcache.heads.train import load_head, train_head
from featcache.store import CacheReader
from helpers import TINY

KINDS = ["dense", "logreg", "linear-svm", "svm", "knn", "random-forest", "ridge"]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def colour_folder(root, classes=COLOURS, per_class=20, seed=0):
    """Noisy images whose class is their dominant colour: learnable from any features."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (32, 32, 3))
            pixels = np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    colour_folder(root / "data")
    out = root / "colours.h5"
    extract(root / "data", output=out, split="0.6,0.2,0.2", **TINY)
    return out


def _valid_png(path):
    with Image.open(path) as image:
        image.verify()
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_fits_reports_and_reloads(cache, tmp_path, kind):
    result = train_head(cache, kind, tmp_path / "run", epochs=15, seed=1)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["head"] == kind and report["class_names"] == ["blue", "green", "red"]
    for split in ("val", "test"):
        m = report[split]
        assert {
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "per_class",
            "confusion_matrix",
        } <= set(m)
        assert len(m["per_class"]) == 3 and np.asarray(m["confusion_matrix"]).shape == (3, 3)
        assert np.asarray(m["confusion_matrix"]).sum() == report["rows"][split]
        # the 95% bootstrap interval of the accuracy, over the split's rows
        assert m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"]
        assert m["accuracy_high"] - m["accuracy_low"] > 0 or m["accuracy"] in (0.0, 1.0)
    assert report["test"]["accuracy"] >= 0.6, report["test"]  # chance is 1/3
    assert report["fit_seconds"] > 0 and report["fingerprint"]
    assert _valid_png(tmp_path / "run" / "confusion.png")
    if kind == "dense":
        assert (tmp_path / "run" / "head.keras").is_file()
        assert _valid_png(tmp_path / "run" / "history.png")
        with open(tmp_path / "run" / "history.csv") as handle:
            header = next(csv.reader(handle))
        assert {"epoch", "accuracy", "loss", "val_accuracy", "val_loss"} <= set(header)
    else:
        assert (tmp_path / "run" / "head.skops").is_file()
    loaded = load_head(tmp_path / "run")
    from featcache import read_cache

    data = read_cache(cache)
    np.testing.assert_allclose(
        loaded.predict_proba(data.features), result.head.predict_proba(data.features), atol=1e-6
    )


def test_binary_head_has_one_sigmoid_unit(tmp_path):
    colour_folder(tmp_path / "d", {"red": (200, 40, 40), "blue": (40, 60, 200)}, per_class=15)
    extract(tmp_path / "d", output=tmp_path / "b.h5", split="0.6,0.2,0.2", **TINY)
    result = train_head(tmp_path / "b.h5", "dense", tmp_path / "run", epochs=30, standardize=True)
    model = result.head.estimator.model_
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert result.report["test"]["accuracy"] >= 0.6


def test_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)  # noise: validation accuracy peaks early, then wanders
    head = DenseHead(hidden=(64,), dropout=0.0, lr=0.02, epochs=60, patience=3, seed=0)
    head.fit(x[:200], y[:200], validation_data=(x[200:], y[200:]))
    assert head.n_epochs_ < 60
    best = max(head.history_["val_accuracy"])
    assert np.mean(head.predict(x[200:]) == y[200:]) == pytest.approx(best, abs=1e-6)
    assert head.history_["val_accuracy"][head.best_epoch_ - 1] == best


def test_same_seed_same_head():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(120, 8)).astype(np.float32), rng.integers(0, 3, 120)
    a = DenseHead(hidden=(16,), epochs=5, seed=7).fit(x, y).predict_proba(x)
    b = DenseHead(hidden=(16,), epochs=5, seed=7).fit(x, y).predict_proba(x)
    c = DenseHead(hidden=(16,), epochs=5, seed=8).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("rows", [100, 1100])  # 2 steps an epoch (one execution), 18 steps
def test_each_epoch_is_one_pass_over_train_in_a_new_order(rows):
    """The head's train input (one iterator for every epoch when an epoch is one execution of the
    train step, a pass of it an epoch otherwise): every row once an epoch with its label,
    never a step more, in a new order each epoch."""
    from featcache.heads.train_input import STEPS_PER_EXECUTION, train_input

    rng = np.random.default_rng(2)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = rng.integers(0, 3, rows)
    head = DenseHead(hidden=(8,), epochs=3, batch_size=64, patience=0).fit(x, y)
    steps = -(-rows // 64)
    assert int(head.model_.optimizer.iterations.numpy()) == 3 * steps
    endless = steps <= STEPS_PER_EXECUTION
    dataset = train_input(x, y, 64, 0).dataset
    if endless:
        batches = iter(dataset)
        epochs = [[next(batches) for _ in range(steps)] for _ in range(2)]
    else:  # each pass over the dataset is one epoch, then it ends
        epochs = [list(dataset) for _ in range(2)]
        assert [len(epoch) for epoch in epochs] == [steps, steps]
    label = {tuple(row): int(c) for row, c in zip(x.tolist(), y)}
    orders = []
    for epoch in epochs:
        features = np.concatenate([np.asarray(b[0]) for b in epoch]).tolist()
        labels = np.concatenate([np.asarray(b[1]) for b in epoch])
        assert sorted(map(tuple, features)) == sorted(label)
        assert [label[tuple(row)] for row in features] == labels.tolist()
        orders.append(features)
    assert orders[0] != orders[1]


def test_missing_val_split_is_carved_from_train(tmp_path):
    colour_folder(tmp_path / "d", per_class=10)
    extract(tmp_path / "d", output=tmp_path / "c.h5", split="0.8,0,0.2", **TINY)
    result = train_head(tmp_path / "c.h5", "logreg", tmp_path / "run")
    assert any("carved from train" in note for note in result.report["notes"])
    assert result.report["rows"]["val"] > 0


def test_streamed_dense_head_matches_in_memory_quality(cache, tmp_path):
    streamed = train_head(
        cache, "dense", tmp_path / "s", epochs=15, seed=1, stream=True, standardize=True
    )
    assert streamed.report["streamed"] is True
    assert streamed.report["test"]["accuracy"] >= 0.6


def test_predict_writes_a_row_per_image_and_checks_settings(cache, tmp_path):
    train_head(cache, "logreg", tmp_path / "run")
    out = predict_cache(tmp_path / "run", cache, top_k=2)
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and set(rows[0]) == {
        "path",
        "label",
        "predicted",
        "probability",
        "top_k",
    }
    assert len(rows[0]["top_k"].split("|")) == 2
    assert np.mean([r["label"] == r["predicted"] for r in rows]) > 0.6
    other = tmp_path / "other.h5"
    colour_folder(tmp_path / "d2", per_class=3)
    extract(tmp_path / "d2", output=other, **{**TINY, "image_size": 48})
    with pytest.raises(SettingsMismatchError, match="image_size") as refused:
        predict_cache(tmp_path / "run", other, overwrite=True)
    message = str(refused.value)
    assert message.startswith(f"{other} was not made with the backbone settings")
    assert "image_size 32x32 (head) vs 48x48 (cache)" in message
    assert "pooling" not in message and "backbone" not in message.split(":", 1)[1]


def test_predict_names_every_setting_that_differs_and_ignores_the_dtype(cache, tmp_path):
    train_head(cache, "logreg", tmp_path / "run")
    colour_folder(tmp_path / "d2", per_class=3)
    half = tmp_path / "half.h5"  # float16 storage: same features, rounded
    extract(tmp_path / "d2", output=half, dtype="float16", **TINY)
    with open(predict_cache(tmp_path / "run", half)) as handle:
        assert len(list(csv.DictReader(handle))) == 9
    other = tmp_path / "other.h5"
    extract(tmp_path / "d2", output=other, pooling="max", resize="pad", **TINY)
    with pytest.raises(SettingsMismatchError) as refused:
        predict_cache(tmp_path / "run", other, overwrite=True)
    message = str(refused.value)
    assert "resize 'stretch' (head) vs 'pad' (cache)" in message
    assert "pooling 'avg' (head) vs 'max' (cache)" in message


def test_predict_never_replaces_an_existing_file_unless_asked(cache, tmp_path):
    """``predict`` refuses an existing output (its default included) in one line naming
    --overwrite, before loading anything, and leaves the file as it was; --overwrite
    replaces it whole."""
    train_head(cache, "logreg", tmp_path / "run")
    first = predict_cache(tmp_path / "run", cache, top_k=1)
    assert first == tmp_path / "run" / "predictions.csv"
    first.write_text("mine\n")
    with pytest.raises(InvalidOptionError, match="--overwrite"):
        predict_cache(tmp_path / "nothing-here", cache, first)  # refused before the head loads
    runner = CliRunner()
    refused = runner.invoke(main, ["predict", str(tmp_path / "run"), str(cache)])
    assert refused.exit_code == 2 and len(refused.output.splitlines()) == 1, refused.output
    assert refused.output == (
        f"error: {first} exists; overwrite replaces it (--overwrite), or -o names another file\n"
    )
    assert first.read_text() == "mine\n"
    replaced = runner.invoke(main, ["predict", str(tmp_path / "run"), str(cache), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    with open(first) as handle:
        assert len(list(csv.DictReader(handle))) == 60
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(InvalidOptionError, match="is a folder"):
        predict_cache(tmp_path / "run", cache, tmp_path / "folder.csv", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.csv", "run"]  # no leftovers
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


def test_runs_and_exports_never_replace_earlier_output_unless_asked(cache, tmp_path):
    """The chain train-head -o RUN -> fine-tune -o RUN -> export -o MODEL -> compare -o DIR,
    each writing over an earlier output by mistake: refused in one line naming --overwrite,
    before any fit or model load, the earlier run, model and leaderboard untouched; with
    --overwrite each is written."""
    runner = CliRunner()
    run, model, board = tmp_path / "run", tmp_path / "model.keras", tmp_path / "board"
    first = runner.invoke(main, ["train-head", str(cache), "-o", str(run), "--head", "logreg"])
    assert first.exit_code == 0, first.output
    head_json = (run / "head.json").read_text()
    again = runner.invoke(main, ["train-head", str(cache), "-o", str(run), "--head", "dense"])
    assert again.exit_code == 2 and len(again.output.splitlines()) == 1, again.output
    assert "--overwrite" in again.output and (run / "head.json").read_text() == head_json
    assert not (run / "head.keras").exists()
    tuned = runner.invoke(main, ["fine-tune", str(cache), "--head", str(run), "-o", str(run)])
    assert tuned.exit_code == 2 and "--overwrite" in tuned.output  # the head's own folder
    assert (run / "head.json").read_text() == head_json and not (run / "model.keras").exists()
    exported = runner.invoke(main, ["export", str(run), "-o", str(model)])
    assert exported.exit_code == 0, exported.output
    size = model.stat().st_size
    refused = runner.invoke(main, ["export", str(tmp_path / "no-run"), "-o", str(model)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output  # before the run is read
    assert model.stat().st_size == size
    replaced = runner.invoke(main, ["export", str(run), "-o", str(model), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    board.mkdir()
    (board / "notes.txt").write_text("mine")
    compared = ["compare", str(cache), "-o", str(board), "--heads", "logreg"]
    refused = runner.invoke(main, compared)
    assert refused.exit_code == 2 and "holds other files (notes.txt)" in refused.output
    assert sorted(p.name for p in board.iterdir()) == ["notes.txt"]
    written = runner.invoke(main, [*compared, "--overwrite"])
    assert written.exit_code == 0, written.output
    assert (board / "leaderboard.csv").is_file() and (board / "notes.txt").read_text() == "mine"
    assert train_head(cache, "dense", run, overwrite=True, epochs=2).run_dir == run
    assert (run / "head.keras").is_file()
    with pytest.raises(InvalidOptionError, match="not a folder"):
        train_head(cache, "logreg", model)


def test_an_old_head_json_still_loads_and_checks(cache, tmp_path):
    """head.json files written before FeatureSettings kept a fixed list of cache attributes
    (heads of caches that decoded every pixel, as caches then did: ``decode="exact"``)."""
    data, cache = cache.parent / "data", tmp_path / "exact.h5"
    extract(data, output=cache, split="0.6,0.2,0.2", decode="exact", **TINY)
    train_head(cache, "logreg", tmp_path / "run")
    meta_path = tmp_path / "run" / "head.json"
    meta = json.loads(meta_path.read_text())
    new = meta["cache_settings"]
    old_keys = (
        "backbone", "backbone_sha256", "weights", "weights_sha256", "image_size", "resize",
        "pooling", "layer", "preprocessing", "dtype", "feature_dim", "fingerprint",
        "dataset_root", "seed",
    )  # fmt: skip
    meta["cache_settings"] = {key: new[key] for key in old_keys}
    meta_path.write_text(json.dumps(meta))
    head = load_head(tmp_path / "run")
    assert head.settings.image_size == (32, 32) and head.settings.feature_dim == 512
    with open(predict_cache(tmp_path / "run", cache)) as handle:
        assert len(list(csv.DictReader(handle))) == 60
    meta["cache_settings"]["image_size"] = [48, 48]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SettingsMismatchError, match=r"48x48 \(head\) vs 32x32 \(cache\)"):
        predict_cache(tmp_path / "run", cache, overwrite=True)


def test_top_k_is_descending_with_ties_in_column_order():
    scores = np.array([[0.1, 0.5, 0.2, 0.2], [0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2], [2, 0, 1]]
    assert top_k(scores, 10).shape == (3, 4)  # at most every column
    assert top_k(scores[:0], 2).shape == (0, 2)
    with pytest.raises(InvalidOptionError, match=r"^top_k 0: must be at least 1") as refused:
        top_k(scores, 0)
    assert refused.value.parameter == "top_k"


@pytest.mark.parametrize(
    ("values", "parameter", "message"),
    [
        ({"epochs": 0}, "epochs", "epochs 0: must be at least 1"),
        ({"batch_size": 0}, "batch_size", "batch_size 0: must be at least 1"),
        ({"dropout": 1.0}, "dropout", "dropout 1.0: must be at least 0 and below 1"),
        ({"head": "tree"}, "head", "head 'tree': expected one of dense, logreg"),
        ({"C": 0.0}, "C", "C 0.0: must be positive"),
        ({"k": 0}, "k", "k 0: must be at least 1"),
        ({"val_fraction": 1.0}, "val_fraction", "val_fraction 1.0: must be between 0 and 1"),
        ({"hidden": (256, -1)}, "hidden", "hidden (256, -1): widths must be at least 1"),
        ({"optimizer": "lbfgs"}, "optimizer", "optimizer 'lbfgs': expected one of adam"),
        ({"seed": -1}, "seed", "seed -1: expected 0 to 2**32 - 1"),
    ],
)
def test_head_option_errors_name_the_parameter(tmp_path, values, parameter, message):
    with pytest.raises(InvalidOptionError) as refused:
        HeadOptions(**values)
    assert str(refused.value).startswith(message) and refused.value.parameter == parameter
    with pytest.raises(InvalidOptionError, match=f"^{parameter} "):  # before the cache is read
        train_head(tmp_path / "missing.h5", output=tmp_path / "run", **values)
    assert not (tmp_path / "run").exists()


def test_options_and_keywords_combine(cache, tmp_path):
    options = HeadOptions(head="knn", k=3, seed=4)
    result = train_head(cache, output=tmp_path / "a", options=options, k=7)
    assert result.report["head"] == "knn" and result.report["params"]["k"] == 7
    assert result.report["params"]["seed"] == 4
    result = train_head(cache, "logreg", tmp_path / "b", options=options)
    assert result.report["head"] == "logreg" and "k" not in result.report["params"]
    assert HeadOptions(hidden="512,128").hidden == (512, 128)
    assert HeadOptions(hidden="none").hidden == ()


def test_compare_writes_a_leaderboard_and_keeps_the_best_run(cache, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "compare",
            str(cache),
            "-o",
            str(tmp_path / "cmp"),
            "--heads",
            "dense,logreg,knn",
            "--epochs",
            "8",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    assert [r["head"] for r in board["rows"]] and len(board["rows"]) == 3
    for row in board["rows"]:  # the quick protocol's test accuracy has its interval too
        assert row["test_accuracy_low"] <= row["test_accuracy"] <= row["test_accuracy_high"]
        assert row["test_rows"] == len(CacheReader(cache).rows_of("test", labelled=True))
    assert (tmp_path / "cmp" / "leaderboard.csv").is_file()
    assert (tmp_path / "cmp" / "leaderboard.json").is_file()
    assert (tmp_path / "cmp" / f"best-{board['rows'][0]['head']}" / "report.json").is_file()


def test_compare_with_cross_validation(cache, tmp_path):
    from featcache.heads.compare import compare

    board = compare(cache, tmp_path / "cv", heads=("logreg", "ridge"), cv=3)
    assert all(r["selection"] == "3-fold cv" for r in board.rows)


def test_train_head_cli_prints_a_table(cache, tmp_path):
    result = CliRunner().invoke(
        main, ["train-head", str(cache), "--head", "knn", "--k", "3", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "knn head" in result.output and "test" in result.output


@pytest.mark.parametrize("problem", ["unlabelled", "one-class", "no-test", "missing", "newer"])
def test_unusable_caches_exit_2_and_write_nothing(tmp_path, monkeypatch, problem):
    data = tmp_path / "d"
    out = tmp_path / "c.h5"
    if problem == "unlabelled":
        for i in range(4):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        extract(tmp_path, output=out, **TINY)
    elif problem == "one-class":
        colour_folder(data, {"red": (200, 40, 40)}, per_class=6)
        extract(data, output=out, **TINY)
    elif problem == "no-test":
        colour_folder(data, per_class=4)
        extract(data, output=out, split="0.8,0.2", **TINY)
    elif problem == "newer":
        import h5py

        colour_folder(data, per_class=4)
        extract(data, output=out, **TINY)
        with h5py.File(out, "r+") as f:
            f.attrs["format_version"] = 9
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result = CliRunner().invoke(main, ["train-head", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and len(result.output.splitlines()) == 1
    assert not (tmp_path / "cwd" / "runs").exists()


def test_dataset_errors_are_featcache_errors(tmp_path):
    colour_folder(tmp_path / "d", {"red": (200, 40, 40)}, per_class=6)
    extract(tmp_path / "d", output=tmp_path / "c.h5", **TINY)
    with pytest.raises(DatasetError, match="only one class"):
        train_head(tmp_path / "c.h5", "logreg")


def test_class_seen_only_in_val_and_test_counts_as_misses(tmp_path):
    colour_folder(tmp_path / "d", per_class=8)
    extract(tmp_path / "d", output=tmp_path / "c.h5", split="0.6,0.2,0.2", **TINY)
    import h5py

    with h5py.File(tmp_path / "c.h5", "r+") as f:  # move every "red" row out of train
        labels, split = f["labels"][:], f["split"][:]
        red = labels == 2
        split[red & (split == 0)] = 1
        split[red & (np.arange(len(split)) % 2 == 0)] = 2
        f["split"][:] = split
    for kind in ("dense", "logreg"):
        result = train_head(tmp_path / "c.h5", kind, tmp_path / kind, epochs=5)
        assert result.report["test"]["per_class"][2]["recall"] == 0.0
        assert 2 not in result.head.classes


def test_binary_logits_head_gives_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = np.where(x[:, 0] > 0, "yes", "no")
    head = DenseHead(hidden=(8,), dropout=0.0, epochs=20, lr=0.05, from_logits=True).fit(x, y)
    proba = head.predict_proba(x)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.mean(head.predict(x) == y) > 0.85


def test_predict_refuses_features_from_other_random_weights(cache, tmp_path):
    train_head(cache, "logreg", tmp_path / "run")
    colour_folder(tmp_path / "d2", per_class=3)
    extract(tmp_path / "d2", output=tmp_path / "seeded.h5", seed=99, **TINY)
    with pytest.raises(SettingsMismatchError, match="seed"):
        predict_cache(tmp_path / "run", tmp_path / "seeded.h5")


@pytest.mark.parametrize(
    "args",
    [
        ["--hidden", "junk"],
        ["--hidden", "256,-1"],
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--dropout", "1"],
        ["--activation", "nope"],
        ["--head", "knn", "--k", "0"],
        ["--head", "knn", "--k", "500"],
        ["--head", "logreg", "--C", "0"],
        ["--val-fraction", "5"],
    ],
)
def test_bad_options_exit_2_and_write_nothing(cache, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train-head", str(cache), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and len(result.output.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_compare_and_predict_errors_exit_2(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (
        ["compare", str(cache), "--heads", ","],
        ["compare", str(cache), "--cv", "50"],
        ["compare", str(tmp_path / "missing.h5")],
        ["predict", str(tmp_path / "no-run"), str(cache)],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
