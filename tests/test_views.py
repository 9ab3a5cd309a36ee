"""Cached augmented views: K embeddings per image, view 0 the plain image (issue 16, item 3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from featcache import extract, read_cache, train_head
from featcache.cli import main
from featcache.errors import (
    DatasetError,
    ExtractionCancelled,
    InvalidOptionError,
    SettingsMismatchError,
)
from featcache.extractor.views import augment_image, view_rng
from featcache.heads.data import load_splits
from featcache.heads.train import load_head
from featcache.heads.view_training import TrainViews, feature_augment
from featcache.store import CacheReader
from helpers import COMMIT_EVERY_BATCH, TINY, RowWatch, make_class_folder, write_image

SHA = "ab" * 32


def _views(path):
    """path -> (views, D) of every row of a cache."""
    reader = CacheReader(path)
    return dict(zip(reader.paths, reader.view_features()))


# -- the augmentations -------------------------------------------------------------------


def test_augmentations_depend_only_on_seed_sha_and_view():
    image = np.random.default_rng(0).uniform(0, 255, (32, 40, 3)).astype(np.float32)
    every = ("flip", "crop", "color")
    first = augment_image(image, every, view_rng(7, SHA, 1))
    again = augment_image(image.copy(), every, view_rng(7, SHA, 1))
    np.testing.assert_array_equal(first, again)
    assert first.shape == image.shape and first.dtype == np.float32
    assert 0 <= first.min() and first.max() <= 255
    others = [
        augment_image(image, every, view_rng(8, SHA, 1)),
        augment_image(image, every, view_rng(7, "cd" * 32, 1)),
        augment_image(image, every, view_rng(7, SHA, 2)),
    ]
    for other in others:
        assert not np.allclose(other, first)


def test_flip_only_mirrors_and_crop_keeps_the_size():
    image = np.random.default_rng(1).uniform(0, 255, (24, 30, 3)).astype(np.float32)
    # flip alone: view 1 is always the mirror (never a copy of view 0)
    for seed in range(8):
        flip = augment_image(image, ("flip",), view_rng(seed, SHA, 1))
        np.testing.assert_array_equal(flip, image[:, ::-1])
    # with another augmentation, a coin toss per view
    flips = [augment_image(image, ("flip", "color"), view_rng(0, SHA, v)) for v in range(1, 17)]
    left = [float(np.corrcoef(f[:, 0].ravel(), image[:, 0].ravel())[0, 1]) for f in flips]
    mirrored = sum(c < 0.9 for c in left)
    assert 0 < mirrored < len(flips)  # about half the views are flipped
    crop = augment_image(image, ("crop",), view_rng(0, SHA, 1))
    assert crop.shape == image.shape and not np.allclose(crop, image)
    color = augment_image(image, ("color",), view_rng(0, SHA, 1))
    assert not np.allclose(color, image)


# -- extraction --------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    return make_class_folder(tmp_path / "data", classes=2, per_class=3)


def test_views_are_stored_next_to_unchanged_features(tmp_path, data):
    plain = extract(data, output=tmp_path / "plain.h5", **TINY)
    summary = extract(data, output=tmp_path / "views.h5", views=3, augment_seed=5, **TINY)
    assert summary.rows == plain.rows == 6
    assert (summary.views, plain.views) == (3, 1)
    reader = CacheReader(tmp_path / "views.h5")
    assert reader.views == 3
    assert reader.settings.augment == ("flip", "crop", "color")
    assert reader.settings.augment_seed == 5
    assert reader.attrs["views"] == 3 and reader.attrs["augment"] == "flip,crop,color"
    assert reader.fingerprint == CacheReader(tmp_path / "plain.h5").fingerprint
    stacked = reader.view_features()
    assert stacked.shape == (6, 3, summary.feature_dim)
    # view 0 is the plain image: the features every existing reader sees
    before = read_cache(tmp_path / "plain.h5")
    np.testing.assert_allclose(read_cache(tmp_path / "views.h5").features, before.features)
    np.testing.assert_allclose(stacked[:, 0], before.features)
    assert not np.allclose(stacked[:, 1], stacked[:, 0], atol=1e-4)
    assert not np.allclose(stacked[:, 2], stacked[:, 1], atol=1e-4)
    rows = np.asarray([4, 1])
    np.testing.assert_allclose(reader.view_features(rows), stacked[rows])
    no_views = CacheReader(tmp_path / "plain.h5")
    assert no_views.views == 1 and "views" not in no_views.attrs
    assert no_views.view_features().shape == (6, 1, summary.feature_dim)


def test_a_rerun_with_other_view_settings_is_refused(tmp_path, data):
    out = tmp_path / "views.h5"
    extract(data, output=out, views=2, augment="flip,crop", **TINY)
    again = extract(data, output=out, views=2, augment="crop,flip", **TINY)
    assert (again.new, again.reused) == (0, 6)
    for changes, named in (
        ({"views": 1}, "views 2 (cache) vs 1 (now)"),
        ({"views": 3, "augment": "flip,crop"}, "views 2 (cache) vs 3 (now)"),
        ({"augment": "flip"}, "augment 'flip,crop' (cache) vs 'flip' (now)"),
        ({"augment_seed": 1}, "augment_seed 20 (cache) vs 1 (now)"),
        ({"views": 2, "augment": "flip"}, "augment 'flip,crop' (cache) vs 'flip' (now)"),
        ({"views": 2, "augment": "flip,crop", "augment_seed": 1}, "augment_seed 20 (cache)"),
    ):
        with pytest.raises(SettingsMismatchError, match=re.escape(named)):
            extract(data, output=out, **changes, **TINY)
    # --overwrite recomputes with the new settings
    summary = extract(data, output=out, views=4, overwrite=True, **TINY)
    assert summary.new == 6 and CacheReader(out).view_features().shape[1] == 4


def test_a_rerun_without_view_settings_keeps_the_cached_views(tmp_path, data):
    """views, augment and augment_seed not given: the cache's (a fresh cache: 1 view)."""
    out = tmp_path / "views.h5"
    extract(data, output=out, views=3, augment="flip,crop", augment_seed=7, **TINY)
    before = _views(out)
    write_image(data / "class_0" / "new.png", 99)
    summary = extract(data, output=out, **TINY)
    assert (summary.new, summary.reused, summary.views) == (1, 6, 3)
    settings = CacheReader(out).settings
    assert (settings.views, settings.augment, settings.augment_seed) == (3, ("flip", "crop"), 7)
    now = _views(out)
    for path, views in before.items():
        np.testing.assert_array_equal(now[path], views, err_msg=path)
    fresh = extract(
        data, output=tmp_path / "fresh.h5", views=3, augment="flip,crop", augment_seed=7, **TINY
    )  # the new row's views as one run makes them
    np.testing.assert_allclose(
        now["class_0/new.png"], _views(tmp_path / "fresh.h5")["class_0/new.png"], atol=1e-5
    )
    assert fresh.views == 3
    # only the views given: the cache's augmentations and seed
    again = extract(data, output=out, views=3, **TINY)
    assert (again.new, again.reused) == (0, 7)
    # a cache without views, a fresh cache and --overwrite: 1 view
    plain = extract(data, output=tmp_path / "plain.h5", **TINY)
    assert plain.views == 1 and CacheReader(tmp_path / "plain.h5").views == 1
    assert extract(data, output=tmp_path / "plain.h5", **TINY).reused == 7
    replaced = extract(data, output=out, overwrite=True, **TINY)
    assert (replaced.new, replaced.views, CacheReader(out).views) == (7, 1, 1)


def test_views_made_by_an_older_augmentation_procedure_are_not_extended(tmp_path, data):
    """Views caches record the augmentation version; one from before it was recorded reads
    as version 1 and is never resumed or extended with views of the current procedure."""
    import h5py

    from featcache.core.options import AUGMENT_VERSION

    out = tmp_path / "views.h5"
    extract(data, output=out, views=2, augment="flip", **TINY)
    assert CacheReader(out).attrs["augment_version"] == AUGMENT_VERSION == 2
    with h5py.File(out, "a") as handle:  # as featcache wrote it before the attribute
        del handle.attrs["augment_version"]
    assert CacheReader(out).settings.augment_version == 1
    named = "augment_version 1 (cache) vs 2 (now): the views were made by another"
    with pytest.raises(SettingsMismatchError, match=re.escape(named)):
        extract(data, output=out, views=2, augment="flip", **TINY)
    assert CacheReader(out).view_features().shape == (6, 2, CacheReader(out).feature_dim)
    plain = extract(data, output=tmp_path / "plain.h5", **TINY)  # no views: no version
    assert "augment_version" not in CacheReader(tmp_path / "plain.h5").attrs
    assert plain.views == 1
    summary = extract(data, output=out, views=2, augment="flip", overwrite=True, **TINY)
    assert summary.new == 6 and CacheReader(out).settings.augment_version == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"views": 0}, "views 0: expected 1 to 64"),
        ({"views": 65}, "views 65"),
        ({"views": 2, "augment": "flip,blur"}, "augment 'blur': expected one of flip, crop"),
        ({"augment": "flip"}, "augmentations need views 2 or more"),
        ({"augment_seed": 3}, "augment_seed 3: seeds the views: needs views 2 or more"),
        ({"views": 2, "augment_seed": -1}, "augment_seed -1"),
        ({"views": 2, "remote": "127.0.0.1:1"}, "remote server embeds plain images only"),
        ({"views": 3, "augment": "flip"}, "views 3: augment 'flip' alone makes one other"),
    ],
)
def test_bad_view_options_fail_before_any_file(tmp_path, data, changes, message):
    with pytest.raises(InvalidOptionError, match=message):
        extract(data, output=tmp_path / "x.h5", **changes, **TINY)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("rows_per_step", [None, 2])
def test_incremental_runs_keep_and_add_views_as_one_run_makes_them(
    tmp_path, data, monkeypatch, rows_per_step
):
    """New, changed and deleted files: every row's views equal those of a fresh run (also
    when the rewrite copies rows and their views a few at a time)."""
    if rows_per_step:  # the copy step is sized from a row's K views: 2 rows a step here
        from featcache.store import writer

        monkeypatch.setattr(writer, "_COPY_CHUNK_BYTES", rows_per_step * 3 * 512 * 4)
    out = tmp_path / "views.h5"
    options = {"views": 3, "augment_seed": 3, **TINY}
    extract(data, output=out, **options)
    first = _views(out)
    write_image(data / "class_0" / "new.png", 99)
    write_image(data / "class_1" / "img_0.png", 98)  # changed content: new views
    (data / "class_1" / "img_1.jpg").unlink()
    summary = extract(data, output=out, **options)
    assert (summary.new, summary.removed) == (2, 1)
    fresh_dir = tmp_path / "fresh"
    shutil.copytree(data, fresh_dir)
    extract(fresh_dir, output=tmp_path / "fresh.h5", **options)
    now, fresh = _views(out), _views(tmp_path / "fresh.h5")
    assert set(now) == set(fresh) == (set(first) - {"class_1/img_1.jpg"}) | {"class_0/new.png"}
    for path, views in now.items():
        np.testing.assert_allclose(views, fresh[path], atol=1e-5, err_msg=path)
    np.testing.assert_allclose(now["class_0/img_0.png"], first["class_0/img_0.png"], atol=1e-6)
    assert not np.allclose(now["class_1/img_0.png"], first["class_1/img_0.png"], atol=1e-4)


def test_a_cancelled_run_resumes_to_the_views_of_one_run(tmp_path, data):
    out = tmp_path / "views.h5"
    options = {"views": 2, "batch_size": 2, "checkpoint_seconds": 0, **TINY}
    extract(data, output=tmp_path / "whole.h5", **options)
    cancel = threading.Event()

    def stop_after_a_batch(progress):
        if progress.embedded >= 2:
            cancel.set()

    with pytest.raises(ExtractionCancelled):
        extract(data, output=out, on_progress=stop_after_a_batch, cancel=cancel, **options)
    partial = CacheReader(out)
    assert 2 <= len(partial) < 6
    assert partial.view_features().shape[1] == 2
    summary = extract(data, output=out, **options)
    assert summary.reused == len(partial) and summary.new == 6 - len(partial)
    whole, resumed = _views(tmp_path / "whole.h5"), _views(out)
    assert set(whole) == set(resumed)
    for path, views in whole.items():
        np.testing.assert_allclose(resumed[path], views, atol=1e-5, err_msg=path)


# -- heads on views ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory):
    """A 3-class cache with 3 views per image (and the same images without views)."""
    root = tmp_path_factory.mktemp("views_heads")
    data = make_class_folder(root / "data", classes=3, per_class=6)
    extract(data, output=root / "views.h5", views=3, split="0.6,0.2,0.2", **TINY)
    extract(data, output=root / "plain.h5", split="0.6,0.2,0.2", **TINY)
    return root


def _epoch(source, seed=0, epoch=1, strength=0.0, std=None):
    batches = list(source.batches(4, seed, epoch, strength, std))
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


@pytest.mark.parametrize("stream", [False, True])
def test_view_modes_draw_the_rows_they_promise(views_cache, stream):
    splits = load_splits(views_cache / "views.h5")
    stacked = splits.reader.view_features(splits.train.rows)  # (N, 3, D)
    n, k, dim = stacked.shape
    labels = splits.train.labels
    every = TrainViews(splits, "all", stream)
    x, y = _epoch(every)
    assert x.shape == (n * k, dim)
    want = {(tuple(row.round(5)), label) for views, label in zip(stacked, labels) for row in views}
    assert {(tuple(row.round(5)), label) for row, label in zip(x, y)} == want
    x, y = _epoch(TrainViews(splits, "mean", stream))
    assert x.shape == (n, dim)
    means = {tuple(row.round(5)): label for row, label in zip(stacked.mean(axis=1), labels)}
    assert {tuple(row.round(5)): label for row, label in zip(x, y)} == means
    one = TrainViews(splits, "one", stream)
    drawn = []
    for epoch in (1, 2, 3):
        x, y = _epoch(one, epoch=epoch)
        assert x.shape == (n, dim)
        # each train row once, as one of its own views
        match = np.isclose(x[:, None, None, :], stacked[None], atol=1e-6).all(axis=-1)
        assert match.any(axis=(1, 2)).all()
        source = match.any(axis=2).argmax(axis=1)
        assert sorted(source.tolist()) == list(range(n))
        np.testing.assert_array_equal(y, labels[source])
        drawn.append(match[np.arange(n), source].argmax(axis=1)[np.argsort(source)])
        np.testing.assert_array_equal(x, _epoch(one, epoch=epoch)[0])  # seeded
    assert len({v for d in drawn for v in d.tolist()}) == k  # every view gets drawn
    assert not np.array_equal(drawn[0], drawn[1])


def test_stream_and_memory_give_the_same_epochs(views_cache):
    splits = load_splits(views_cache / "views.h5")
    for mode in ("plain", "one", "all", "mean"):
        memory, streamed = TrainViews(splits, mode, False), TrainViews(splits, mode, True)
        np.testing.assert_allclose(_epoch(memory, epoch=2)[0], _epoch(streamed, epoch=2)[0])
        for a, b in zip(memory.stats(), streamed.stats()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_feature_augment_is_seeded_per_epoch_and_bounded(views_cache):
    splits = load_splits(views_cache / "views.h5")
    source = TrainViews(splits, "plain", False)
    std = np.sqrt(source.stats()[1])
    plain, _ = _epoch(source)
    augmented, _ = _epoch(source, strength=0.2, std=std)
    np.testing.assert_array_equal(augmented, _epoch(source, strength=0.2, std=std)[0])
    assert not np.allclose(augmented, _epoch(source, epoch=2, strength=0.2, std=std)[0])
    rng = np.random.default_rng(0)
    x = plain[:4]
    out = feature_augment(x, 0.2, std, rng)
    assert np.all(np.abs(out - x) <= 0.2 * np.abs(x) + 0.2 * std + 1e-6)
    assert not np.allclose(out, x)


def test_all_and_mean_take_only_the_rows_they_return(views_cache):
    """The whole train set of ``all`` (what an sklearn head fits on) is the views in row
    order, the labels repeated to match, without building a K times larger array."""
    import tracemalloc

    splits = load_splits(views_cache / "views.h5")
    stacked = splits.reader.view_features(splits.train.rows)  # (N, 3, D)
    n, k, dim = stacked.shape
    every = TrainViews(splits, "all", False)
    tracemalloc.start()
    x = every.take(np.arange(len(every)), None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(x, stacked.reshape(n * k, dim), atol=1e-6)
    np.testing.assert_array_equal(every.labels, np.repeat(splits.train.labels, k))
    assert peak < x.nbytes  # no copy at all: the old take() made (N*K, K, D) first
    entries = np.array([5, 0, 4, 4, 2])  # (row, view) pairs (1, 2), (0, 0), (1, 1), (0, 2)
    want = stacked[entries // k, entries % k]
    for stream in (False, True):
        np.testing.assert_allclose(TrainViews(splits, "all", stream).take(entries, None), want)
    mean = TrainViews(splits, "mean", False)
    assert mean._memory is not None and mean._memory.shape == (n, 1, dim)  # means only
    np.testing.assert_allclose(mean.take(np.arange(n), None), stacked.mean(axis=1), atol=1e-6)


def test_view_pairs_read_the_views_asked(views_cache):
    reader = CacheReader(views_cache / "views.h5")
    every = reader.view_features()  # (N, 3, D)
    rows = np.array([7, 2, 7, 0, 11, 2, 5, 16])  # unsorted, repeated, each view
    views = np.array([2, 0, 1, 1, 0, 2, 2, 0])
    np.testing.assert_array_equal(reader.view_pairs(rows, views), every[rows, views])
    assert reader.view_pairs(rows[:0], views[:0]).shape == (0, reader.feature_dim)
    with pytest.raises(IndexError, match=re.escape("views outside 0..2")):
        reader.view_pairs(rows, views + 1)
    with pytest.raises(IndexError, match="rows outside"):
        reader.view_pairs(rows + 100, views)
    with pytest.raises(ValueError, match="8 rows but 2 views"):
        reader.view_pairs(rows, views[:2])
    plain = CacheReader(views_cache / "plain.h5")
    np.testing.assert_array_equal(plain.view_pairs(rows, 0 * views), plain.features(rows))


def test_a_streamed_one_epoch_reads_one_view_per_entry(views_cache, monkeypatch):
    """Streamed ``one`` reads each batch's (row, view) pairs, not every view of its rows,
    and gives the epochs of the in-memory views."""
    splits = load_splits(views_cache / "views.h5")
    want = _epoch(TrainViews(splits, "one", False), epoch=4)
    pairs = []
    real = splits.reader.view_pairs

    def counted(rows, views):
        pairs.append(len(rows))
        return real(rows, views)

    def refused(rows=None):
        raise AssertionError("every view of the rows read")

    monkeypatch.setattr(splits.reader, "view_pairs", counted)
    monkeypatch.setattr(splits.reader, "view_features", refused)
    got = _epoch(TrainViews(splits, "one", True), epoch=4)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert sum(pairs) == len(splits.train.rows)


def test_a_streamed_all_epoch_reads_each_view_once(views_cache, monkeypatch):
    splits = load_splits(views_cache / "views.h5")
    n = len(splits.train.rows)
    reads = []
    real = splits.reader.view_features

    def counted(rows=None):
        reads.append(len(rows))
        return real(rows)

    monkeypatch.setattr(splits.reader, "view_features", counted)
    source = TrainViews(splits, "all", True)
    x, _ = _epoch(source)
    assert x.shape == (n * 3, splits.feature_dim)
    assert sum(reads) == n  # one block here: every row's views read once, not per batch


def test_the_report_says_when_fit_views_streamed_on_its_own(views_cache, tmp_path, monkeypatch):
    """The dense head streams the train views when their K copies would not fit, even where
    view 0 alone would: the report records what training did."""
    from featcache.heads import view_training

    cache = views_cache / "views.h5"
    kept = train_head(cache, output=tmp_path / "a", views="all", epochs=1)
    assert kept.report["streamed"] is False and kept.report["stream_option"] is None
    monkeypatch.setattr(view_training, "DEFAULT_MEMORY_FRACTION", 0.0)  # no views fit
    streamed = train_head(cache, output=tmp_path / "b", views="all", epochs=1)
    assert streamed.report["streamed"] is True and streamed.report["stream_option"] is None
    forced = train_head(cache, output=tmp_path / "c", views="all", epochs=1, stream=False)
    assert forced.report["streamed"] is False


@pytest.mark.parametrize(
    "options",
    [
        {"views": "one"},
        {"views": "all", "feature_augment": 0.1, "standardize": True},
        {"views": "mean", "stream": True},
        {"views": "all", "head": "logreg"},
        {"views": "mean", "head": "knn", "k": 3},
    ],
)
def test_heads_train_on_views_and_score_on_view_0(views_cache, tmp_path, options):
    result = train_head(views_cache / "views.h5", output=tmp_path / "run", epochs=3, **options)
    assert result.report["views"] == options["views"]
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    assert (meta["views"], meta["feature_augment"]) == (
        options["views"],
        options.get("feature_augment", 0.0),
    )
    splits = load_splits(views_cache / "views.h5")
    head = load_head(tmp_path / "run")
    for name in ("val", "test"):
        split = getattr(splits, name)
        predicted = head.predict(splits.reader.features(split.rows))  # view 0
        accuracy = float(np.mean(predicted == split.labels))
        assert result.report[name]["accuracy"] == pytest.approx(accuracy)


def test_view_options_that_cannot_work_are_refused(views_cache, tmp_path):
    with pytest.raises(DatasetError, match="holds one view per image; extract it with --views"):
        train_head(views_cache / "plain.h5", output=tmp_path / "a", views="all")
    with pytest.raises(InvalidOptionError, match="views 'one': draws a view per epoch"):
        train_head(views_cache / "views.h5", output=tmp_path / "b", head="logreg", views="one")
    with pytest.raises(InvalidOptionError, match=r"feature_augment 0\.1: augments the rows"):
        train_head(views_cache / "views.h5", output=tmp_path / "c", head="knn", feature_augment=0.1)
    with pytest.raises(InvalidOptionError, match="feature_augment 2"):
        train_head(views_cache / "views.h5", output=tmp_path / "d", feature_augment=2)
    with pytest.raises(InvalidOptionError, match="views 'some'"):
        train_head(views_cache / "views.h5", output=tmp_path / "e", views="some")
    both = [views_cache / "views.h5", views_cache / "plain.h5"]
    with pytest.raises(DatasetError, match="several caches train on view 0 only"):
        train_head(both, output=tmp_path / "f", views="mean")
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_cli_extract_views_then_train_head(tmp_path, views_cache):
    out, data = tmp_path / "views.h5", views_cache / "data"
    args = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    args += ["--split", "0.6,0.2,0.2"]
    result = CliRunner().invoke(
        main, ["extract", str(data), "-o", str(out), *args, "--views", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["views"] == 2
    assert CacheReader(out).settings.augment == ("flip", "crop", "color")
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    for line in ("views          2", "augment        flip,crop,color", "augment_seed   20"):
        assert line in shown.output
    plain = CliRunner().invoke(main, ["inspect", str(views_cache / "plain.h5")])
    assert "  views          1\n" in plain.output and "augment" not in plain.output
    # a rerun without the view flags keeps the cached views; other views are refused
    rerun = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *args, "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.output)["views"] == 2 and json.loads(rerun.output)["new"] == 0
    other = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *args, "--views", "3"])
    assert other.exit_code == 2
    keep = "rerun without --views, --augment and --augment-seed"
    assert "views 2 (cache) vs 3 (now)" in other.output and keep in other.output
    flags = ["--views", "2", "--augment", "flip,crop,color", "--augment-seed", "20"]
    again = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *args, *flags])
    assert again.exit_code == 0, again.output
    bad = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *args, "--views", "0"])
    assert bad.exit_code == 2 and "--views 0: expected 1 to 64" in bad.output
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train-head",
            str(out),
            "-o",
            str(run),
            "--views",
            "one",
            "--feature-augment",
            "--epochs",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["views"] == "one" and report["feature_augment"] == 0.1
    refused = CliRunner().invoke(
        main, ["train-head", str(out), "--head", "logreg", "--views", "one"]
    )
    assert refused.exit_code == 2 and "--views 'one': draws a view per epoch" in refused.output
    # the optional strength before the cache: a one-line usage error that says so
    early = CliRunner().invoke(main, ["train-head", "--feature-augment", str(out)])
    assert early.exit_code == 2 and "is not a strength: the option takes an optional" in (
        early.output
    )


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # with tests/test_ray.py: one local Ray instance at a time
def test_ray_actors_make_the_views_of_a_local_run(tmp_path, data):
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
    from featcache import RayOptions

    (data / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    options = {"views": 3, "augment": "crop,color", "batch_size": 4, **TINY}
    local = extract(data, output=tmp_path / "local.h5", **options)
    ray_run = extract(
        data,
        output=tmp_path / "ray.h5",
        engine="ray",
        ray_options=RayOptions(actors=1),
        **options,
    )
    assert (ray_run.new, ray_run.bad) == (local.new, local.bad) == (6, 1)
    ours, theirs = _views(tmp_path / "ray.h5"), _views(tmp_path / "local.h5")
    assert set(ours) == set(theirs)
    for path, views in theirs.items():
        np.testing.assert_allclose(ours[path], views, atol=1e-5, err_msg=path)


def test_a_servers_extract_dataset_makes_the_views_of_a_local_run(tmp_path):
    from featcache import ServeOptions, start_server
    from featcache.errors import RemoteError
    from featcache.service.client import Client

    for name in ("data", "cache", "weights"):
        (tmp_path / name).mkdir()
    make_class_folder(tmp_path / "data" / "set", classes=2, per_class=3)
    settings = {"views": 3, "augment": "flip,crop", "augment_seed": 4}
    local = extract(tmp_path / "data" / "set", output=tmp_path / "local.h5", **settings, **TINY)
    roots = {f"{name}_root": str(tmp_path / name) for name in ("data", "cache", "weights")}
    server = start_server(ServeOptions(port=0, **roots))
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            model = {"weights": "none", "image_size": 32}
            steps = list(client.extract_dataset("set", "vgg16", output="v.h5", **model, **settings))
            assert steps[-1].finished and steps[-1].rows == local.rows == 6
            # a rerun without the view settings (proto3 views 0, no augment_seed) keeps them
            rerun = list(client.extract_dataset("set", "vgg16", output="v.h5", **model))
            assert (rerun[-1].embedded, rerun[-1].reused) == (0, 6)
            with pytest.raises(RemoteError, match=re.escape("views 3 (cache) vs 2 (now)")):
                list(client.extract_dataset("set", "vgg16", output="v.h5", **model, views=2))
            with pytest.raises(RemoteError) as refused:
                list(client.extract_dataset("set", "vgg16", output="w.h5", **model, views=65))
            assert refused.value.code == "INVALID_ARGUMENT" and "views 65" in str(refused.value)
    finally:
        server.stop(0)
    reader = CacheReader(tmp_path / "cache" / "v.h5")
    assert (reader.views, reader.settings.augment, reader.settings.augment_seed) == (
        3,
        ("flip", "crop"),
        4,
    )
    served, ours = _views(tmp_path / "cache" / "v.h5"), _views(tmp_path / "local.h5")
    assert set(served) == set(ours)
    for path, views in ours.items():
        np.testing.assert_allclose(served[path], views, atol=1e-5, err_msg=path)


def test_hugging_face_datasets_loads_a_cache_with_views(tmp_path, data):
    datasets = pytest.importorskip("datasets", reason="datasets is in the dev extra")
    extract(data, output=tmp_path / "views.h5", views=3, **TINY)
    loaded = datasets.load_dataset(
        "hdf5", data_files=str(tmp_path / "views.h5"), split="train", cache_dir=str(tmp_path)
    )
    reader = CacheReader(tmp_path / "views.h5")
    assert loaded.num_rows == len(reader)
    stacked = reader.view_features()
    for row in range(len(reader)):
        np.testing.assert_allclose(np.asarray(loaded[row]["views"]), stacked[row, 1:])


_PACED_DRIVER = (
    COMMIT_EVERY_BATCH
    + """
import sys, time
from featcache import extract
from featcache.extractor import recorder

embedded = recorder.Recorder.embedded

def paced(self, *args, **kwargs):
    embedded(self, *args, **kwargs)
    time.sleep(0.3)

recorder.Recorder.embedded = paced
extract(sys.argv[1], output=sys.argv[2], backbone="vgg16", weights="none", image_size=32,
        views=3, augment_seed=9, batch_size=1, checkpoint_seconds=0, progress=False)
"""
)
"""The killed run: as the CLI's, pausing 0.3 s after each embedded image (its writer thread
goes on), so that the kill lands seconds before the run's end however busy the machine."""


@pytest.mark.slow
def test_a_killed_run_keeps_views_only_with_their_rows_and_resumes(tmp_path, data):
    """SIGKILL mid-run (a subprocess, checkpoints after every image): the cache left has a
    view for every row and none without one, and the next run completes it."""
    out = tmp_path / "views.h5"
    for i in range(24):  # 30 images
        write_image(data / "class_0" / f"more_{i}.png", 50 + i)
    options = {"views": 3, "augment_seed": 9, "batch_size": 1, **TINY}
    extract(data, output=tmp_path / "whole.h5", **options)
    args = [sys.executable, "-c", _PACED_DRIVER, str(data), str(out)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # waits on rows, not on time: a bound for a hung run
    rows_now = RowWatch(out)  # a stat a poll, not an HDF5 read
    while rows_now() < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    left = CacheReader(out)
    assert 3 <= len(left) < 30 and left.view_features().shape == (len(left), 3, 512)
    whole = _views(tmp_path / "whole.h5")
    for path, views in _views(out).items():
        np.testing.assert_allclose(views, whole[path], atol=1e-5, err_msg=path)
    summary = extract(data, output=out, **options)
    assert summary.reused == len(left) and summary.rows == 30
    resumed = _views(out)
    assert set(resumed) == set(whole)
    for path, views in whole.items():
        np.testing.assert_allclose(resumed[path], views, atol=1e-5, err_msg=path)


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_views_resize_a_batch_as_each_image_alone(mode):
    from featcache.extractor.engines import as_input, as_inputs

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(5)]
    batched = as_inputs(images, (32, 36), mode)
    alone = np.stack([as_input(image, (32, 36), mode) for image in images])
    assert batched.shape == (5, 32, 36, 3) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, alone)
    mixed = [*images[:2], images[2][:30]]  # other sizes: one at a time
    np.testing.assert_array_equal(
        as_inputs(mixed, (32, 36), mode), np.stack([as_input(i, (32, 36), mode) for i in mixed])
    )
