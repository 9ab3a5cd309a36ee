"""End-to-end extraction on tiny real image folders with a random-weight VGG16."""

import json
import shutil

import h5py
import numpy as np
import pytest

from featcache import cache_info, extract, read_cache
from featcache.core.locking import PathLock, lock_path
from featcache.errors import CacheLockedError, InvalidOptionError, SettingsMismatchError
from featcache.store import FORMAT_VERSION
from helpers import TINY, make_class_folder, write_image


def test_first_run_writes_a_self_describing_cache(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    summary = extract(class_folder, output=out, **TINY)
    assert (summary.new, summary.reused, summary.removed, summary.bad) == (12, 0, 0, 0)
    assert summary.rows == 12 and summary.feature_dim == 512
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "featcache" and f.attrs["format_version"] == FORMAT_VERSION
        assert f["features"].shape == (12, 512) and f["features"].dtype == np.float32
        assert f["features"].chunks is not None
        assert f["labels"].dtype == np.int32 and f["split"].dtype == np.uint8
        assert json.loads(f.attrs["class_names"]) == ["class_0", "class_1", "class_2"]
        assert json.loads(f.attrs["split_names"]) == ["train", "val", "test"]
        for key in (
            "backbone",
            "weights",
            "weights_sha256",
            "image_size",
            "resize",
            "pooling",
            "layer",
            "preprocessing",
            "feature_dim",
            "dtype",
            "split_ratios",
            "seed",
            "dataset_root",
            "fingerprint",
            "created",
            "updated",
            "featcache_version",
            "keras_version",
            "tensorflow_version",
            "h5py_version",
        ):
            assert key in f.attrs, key
        assert list(f.attrs["image_size"]) == [32, 32]
        assert f.attrs["preprocessing"] == "keras.applications.vgg16.preprocess_input"
    data = read_cache(out)
    assert data.paths == sorted(data.paths)
    assert data.paths[0] == "class_0/img_0.png"
    expected = [int(p.split("/")[0][-1]) for p in data.paths]
    assert data.labels.tolist() == expected
    assert all(len(s) == 64 for s in data.sha256)
    assert np.isfinite(data.features).all() and data.features.std() > 0
    masks = data.train_mask.astype(int) + data.val_mask + data.test_mask
    assert (masks == 1).all()


def test_rerun_computes_only_what_changed(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    before = read_cache(out)
    mtime = out.stat().st_mtime_ns

    again = extract(class_folder, output=out, **TINY)
    assert (again.new, again.reused, again.removed) == (0, 12, 0)
    assert out.stat().st_mtime_ns == mtime  # nothing to do: file untouched

    (class_folder / "class_0" / "img_0.png").unlink()
    write_image(class_folder / "class_1" / "img_1.jpg", 999, fmt="JPEG")  # changed bytes
    write_image(class_folder / "class_2" / "zz_new.png", 1234)
    summary = extract(class_folder, output=out, **TINY)
    assert (summary.new, summary.reused, summary.removed) == (2, 10, 1)
    after = read_cache(out)
    assert len(after.paths) == 12 and after.paths == sorted(after.paths)
    assert "class_0/img_0.png" not in after.paths and "class_2/zz_new.png" in after.paths
    old = dict(zip(before.paths, before.features))
    new = dict(zip(after.paths, after.features))
    for path in ("class_0/img_1.jpg", "class_2/img_3.jpg"):
        np.testing.assert_array_equal(old[path], new[path])
    assert not np.allclose(old["class_1/img_1.jpg"], new["class_1/img_1.jpg"], rtol=1e-3)


def test_incremental_equals_fresh_run(class_folder, tmp_path):
    extract(class_folder, output=tmp_path / "a.h5", **TINY)
    for i in range(3):
        write_image(class_folder / "class_3" / f"extra_{i}.png", 500 + i)  # a new class too
    extract(class_folder, output=tmp_path / "a.h5", **TINY)
    extract(class_folder, output=tmp_path / "b.h5", **TINY)
    a, b = read_cache(tmp_path / "a.h5"), read_cache(tmp_path / "b.h5")
    assert a.paths == b.paths and a.class_names == b.class_names == [f"class_{k}" for k in range(4)]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)


def test_splits_are_stable_under_additions(tmp_path):
    data = make_class_folder(tmp_path / "d", classes=2, per_class=10)
    out = tmp_path / "c.h5"
    extract(data, output=out, split="0.5,0.3,0.2", **TINY)
    first = dict(zip(read_cache(out).paths, read_cache(out).split))
    make_class_folder(tmp_path / "d", classes=2, per_class=10, seed=7)  # overwrites all bytes
    for i in range(10):
        shutil.copy(data / "class_0" / "img_0.png", data / "class_1" / f"copy_{i}.png")
    extract(tmp_path / "d", output=tmp_path / "fresh.h5", split="0.5,0.3,0.2", **TINY)
    fresh = read_cache(tmp_path / "fresh.h5")
    by_path = dict(zip(fresh.paths, fresh.split))
    assert (
        len({by_path[f"class_1/copy_{i}.png"] for i in range(10)} | {by_path["class_0/img_0.png"]})
        == 1
    )
    assert set(np.unique(fresh.split)) <= {0, 1, 2}
    assert len(first) == 20


def test_other_settings_are_refused_naming_them(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    with pytest.raises(SettingsMismatchError) as info:
        extract(class_folder, output=out, **{**TINY, "image_size": 48}, pooling="max")
    message = str(info.value)
    assert "image_size 32x32 (cache) vs 48x48 (now)" in message
    assert "pooling 'avg' (cache) vs 'max' (now)" in message and "--overwrite" in message
    assert read_cache(out).features.shape == (12, 512)  # untouched
    summary = extract(
        class_folder, output=out, **{**TINY, "image_size": 48}, pooling="max", overwrite=True
    )
    assert summary.new == 12 and read_cache(out).settings.pooling == "max"


def test_second_writer_fails_at_once(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    with PathLock(lock_path(out)):
        with pytest.raises(CacheLockedError, match="another extract process"):
            extract(class_folder, output=out, **TINY)
    assert not out.exists() and not lock_path(out).exists()


def test_bad_files_are_recorded_and_never_stop_the_run(class_folder, tmp_path):
    bad_dir = class_folder / "class_0"
    (bad_dir / "empty.png").write_bytes(b"")
    (bad_dir / "text.jpg").write_text("definitely not a jpeg")
    good = (class_folder / "class_1" / "img_1.jpg").read_bytes()
    (bad_dir / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (bad_dir / "dangling.png").symlink_to(tmp_path / "does-not-exist.png")
    from helpers import png_claiming as _png_claiming

    (bad_dir / "bomb.png").write_bytes(_png_claiming(40_000, 40_000))
    out = tmp_path / "c.h5"
    summary = extract(class_folder, output=out, **TINY)
    assert summary.bad == 5 and summary.new == 12 and summary.rows == 12
    reasons = dict(read_cache(out).bad)
    assert reasons["class_0/empty.png"] == "empty file"
    assert reasons["class_0/text.jpg"].startswith("not an image")
    assert reasons["class_0/truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["class_0/dangling.png"].startswith("unreadable")
    assert reasons["class_0/bomb.png"].startswith("decompression bomb")
    # fixing a file clears its record; a deleted bad file disappears from the list
    shutil.copy(class_folder / "class_1" / "img_1.jpg", bad_dir / "text.jpg")
    (bad_dir / "empty.png").unlink()
    again = extract(class_folder, output=out, **TINY)
    assert again.new == 1 and again.bad == 3
    assert set(dict(read_cache(out).bad)) == {
        "class_0/truncated.jpg",
        "class_0/dangling.png",
        "class_0/bomb.png",
    }


def test_only_bad_files_still_make_a_valid_cache(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"")
    summary = extract(tmp_path / "d", output=tmp_path / "c.h5", **TINY)
    assert summary.rows == 0 and summary.bad == 1
    info = cache_info(tmp_path / "c.h5")
    assert info["rows"] == 0 and info["feature_dim"] == 512 and len(info["bad"]) == 1


def test_float16_pooling_none_and_inner_layer(class_folder, tmp_path):
    half = extract(class_folder, output=tmp_path / "h.h5", dtype="float16", **TINY)
    assert read_cache(tmp_path / "h.h5").features.dtype == np.float16 and half.rows == 12
    flat = extract(class_folder, output=tmp_path / "f.h5", pooling="none", **TINY)
    assert flat.feature_dim == 1 * 1 * 512
    assert (
        extract(
            class_folder, output=tmp_path / "g.h5", **{**TINY, "image_size": 64}, pooling="none"
        ).feature_dim
        == 2 * 2 * 512
    )
    inner = extract(
        class_folder, output=tmp_path / "l.h5", layer="block3_conv3", pooling="max", **TINY
    )
    assert inner.feature_dim == 256
    with pytest.raises(InvalidOptionError, match="did you mean"):
        extract(class_folder, output=tmp_path / "x.h5", layer="block3_conv", **TINY)


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_resize_modes_change_features(class_folder, tmp_path, resize):
    extract(class_folder, output=tmp_path / "s.h5", **TINY)
    extract(class_folder, output=tmp_path / "r.h5", resize=resize, **TINY)
    stretch, other = read_cache(tmp_path / "s.h5"), read_cache(tmp_path / "r.h5")
    assert other.settings.resize == resize
    assert not np.allclose(stretch.features, other.features)


def test_split_folders_and_npy_arrays(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            write_image(tmp_path / "s" / split / "cat" / f"{i}.png", hash((split, i)) % 1000)
    summary = extract(tmp_path / "s", output=tmp_path / "s.h5", **TINY)
    data = read_cache(tmp_path / "s.h5")
    assert summary.rows == 6 and data.settings.split_source == "folders"
    assert [int(data.mask(s).sum()) for s in ("train", "val", "test")] == [3, 2, 1]

    images = np.random.default_rng(0).integers(0, 255, (7, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x_test.npy", images)
    np.save(tmp_path / "y_test.npy", np.arange(7) % 2)
    summary = extract(tmp_path / "x_test.npy", output=tmp_path / "n.h5", **TINY)
    data = read_cache(tmp_path / "n.h5")
    assert summary.rows == 7 and data.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert data.paths[0] == "x_test.npy#0"


def test_saved_keras_model_as_backbone(class_folder, tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(5, name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    path = tmp_path / "model_a.keras"
    model.save(path)
    summary = extract(
        class_folder, backbone=str(path), layer="hidden", output=tmp_path / "m.h5", progress=False
    )
    data = read_cache(tmp_path / "m.h5")
    assert summary.feature_dim == 5 and data.settings.image_size == (24, 24)
    assert data.settings.backbone_sha256 and data.settings.weights == "embedded"
    tapped = keras.Model(model.inputs, model.get_layer("hidden").output)
    from featcache.extractor.decode import decode_image, resize_image

    first = resize_image(decode_image((class_folder / data.paths[0]).read_bytes()), (24, 24))
    np.testing.assert_allclose(
        tapped.predict(first[None], verbose=0)[0], data.features[0], atol=1e-5
    )


def test_random_weights_are_seeded(class_folder, tmp_path):
    extract(class_folder, output=tmp_path / "a.h5", **TINY)
    extract(class_folder, output=tmp_path / "b.h5", **TINY)
    np.testing.assert_allclose(
        read_cache(tmp_path / "a.h5").features, read_cache(tmp_path / "b.h5").features, atol=1e-6
    )


def test_cached_file_that_goes_bad_loses_its_row(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    good = (class_folder / "class_0" / "img_0.png").read_bytes()
    (class_folder / "class_0" / "img_0.png").write_bytes(good[: len(good) // 2])
    summary = extract(class_folder, output=out, **TINY)
    data = read_cache(out)
    assert summary.bad == 1 and summary.rows == 11
    assert "class_0/img_0.png" not in data.paths
    assert dict(data.bad)["class_0/img_0.png"].startswith("corrupt or truncated")


def test_new_empty_class_folder_updates_class_names(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    (class_folder / "aaa").mkdir()
    summary = extract(class_folder, output=out, **TINY)
    data = read_cache(out)
    assert summary.new == 0
    assert data.class_names == ["aaa", "class_0", "class_1", "class_2"]
    assert sorted(set(data.labels.tolist())) == [1, 2, 3]


def test_npy_label_changes_are_picked_up(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "c.h5"
    extract(tmp_path / "x.npy", output=out, **TINY)
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 0, 1, 0]))  # class 2 disappears
    summary = extract(tmp_path / "x.npy", output=out, **TINY)
    data = read_cache(out)
    assert summary.new == 2 and summary.reused == 4
    assert data.labels.tolist() == [0, 1, 1, 0, 1, 0] and data.class_names == ["0", "1"]


def test_random_weight_fingerprint_depends_on_seed(class_folder, tmp_path):
    extract(class_folder, output=tmp_path / "a.h5", **TINY)
    extract(class_folder, output=tmp_path / "b.h5", seed=21, **TINY)
    a, b = read_cache(tmp_path / "a.h5"), read_cache(tmp_path / "b.h5")
    assert a.attrs["fingerprint"] != b.attrs["fingerprint"]
    assert not np.allclose(a.features, b.features)


def test_unfinished_append_is_put_in_order_by_the_next_run(tmp_path):
    from featcache.store import CacheSettings, CacheWriter

    settings = CacheSettings(
        "vgg16",
        "",
        "none",
        "",
        (32, 32),
        "stretch",
        "avg",
        "",
        "none",
        0,
        dtype="float32",
        split_ratios=(1.0, 0.0, 0.0),
        split_source="hash",
        dataset_root=str(tmp_path),
    )
    order = {"a": 0, "b": 1, "c": 2}
    out = tmp_path / "c.h5"
    rows = {p: np.full((1, 4), i, np.float32) for i, p in enumerate("abc")}
    first = CacheWriter(out, settings, [], order)
    for p in "ac":
        first.add([p], [p * 64], [None], [0], rows[p])
    first.commit(final=True)
    killed = CacheWriter(out, settings, [], order)
    killed.add(["b"], ["b" * 64], [None], [0], rows["b"])
    killed.commit()  # a checkpoint of a run that is then killed
    assert read_cache(out).paths == ["a", "c", "b"]
    CacheWriter(out, settings, [], order).commit(final=True)
    data = read_cache(out)
    assert data.paths == ["a", "b", "c"] and data.features[:, 0].tolist() == [0, 1, 2]


def test_changing_split_ratios_is_fine_for_split_folders(tmp_path):
    write_image(tmp_path / "s" / "train" / "a.png", 1)
    write_image(tmp_path / "s" / "test" / "b.png", 2)
    extract(tmp_path / "s", output=tmp_path / "c.h5", **TINY)
    summary = extract(tmp_path / "s", output=tmp_path / "c.h5", split="0.5,0.5", **TINY)
    assert summary.reused == 2


def test_wildcards_in_a_cache_name_touch_no_other_cache(class_folder, tmp_path):
    other = tmp_path / "other.h5.tmp-123"  # another writer's checkpoint in progress
    other.write_bytes(b"in progress")
    extract(class_folder, output=tmp_path / "o*.h5", **TINY)
    assert other.read_bytes() == b"in progress"


def test_pad_caches_record_their_pad_version_and_old_ones_are_not_resumed(class_folder, tmp_path):
    out = tmp_path / "pad.h5"
    extract(class_folder, output=out, resize="pad", **TINY)
    assert read_cache(out).attrs["pad_version"] == 2
    with h5py.File(out, "r+") as f:  # a pad cache written before the exact pad box
        del f.attrs["pad_version"]
    with pytest.raises(SettingsMismatchError, match=r"pad resize version 1 \(cache\) vs 2"):
        extract(class_folder, output=out, resize="pad", **TINY)
    summary = extract(class_folder, output=out, resize="pad", overwrite=True, **TINY)
    assert summary.new == 12


def test_fingerprints_of_caches_without_pad_are_unchanged(class_folder, tmp_path):
    """The fingerprint formula of format version 1, written out: old caches keep theirs
    (they decoded every pixel: ``decode="exact"``)."""
    import hashlib

    out = tmp_path / "c.h5"
    extract(class_folder, output=out, resize="crop", decode="exact", **TINY)
    attrs = read_cache(out).attrs
    names = ("backbone", "backbone_sha256", "weights", "weights_sha256", "image_size")
    names += ("resize", "pooling", "layer", "preprocessing", "dtype")
    payload = {name: attrs[name] for name in names}
    payload["seed"] = attrs["seed"]  # random weights
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert attrs["fingerprint"] == expected


def test_reading_rows_outside_the_cache_is_an_index_error_not_damage(class_folder, tmp_path):
    from featcache import CacheReader

    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    reader = CacheReader(out)
    for rows in (np.array([12]), np.array([-1]), np.array([0, 99])):
        with pytest.raises(IndexError, match=r"outside 0\.\.11"):
            reader.features(rows)
        with pytest.raises(IndexError):
            next(reader.batches(rows))
    assert reader.features(np.array([11, 0])).shape == (2, 512)
