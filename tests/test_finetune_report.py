"""fine-tune's report tells the truth about the model it exported: its val and test figures
are what ``predict`` gives on the same files with ``model.keras``."""

from __future__ import annotations

import concurrent.futures
import csv
import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from featcache.heads.report import metrics

pytestmark = pytest.mark.slow


def _folder(root, per_class=8):
    """Three colour-coded classes of 37x35 images: resizing to 32 px gives pixels between
    integers, where a rounding decode and ``predict``'s differ."""
    rng = np.random.default_rng(3)
    for k in range(3):
        for i in range(per_class):
            pixels = rng.integers(0, 90, (35, 37, 3))
            pixels[..., k] += 150
            (root / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _predicted_metrics(tmp_path, model, report, name):
    """``predict`` on the val and test files (as the cache lists them) -> metrics of each."""
    from featcache.store.reader import CacheReader

    reader = CacheReader(report["cache"])
    root = reader.settings.dataset_root
    rows = {split: reader.rows_of(split, labelled=True) for split in ("val", "test")}
    files = {split: [f"{root}/{reader.paths[i]}" for i in rows[split]] for split in rows}
    listing = tmp_path / f"{name}.csv"
    _run("predict", model, *files["val"], *files["test"], "-o", listing, "--quiet")
    by_path = {r["path"]: r["class"] for r in csv.DictReader(open(listing))}
    names = report["class_names"]
    return {
        split: metrics(
            reader.labels[rows[split]],
            np.array([names.index(by_path[f]) for f in files[split]]),
            names,
        )
        for split in rows
    }


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """extract (random VGG16 at 32 px) then train-head (a head that learned nothing yet), by
    the CLI: the colour folder, its cache and the head run."""
    root = tmp_path_factory.mktemp("colour")
    data = _folder(root / "data")
    cache = root / "c.h5"
    _run("extract", data, "-o", cache, "--backbone", "vgg16", "--weights", "none",
         "--image-size", 32, "--split", "0.5,0.25,0.25", "--quiet")  # fmt: skip
    _run("train-head", cache, "--head", "dense", "--hidden", "8", "--epochs", 1, "--lr", 1e-7,
         "-o", root / "head")  # fmt: skip
    return data, cache, root / "head"


def test_journey_extract_train_fine_tune_predict_agree_with_the_report(colour_run, tmp_path):
    _, cache, head = colour_run
    # the fallback learns nothing at 1e-12 whatever its epochs: one (one phase to trace)
    for name, lr, epochs, exported in (
        ("tuned", 1e-3, 2, "fine-tuned"),
        ("fallback", 1e-12, 1, "head-only"),
    ):
        out = tmp_path / name
        _run("fine-tune", cache, "--head", head, "-o", out, "--epochs", epochs,
             "--batch-size", 4, "--lr", lr, "--json")  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["exported"] == exported
        predicted = _predicted_metrics(tmp_path, out / "model.keras", report, name)
        for split, got in predicted.items():
            assert got["confusion_matrix"] == report[split]["confusion_matrix"], (name, split)
            assert got["accuracy"] == report[split]["accuracy"]
        assert report["test_accuracy"] == report["test"]["accuracy"]


def test_fine_tune_feeds_the_pixels_predict_feeds(tmp_path):
    """The images fine-tune trains and scores on are ``predict``'s, bit for bit (they were
    rounded to uint8: up to 0.5 off, enough to flip near ties)."""
    from featcache.extractor.sources import item_from_path, open_source
    from featcache.heads.finetune_images import Rows, read_images
    from featcache.heads.images import Classifier

    data = _folder(tmp_path / "data", per_class=2)
    paths = sorted(str(p.relative_to(data)) for p in data.glob("c*/*.png"))
    source = open_source(data)
    sha = [source.read(item_from_path(p))[1] for p in paths]
    rows = Rows(paths, np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int64), sha)
    classifier = Classifier(lambda x: x, ["a"], (32, 32), "stretch", "exact")
    fed = [pixels for pixels, _ in read_images(rows, source, (32, 32), ("stretch", "exact"))]
    for path, pixels in zip(paths, fed):
        expected = classifier.prepare((data / path).read_bytes())
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels, expected)
    assert any(not np.array_equal(p, np.round(p)) for p in fed)  # the case that mattered


def _imbalanced(root):
    """The colour classes at 12 / 5 / 3 images (60 / 25 / 15 %)."""
    _folder(root, per_class=12)
    for k, keep in ((1, 5), (2, 3)):
        for i in range(keep, 12):
            (root / f"c{k}" / f"{i}.png").unlink()
    return root


def test_imbalanced_train_is_balanced_by_sampling_steadily_and_within_a_time_budget(tmp_path):
    from featcache import extract
    from featcache.heads.finetune import fine_tune
    from featcache.heads.train import train_head

    data = _imbalanced(tmp_path / "data")
    cache = tmp_path / "c.h5"
    extract(data, output=cache, backbone="vgg16", weights="none", image_size=32,
            split="0.5,0.25,0.25", progress=False)  # fmt: skip
    train_head(cache, head="dense", hidden=(8,), epochs=1, lr=1e-7, output=tmp_path / "head")
    report = fine_tune(cache, tmp_path / "head", output=tmp_path / "ft", epochs=4, batch_size=4,
                       lr=1e-3).report  # fmt: skip
    assert report["balance"] == {"asked": "auto", "used": "sample"}
    assert report["best"]["selected_by"] == "val_balanced_accuracy"
    phases = report["phases"]
    assert [p["name"] for p in phases][:2] == ["head-only", "head"]  # the head re-fit first
    assert "best_epoch" not in phases[1]  # at the cache's size: one epoch on the images
    # steady: no epoch-to-epoch swing of val accuracy over a third of the val rows
    seen = [v for p in phases[1:] for v in p["val_accuracy"]]
    assert max(abs(a - b) for a, b in itertools.pairwise(seen)) <= 1 / 3
    head_val = (phases[0]["val_accuracy"][0], phases[0]["val_balanced_accuracy"][0])
    assert report["val"]["accuracy"] >= head_val[0] - 1e-6  # no trade: neither figure drops
    assert report["val"]["balanced_accuracy"] >= head_val[1] - 1e-6
    plan = report["plan"]
    assert plan["estimated_seconds"] > 0 and plan["epochs_planned"] == 4
    assert set(plan["step_seconds"]) == {p["name"] for p in phases[1:]}
    # a budget nothing fits: no training, the head exported, said so
    tight = fine_tune(cache, tmp_path / "head", output=tmp_path / "tight", epochs=1,
                      batch_size=4, time_budget="0.01s").report  # fmt: skip
    assert tight["exported"] == "head-only" and tight["epochs_run"] == 0
    assert tight["plan"]["time_budget"] == 0.01
    assert any("time budget" in n for n in tight["plan"]["notes"])


def test_journey_fine_tune_with_test_views_predicts_and_serves_the_averaged_model(
    colour_run, tmp_path
):
    """extract -> train-head -> fine-tune --test-views all -> predict and the gRPC server:
    model.keras averages every image's 8 quarter-turned and mirrored views, and the report,
    predict and Classify all give what that average gives."""
    from featcache import ServeOptions, start_server
    from featcache.heads.endtoend import build, load_model, test_views_of
    from featcache.heads.images import load_classifier
    from featcache.service.client import Client

    data, cache, head = colour_run
    out = tmp_path / "ft"
    shown = _run("fine-tune", cache, "--head", head, "-o", out, "--epochs", 1,
                 "--batch-size", 4, "--lr", 1e-12, "--test-views", "all")  # fmt: skip
    assert "test views: 8 views (all, asked); predict runs the backbone 8x per image" in shown
    report = json.loads((out / "report.json").read_text())
    assert report["exported"] == "head-only"  # 1e-12 learns nothing: the head's weights
    assert report["test_views"]["chosen"] == "all" and report["test_views"]["views"] == 8
    model, _, _ = load_model(out / "model.keras")
    assert test_views_of(model) == "all"
    # the head alone, averaged by hand over the 8 views, is what model.keras computes
    alone = build(head).model
    files = sorted(data.glob("c*/*.png"))[:5]
    prepared = np.stack(
        [load_classifier(out / "model.keras").prepare(f.read_bytes()) for f in files]
    )
    views = [np.rot90(prepared, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    by_hand = np.mean([np.asarray(alone(np.ascontiguousarray(v))) for v in views], axis=0)
    averaged = np.asarray(model(prepared))
    np.testing.assert_allclose(averaged, by_hand, atol=1e-6)
    assert not np.allclose(averaged, np.asarray(alone(prepared)), atol=1e-6)
    predicted = _predicted_metrics(tmp_path, out / "model.keras", report, "views")
    for split, got in predicted.items():
        assert got["confusion_matrix"] == report[split]["confusion_matrix"], split
    srv = start_server(ServeOptions(port=0, models=[f"views={out / 'model.keras'}"]))
    asked = [[(t + i) % len(files) for i in range(1 + t % len(files))] for t in range(8)]
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            remote = client.classify([str(f) for f in files], "views", top_k=3)
            # eight clients at once: the server's batcher mixes their images, cut to
            # max_batch / 8 per call, and each still gets its own images' averages
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(
                    lambda rows: client.classify([str(files[r]) for r in rows], "views",
                                                 top_k=3), asked))  # fmt: skip
    finally:
        srv.stop(0)
    names = report["class_names"]
    for reply, row in zip(remote, averaged):
        got = dict(reply["top"])
        np.testing.assert_allclose([got[n] for n in names], row, atol=1e-5)
    for rows, got_rows in zip(asked, replies, strict=True):
        assert len(got_rows) == len(rows)
        for r, reply in zip(rows, got_rows):
            got = dict(reply["top"])
            np.testing.assert_allclose([got[n] for n in names], averaged[r], atol=1e-5)


def test_auto_test_views_follow_the_augmentation_and_never_lower_val(colour_run, tmp_path):
    """auto: flip alone -> the mirror pair is tried; kept only when val is no worse with it;
    a fixed schedule without flips -> one view, nothing tried."""
    from featcache.heads.finetune import fine_tune
    from featcache.heads.test_views import views_of_augment

    assert [views_of_augment(a) for a in ("flip,crop", "vflip,rotate90", "flip,rotate90", "")] \
        == ["mirror", "turns", "all", "none"]  # fmt: skip
    _, cache, head = colour_run
    # (the rate given: the views do not depend on it, and the range test is timed elsewhere)
    result = fine_tune(cache, head, output=tmp_path / "ft", epochs=1, batch_size=4, lr=1e-3,
                       augment="flip,contrast", balance="none")  # fmt: skip
    record = result.report["test_views"]
    assert record["by"] == "augmentation" and record["candidate"] == "mirror"
    one, floor = record["one_view_val"], record["floor"]
    lowest = {k: min(floor[k], one[k]) - 1e-4 for k in ("accuracy", "balanced_accuracy")}
    if record["chosen"] == "mirror":
        assert not record["paired"]["worse"]
        assert all(record["val"][k] >= lowest[k] for k in lowest)
    else:
        worse = record["candidate_val"]
        assert record["paired"]["worse"] or any(worse[k] < lowest[k] for k in lowest)
        assert record["val"] == one
    assert result.report["val"]["accuracy"] == pytest.approx(record["val"]["accuracy"], abs=1e-4)
    # the time plan counted the views: val once and twice (mirror), test twice, at most
    plan, rows = result.report["plan"], result.report["rows"]
    assert plan["evaluate_passes"] == {"val": 3, "test": 2}
    share = (3 * rows["val"] + 2 * rows["test"]) / rows["val"]
    # an image's views share its reading: val read twice (one view, then two), test once
    assert plan["evaluate_reads"] == {"val": 2, "test": 1}
    reads = (2 * rows["val"] + rows["test"]) / rows["val"]
    read, model_share = plan["val_read_seconds"], plan["val_seconds"] - plan["val_read_seconds"]
    expected = read * reads + model_share * share
    assert plan["evaluate_seconds"] == pytest.approx(expected, abs=0.01 * (share + reads))
    assert result.report["evaluate_seconds"] > 0  # what it took, beside the estimate
    fixed = fine_tune(cache, head, output=tmp_path / "fixed", schedule="fixed",
                      epochs=1, batch_size=4)  # fmt: skip
    assert fixed.report["test_views"]["chosen"] == "none"
    assert "candidate" not in fixed.report["test_views"]


def test_views_are_vetoed_by_a_significant_val_loss_or_the_head_floor():
    from featcache.heads.test_views import evaluation_passes, paired, veto

    # what the time plan counts: (val passes, test passes) of each image
    assert evaluation_passes("none", "flip") == evaluation_passes("auto", "crop") == (1, 1)
    assert evaluation_passes("auto", "flip") == (3, 2)  # one view checked, then 2 views
    assert evaluation_passes("auto", "flip,rotate90") == (9, 8)
    assert evaluation_passes("turns", None) == (4, 4)  # asked: no one-view check

    right_alone = np.array([True] * 20 + [False] * 10)
    lose_one = right_alone.copy()
    lose_one[0] = False  # 1 lost, 0 won: noise, not a significant loss
    assert paired(lose_one, right_alone) == {"gained": 0, "lost": 1, "worse": False}
    lose_many = right_alone.copy()
    lose_many[:6] = False
    lose_many[20] = True  # 6 lost, 1 won: 5 > 1.645 * sqrt(7)
    assert paired(lose_many, right_alone)["worse"]
    one = {"accuracy": 0.9, "balanced_accuracy": 0.8}
    quiet = paired(lose_one, right_alone)
    assert veto({"accuracy": 0.89, "balanced_accuracy": 0.8}, one, quiet, None) is None
    # under the head's val on either figure: dropped, even without a significant loss
    below = veto({"accuracy": 0.89, "balanced_accuracy": 0.8}, one, quiet, (0.9, 0.7))
    assert below is not None and below.startswith("below the head")
    assert veto({"accuracy": 0.9, "balanced_accuracy": 0.79}, one, quiet, (0.9, 0.8))
    # kept weights already below the head (a trade the user allowed): their own figures
    assert veto({"accuracy": 0.9, "balanced_accuracy": 0.8}, one, quiet, (0.95, 0.85)) is None
    assert veto(
        {"accuracy": 0.9, "balanced_accuracy": 0.8}, one, paired(lose_many, right_alone), None
    )
