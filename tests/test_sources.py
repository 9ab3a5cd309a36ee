import os

import numpy as np
import pytest

from featcache.errors import DatasetError
from featcache.extractor.sources import scan_dataset
from helpers import write_image


def test_class_folders_label_by_sorted_folder(class_folder):
    (class_folder / "notes.txt").write_text("not an image")
    (class_folder / "class_0" / ".hidden.png").write_bytes(b"")
    (class_folder / "class_1" / "readme.md").write_text("x")
    write_image(class_folder / "class_2" / "nested" / "deep.png", 9)
    dataset = scan_dataset(class_folder)
    assert dataset.layout == "classes"
    assert dataset.class_names == ["class_0", "class_1", "class_2"]
    assert len(dataset.items) == 13
    assert dataset.ignored == 2
    assert [i.path for i in dataset.items] == sorted(i.path for i in dataset.items)
    deep = next(i for i in dataset.items if i.path.endswith("deep.png"))
    assert deep.path == "class_2/nested/deep.png" and deep.class_name == "class_2"


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.PNG", i)
    dataset = scan_dataset(tmp_path)
    assert dataset.layout == "flat"
    assert dataset.class_names == []
    assert all(i.class_name is None and i.split is None for i in dataset.items)


def test_split_folders_set_the_split(tmp_path):
    write_image(tmp_path / "train" / "cat" / "a.png", 1)
    write_image(tmp_path / "train" / "dog" / "b.png", 2)
    write_image(tmp_path / "validation" / "cat" / "c.png", 3)
    write_image(tmp_path / "test" / "bird" / "d.png", 4)
    dataset = scan_dataset(tmp_path)
    assert dataset.layout == "splits"
    assert dataset.class_names == ["bird", "cat", "dog"]
    by_path = {i.path: (i.class_name, i.split) for i in dataset.items}
    assert by_path == {
        "test/bird/d.png": ("bird", 2),
        "train/cat/a.png": ("cat", 0),
        "train/dog/b.png": ("dog", 0),
        "validation/cat/c.png": ("cat", 1),
    }


def test_npy_images_with_sibling_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 20, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "x_train.npy", images)
    np.save(tmp_path / "y_train.npy", np.array([0, 1, 2, 1, 0]))
    dataset = scan_dataset(tmp_path / "x_train.npy")
    assert dataset.layout == "npy"
    assert dataset.class_names == ["0", "1", "2"]
    assert [i.class_name for i in dataset.items] == ["0", "1", "2", "1", "0"]
    row, sha = dataset.read(dataset.items[3])
    assert np.array_equal(row, images[3]) and len(sha) == 64


def test_npy_label_count_must_match(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match="expected 4 integer labels"):
        scan_dataset(tmp_path / "images.npy")


@pytest.mark.parametrize("make", ["missing", "empty", "text-file", "bad-npy"])
def test_unusable_datasets_fail_clearly(tmp_path, make):
    target = tmp_path / "data"
    if make == "empty":
        target.mkdir()
    elif make == "text-file":
        target.write_text("hello")
    elif make == "bad-npy":
        target = tmp_path / "broken.npy"
        target.write_bytes(b"not numpy")
    with pytest.raises(DatasetError):
        scan_dataset(target)


def test_read_reports_unreadable_files(class_folder):
    os.symlink(class_folder / "nowhere.png", class_folder / "class_0" / "broken.png")
    dataset = scan_dataset(class_folder)
    item = next(i for i in dataset.items if i.path.endswith("broken.png"))
    with pytest.raises(OSError):
        dataset.read(item)
