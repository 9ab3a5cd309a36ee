"""compare's probe protocols (linear probe, weighted kNN, metrics with bootstrap intervals,
few-shot) and several caches joined by content hash, on small real HDF5 caches."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache import extract
from featcache.cli import main
from featcache.errors import CacheError, InvalidOptionError
from featcache.heads.compare import compare
from featcache.heads.data import JointCache, load_splits
from featcache.heads.metrics import Scored, bootstrap_metrics, point_metrics
from featcache.heads.options import parse_c_grid
from featcache.heads.probe import (
    ProbeData,
    ProbeSettings,
    knn_probe,
    knn_votes,
    linear_probe,
    run_protocols,
    sample_shots,
)
from featcache.heads.report import metrics
from featcache.store import CacheReader, CacheSettings, CacheWriter
from helpers import TINY

CLASSES = [f"c{i}" for i in range(8)]
SPLITS = {"train": 0, "val": 1, "test": 2}


def _settings(seed: int, root: str) -> CacheSettings:
    return CacheSettings(
        "vgg16",
        "",
        "none",
        "",
        (32, 32),
        "stretch",
        "avg",
        "",
        "none",
        seed,
        dtype="float32",
        split_ratios=(0.6, 0.2, 0.2),
        split_source="hash",
        dataset_root=root,
    )


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def write_cache(path, rows, features, seed=0):
    """A cache written through CacheWriter: ``rows`` are (image name, class, split)."""
    order = {name: i for i, (name, _, _) in enumerate(rows)}
    writer = CacheWriter(path, _settings(seed, str(path.parent)), CLASSES, order)
    writer.add(
        [name for name, _, _ in rows],
        [_sha(name) for name, _, _ in rows],
        [label for _, label, _ in rows],
        [SPLITS[split] for _, _, split in rows],
        np.asarray(features, np.float32),
    )
    writer.commit(final=True)
    return path


def separable(per_class=(12, 4, 6), dim=12, noise=0.6, seed=0):
    """Image names, classes, splits and two views of the same images: rows of 8 classes
    around random centres (features a and b differ, the classes agree)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (len(CLASSES), dim))
    rows, a = [], []
    for label, name in enumerate(CLASSES):
        for split, count in zip(SPLITS, per_class):
            for i in range(count):
                rows.append((f"{name}/{split}-{i}.png", name, split))
                a.append(centres[label] + rng.normal(0, noise, dim))
    a = np.asarray(a)
    b = np.tanh(a @ rng.normal(0, 0.5, (dim, dim // 2))) + rng.normal(0, 0.1, (len(a), dim // 2))
    return rows, a, b


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """Cache a (every image) and cache b: 5 images fewer, 3 extra, one class changed."""
    root = tmp_path_factory.mktemp("probe")
    rows, a, b = separable()
    write_cache(root / "a.h5", rows, a, seed=0)
    keep = list(range(5, len(rows)))
    b_rows = [rows[i] for i in keep]
    b_rows[0] = (b_rows[0][0], "c7" if b_rows[0][1] != "c7" else "c6", b_rows[0][2])
    extra = [(f"extra/{i}.png", "c0", "train") for i in range(3)]
    features = np.concatenate([b[keep], np.zeros((3, b.shape[1]))])
    write_cache(root / "b.h5", b_rows + extra, features, seed=1)
    return root / "a.h5", root / "b.h5"


# -- linear probe ----------------------------------------------------------------------


def test_c_grid_parsing():
    grid = parse_c_grid("1e-6:1e5:45")
    assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    assert np.allclose(np.diff(np.log10(grid)), 11 / 44)
    assert parse_c_grid("10,0.1,1") == (0.1, 1.0, 10.0)
    for bad in ("1:2", "0:1:3", "a", "1e-6:1e5:0", "", "-1,2"):
        with pytest.raises(InvalidOptionError) as caught:
            parse_c_grid(bad)
        assert caught.value.parameter == "c_grid"


def test_linear_probe_chooses_c_on_val_and_refits_on_train_and_val():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4))
    y = (x[:, 0] + 0.8 * x[:, 1] + rng.normal(0, 0.9, 90) > 0).astype(int) + (x[:, 2] > 1)
    x_train, y_train, x_val, y_val = x[:60], y[:60], x[60:], y[60:]
    grid = (1e-3, 1e-2, 0.1, 1.0, 10.0)
    probe = linear_probe(x_train, y_train, x_val, y_val, grid, tol=1e-10, max_iter=10000)
    by_hand = []
    for C in grid:  # cold fits, one per C
        model = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(x_train, y_train)
        by_hand.append(float(np.mean(model.predict(x_val) == y_val)))
    assert [score for _, score in probe.sweep] == by_hand
    assert len(set(by_hand)) > 1  # the choice matters
    first_best = grid[int(np.argmax(by_hand))]  # the smallest C among ties
    assert probe.C == first_best and probe.val_accuracy == max(by_hand)
    refit = LogisticRegression(C=first_best, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(probe.model.coef_, refit.coef_, atol=1e-5)
    alone = linear_probe(x_train, y_train, x_val, y_val, grid, refit=False, tol=1e-10)
    trained = LogisticRegression(C=first_best, tol=1e-10, max_iter=10000).fit(x_train, y_train)
    np.testing.assert_allclose(alone.model.coef_, trained.coef_, atol=1e-5)


# -- kNN -------------------------------------------------------------------------------


def test_knn_votes_are_temperature_weighted_cosine_votes():
    bank = np.array([[1.0, 0.0], [2.0, 0.2], [0.0, 1.0], [0.5, 0.5], [-1.0, 0.1]])
    labels = np.array([3, 3, 5, 5, 5])
    query = np.array([[1.0, 0.3]])
    votes = knn_votes(bank, labels, query, k=3, temperature=0.07)
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sims = unit @ (query[0] / np.linalg.norm(query[0]))
    nearest = np.argsort(-sims)[:3]
    by_hand = {3: 0.0, 5: 0.0}
    for i in nearest:
        by_hand[int(labels[i])] += np.exp(sims[i] / 0.07)
    np.testing.assert_allclose(votes[0], [by_hand[3], by_hand[5]], rtol=1e-12)
    # a higher temperature flattens the weights: one vote per neighbour in the limit
    flat = knn_votes(bank, labels, query, k=3, temperature=1e6)
    counts = [np.sum(labels[nearest] == c) for c in (3, 5)]
    np.testing.assert_allclose(flat[0], counts, rtol=1e-5)


def test_knn_probe_chooses_k_on_val_and_skips_ks_above_the_bank():
    rows, a, _ = separable()
    train = np.array([r[2] == "train" for r in rows])
    val = np.array([r[2] == "val" for r in rows])
    y = np.array([CLASSES.index(r[1]) for r in rows])
    probe = knn_probe(a[train], y[train], a[val], y[val], (1, 5, 200))
    assert [k for k, _ in probe.sweep] == [1, 5] and probe.skipped == [200]
    scores = [s for _, s in probe.sweep]
    assert probe.k == (1, 5)[int(np.argmax(scores))] and probe.val_accuracy == max(scores)


# -- metrics ---------------------------------------------------------------------------


def test_metrics_match_the_reports_and_top5_is_sklearns():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 300)
    y[:3] = 0
    scores = rng.normal(size=(300, 8)) + 2.0 * np.eye(8)[y]
    scores[:, 7] -= 5  # class 7 is never predicted: F1 0, recall 0
    scored = Scored.of(y, scores, np.arange(8))
    ours = point_metrics(scored)
    theirs = metrics(y, scored.y_pred, CLASSES)
    assert ours["acc1"] == pytest.approx(theirs["accuracy"])
    assert ours["balanced_accuracy"] == pytest.approx(theirs["balanced_accuracy"])
    assert ours["macro_f1"] == pytest.approx(theirs["macro_f1"])
    assert ours["acc5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5))
    assert "acc5" not in point_metrics(Scored.of(y % 4, scores[:, :4], np.arange(4)))
    # the vectorised resample path gives the same values as the report on every resample
    from featcache.heads.metrics import _values

    picks = rng.integers(0, 300, (20, 300))
    fast = _values(scored, picks, 8)
    for i in range(20):
        again = metrics(y[picks[i]], scored.y_pred[picks[i]], CLASSES)
        assert fast["acc1"][i] == pytest.approx(again["accuracy"])
        assert fast["balanced_accuracy"][i] == pytest.approx(again["balanced_accuracy"])
        assert fast["macro_f1"][i] == pytest.approx(again["macro_f1"])


def _noisy(rows, accuracy=0.8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, rows)
    right = rng.random(rows) < accuracy
    pred = np.where(right, y, (y + rng.integers(1, 8, rows)) % 8)
    return Scored.of(y, np.eye(8)[pred] + 0.1 * rng.random((rows, 8)), np.arange(8))


def test_bootstrap_intervals_hold_the_estimate_narrow_with_data_and_are_seeded():
    small, large = bootstrap_metrics([_noisy(200)]), bootstrap_metrics([_noisy(3000)])
    for result in (small, large):
        for value in result.values():
            assert value["low"] <= value["value"] <= value["high"]
            assert value["std"] == 0.0
    for name in ("acc1", "balanced_accuracy", "macro_f1", "acc5"):
        small_width = small[name]["high"] - small[name]["low"]
        assert large[name]["high"] - large[name]["low"] < small_width
    assert bootstrap_metrics([_noisy(200)], seed=4) == bootstrap_metrics([_noisy(200)], seed=4)
    assert bootstrap_metrics([_noisy(200)], seed=4) != bootstrap_metrics([_noisy(200)], seed=5)
    none = bootstrap_metrics([_noisy(50)], resamples=0)
    assert none["acc1"]["low"] is None and none["acc1"]["value"] > 0.5


def test_several_runs_report_their_mean_and_spread():
    runs = [_noisy(400, seed=0)]
    rng = np.random.default_rng(1)
    flip = rng.random(400) < 0.2
    second = Scored(runs[0].y_true, np.where(flip, 0, runs[0].y_pred), runs[0].top5)
    result = bootstrap_metrics([runs[0], second])
    values = [point_metrics(r)["acc1"] for r in (runs[0], second)]
    assert result["acc1"]["value"] == pytest.approx(np.mean(values))
    assert result["acc1"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert result["acc1"]["low"] <= result["acc1"]["value"] <= result["acc1"]["high"]


# -- few-shot --------------------------------------------------------------------------


def test_few_shot_takes_exactly_k_per_class_seeded():
    labels = np.repeat(np.arange(4), [9, 5, 7, 12])
    picked = sample_shots(labels, 3, seed=0)
    assert np.bincount(labels[picked]).tolist() == [3, 3, 3, 3]
    assert len(set(picked.tolist())) == 12
    assert np.array_equal(picked, sample_shots(labels, 3, seed=0))
    assert not np.array_equal(picked, sample_shots(labels, 3, seed=1))
    with pytest.raises(InvalidOptionError) as caught:
        sample_shots(labels, 6, seed=0, class_names=["a", "b", "c", "d"])
    assert caught.value.parameter == "shots" and "'b' has only 5" in str(caught.value)


def test_few_shot_protocols_report_mean_and_spread_over_seeds():
    rows, a, _ = separable()
    y = np.array([CLASSES.index(r[1]) for r in rows])
    part = {s: np.array([r[2] == s for r in rows]) for s in SPLITS}
    data = ProbeData(
        a[part["train"]], y[part["train"]], a[part["val"]], y[part["val"]],
        a[part["test"]], y[part["test"]], CLASSES,
    )  # fmt: skip
    settings = ProbeSettings(c_grid="0.1,1", knn_ks="1,3", shots=2, seeds=3, bootstrap=100)
    rows_out = run_protocols(data, ("linear-probe", "knn"), settings)
    for row in rows_out:
        assert row.rows["train"] == 2 * 8 and len(row.seeds) == 3
        assert [s["seed"] for s in row.seeds] == [0, 1, 2]
        accs = [s["acc1"] for s in row.seeds]
        assert row.test["acc1"]["value"] == pytest.approx(np.mean(accs))
        assert row.test["acc1"]["std"] == pytest.approx(np.std(accs, ddof=1))
        assert row.params["shots"] == 2 and row.params["seeds"] == 3
    assert ProbeSettings(shots=2).seeds == 5 and ProbeSettings().seeds == 1
    with pytest.raises(InvalidOptionError) as caught:
        ProbeSettings(seeds=3)
    assert caught.value.parameter == "seeds"


# -- several caches --------------------------------------------------------------------


def test_two_caches_are_matched_by_content_hash(two_caches):
    a, b = two_caches
    joint = JointCache([a, b])
    ra, rb = CacheReader(a), CacheReader(b)
    assert len(joint) == len(ra) - 5 - 1  # 5 images b lacks, 1 whose class differs
    notes = " | ".join(joint.notes)
    assert "5 of 176 rows not in every cache" in notes  # a
    assert "3 of 174 rows not in every cache" in notes  # b: its 3 extra images
    assert "1 shared rows dropped: their class differs" in notes
    assert joint.feature_dim == ra.feature_dim + rb.feature_dim
    rows = np.arange(len(joint))
    both = joint.features(rows)
    by_sha_b = {sha: i for i, sha in enumerate(rb.sha256)}
    for row in (0, 7, len(joint) - 1):
        sha = joint.sha256[row]
        np.testing.assert_array_equal(
            both[row, : ra.feature_dim], ra.features([ra.sha256.index(sha)])[0]
        )
        np.testing.assert_array_equal(both[row, ra.feature_dim :], rb.features([by_sha_b[sha]])[0])
    np.testing.assert_array_equal(joint.features(rows, part=1), both[:, ra.feature_dim :])
    splits = load_splits([a, b])
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(joint)
    assert any("not in every cache" in n for n in splits.notes)


def test_compare_two_caches_writes_a_leaderboard_csv_json_and_plot(two_caches, tmp_path):
    a, b = two_caches
    result = CliRunner().invoke(
        main,
        [
            "compare", str(a), str(b), "-o", str(tmp_path / "cmp"),
            "--protocol", "linear-probe", "--c-grid", "0.01,1,100", "--bootstrap", "200",
            "--csv", str(tmp_path / "out" / "board.csv"), "--plot", str(tmp_path / "board.png"),
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    assert sorted(r["source"] for r in board["rows"]) == ["a", "a+b", "b"]
    assert any("not in every cache" in n for n in board["notes"])
    for row in board["rows"]:
        assert row["protocol"] == "linear-probe" and json.loads(row["params"])["C"] in (
            0.01,
            1,
            100,
        )
        assert row["test_acc1_low"] <= row["test_acc1"] <= row["test_acc1_high"]
        assert row["test_rows"] == 6 * 8 and row["test_acc5"] is not None
        assert [c for c, _ in row["sweep"]] == [0.01, 1.0, 100.0]
    accs = [r["test_acc1"] for r in board["rows"]]
    assert accs == sorted(accs, reverse=True)
    with open(tmp_path / "out" / "board.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and "test_acc1_low" in table[0] and "sweep" not in table[0]
    assert (tmp_path / "cmp" / "leaderboard.csv").read_text() == (
        tmp_path / "out" / "board.csv"
    ).read_text()
    assert json.loads((tmp_path / "cmp" / "leaderboard.json").read_text()) == board["rows"]
    with Image.open(tmp_path / "board.png") as image:
        image.verify()
        assert image.format == "PNG"


def test_compare_knn_prints_a_table(two_caches, tmp_path):
    a, _ = two_caches
    result = CliRunner().invoke(
        main,
        ["compare", str(a), "-o", str(tmp_path / "k"), "--protocol", "knn", "--knn-ks", "1,5"],
    )
    assert result.exit_code == 0, result.output
    assert "knn" in result.output and "acc@5" in result.output and "[" in result.output
    row = json.loads((tmp_path / "k" / "leaderboard.json").read_text())[0]
    params = json.loads(row["params"])
    assert params["k"] in (1, 5) and params["temperature"] == 0.07
    assert params["normalize"] == "l2" and [k for k, _ in row["sweep"]] == [1, 5]


def test_quick_compare_of_two_caches_keeps_the_best_source(two_caches, tmp_path):
    a, b = two_caches
    board = compare([a, b], tmp_path / "q", heads=("logreg", "ridge"), plot=tmp_path / "q.png")
    assert {r["source"] for r in board.rows} == {"a", "b", "a+b"} and len(board.rows) == 6
    with Image.open(tmp_path / "q.png") as image:  # plain bars: quick rows have no interval
        image.verify()
    assert board.best is not None
    report = json.loads((board.best.run_dir / "report.json").read_text())
    top = board.rows[0]["source"]
    assert report["head"] == board.rows[0]["head"]
    if top == "a+b":
        assert report["caches"] == [str(a), str(b)]
    else:
        assert report["cache"] == str(a if top == "a" else b) and "caches" not in report


def test_train_head_on_two_caches(two_caches, tmp_path):
    from featcache.heads.predict import predict_cache
    from featcache.heads.train import train_head

    a, b = two_caches
    result = CliRunner().invoke(
        main, ["train-head", str(a), str(b), "--head", "logreg", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "not in every cache" in result.output and "a.h5, " in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["caches"] == [str(a), str(b)]
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    assert meta["feature_dim"] == CacheReader(a).feature_dim + CacheReader(b).feature_dim
    with pytest.raises(CacheError, match="2 caches joined"):
        predict_cache(tmp_path / "run", a)
    single = train_head(a, "logreg", tmp_path / "one")
    assert "caches" not in single.report
    dense = train_head([a, b], "dense", tmp_path / "dense", epochs=1)
    result = CliRunner().invoke(
        main, ["export", str(dense.run_dir), "-o", str(tmp_path / "m.keras")]
    )
    assert result.exit_code == 2 and "2 caches joined" in result.output
    assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--protocol", "linear-probe", "--c-grid", "1:2"], "--c-grid"),
        (["--protocol", "knn", "--shots", "0"], "--shots"),
        (["--protocol", "knn", "--seeds", "3"], "--seeds"),
        (["--shots", "2"], "--protocol"),
        (["--protocol", "knn", "--cv", "3"], "--cv"),
        (["--protocol", "knn", "--shots", "100"], "--shots"),
        (["--protocol", "knn", "--knn-ks", "0"], "--knn-ks"),
        (["--protocol", "knn", "--temperature", "0"], "--temperature"),
        (["--protocol", "knn", "--heads", "logreg"], "--heads"),
    ],
)
def test_probe_option_errors_are_one_line(two_caches, tmp_path, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compare", str(two_caches[0]), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {flag} ") and len(result.output.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# -- end to end on a real extract ------------------------------------------------------


def _colour_folder(root, per_class=10):
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def test_full_protocol_on_two_real_extracts(tmp_path):
    data = _colour_folder(tmp_path / "data")
    extract(data, output=tmp_path / "s0.h5", split="0.6,0.2,0.2", **TINY)
    extract(data, output=tmp_path / "s1.h5", split="0.6,0.2,0.2", seed=1, **TINY)
    board = compare(
        [tmp_path / "s0.h5", tmp_path / "s1.h5"],
        tmp_path / "full",
        epochs=3,
        protocol="full",
        probe=ProbeSettings(c_grid="0.01,1", knn_ks="1,5", bootstrap=100),
        plot=tmp_path / "full.png",
    )
    # the same images: every row matched; the seed also moved some rows to other splits
    assert len(board.notes) == 1 and "in another split in a later cache" in board.notes[0]
    assert len(board.rows) == 9 and board.best is None
    assert {(r["source"], r["protocol"]) for r in board.rows} == {
        (s, p) for s in ("s0", "s1", "s0+s1") for p in ("linear-probe", "knn", "dense")
    }
    for row in board.rows:
        assert row["test_acc5"] is None  # 3 classes
        assert row["test_acc1_low"] <= row["test_acc1"] <= row["test_acc1_high"]
    assert (tmp_path / "full.png").stat().st_size > 0


def test_a_cache_without_val_rows_gets_ten_percent_of_train_carved(tmp_path):
    rows, a, _ = separable(per_class=(20, 0, 5))
    write_cache(tmp_path / "noval.h5", rows, a)
    board = compare(
        tmp_path / "noval.h5",
        tmp_path / "c",
        protocol="knn",
        probe=ProbeSettings(knn_ks="1,3", bootstrap=50),
    )
    row = board.rows[0]
    assert row["selection"] == "carved val"
    assert row["val_rows"] == 2 * 8 and row["train_rows"] == 18 * 8  # 10% of 20 per class
    assert any("carved from train" in note for note in board.notes)


def test_the_same_cache_twice_is_refused(two_caches, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = str(two_caches[0])
    result = CliRunner().invoke(main, ["compare", a, a, "--protocol", "knn"])
    assert result.exit_code == 2 and "given twice" in result.output
    assert len(result.output.splitlines()) == 1


def test_quick_on_one_cache_prints_as_before(tmp_path):
    rows, a, _ = separable(per_class=(10, 0, 4))
    write_cache(tmp_path / "noval.h5", rows, a)
    result = CliRunner().invoke(
        main,
        ["compare", str(tmp_path / "noval.h5"), "-o", str(tmp_path / "q"), "--heads", "logreg"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == [
        "head", "val", "accuracy", "test", "acc", "(95%", "CI)", "test", "F1", "fit", "s",
        "params",
    ]  # fmt: skip
    assert "note:" not in result.output and "source" not in result.output
