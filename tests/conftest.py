"""Shared fixtures: tiny real image folders and the pretrained-weights directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

TINY = {"backbone": "vgg16", "weights": "none", "image_size": 32, "progress": False}
"""Extraction settings for fast tests: random (seeded) VGG16 at 32x32 (its random features
are well scaled, unlike the BatchNorm nets whose random features vanish)."""


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> Path:
    """Write a smooth random RGB image (width, height) so resizing matters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_class_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """``root/class_k/img_i.{png,jpg}`` with distinct images of varying sizes."""
    for k in range(classes):
        for i in range(per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            size = (30 + 7 * i, 36 + 5 * k)
            write_image(
                root / f"class_{k}" / f"img_{i}.{ext}", seed * 1000 + k * 100 + i, size, fmt
            )
    return root


def cache_rows(path: Path) -> int:
    """Rows in the cache file at ``path`` as it is on disk now; -1 when absent or unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["paths"].shape[0])
    except (OSError, KeyError):
        return -1


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Three classes of four images each."""
    return make_class_folder(tmp_path / "data")


@pytest.fixture
def weights_dir() -> Path:
    """``$FEATCACHE_WEIGHTS_DIR`` (the shared pretrained weights); skips when unset."""
    value = os.environ.get("FEATCACHE_WEIGHTS_DIR")
    if not value:
        pytest.skip("FEATCACHE_WEIGHTS_DIR is not set (CI sets it to ../shared/weights)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"FEATCACHE_WEIGHTS_DIR={value} is not a folder")
    return path


@pytest.fixture
def mobilenet_weights(weights_dir: Path) -> Path:
    """The real ImageNet MobileNet (no top) weights file."""
    path = weights_dir / "mobilenet_1_0_224_imagenet_notop.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path
