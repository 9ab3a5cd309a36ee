"""Benchmark datasets from the real Fashion-MNIST (apt-get install dataset-fashion-mnist)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SAMPLE_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_sample.py"


def _sample_module():
    spec = importlib.util.spec_from_file_location("make_sample", _SAMPLE_SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 28, 28), labels, class names) of one Fashion-MNIST split."""
    if not FASHION_MNIST.is_dir():
        raise SystemExit(
            "Fashion-MNIST is missing: apt-get update && apt-get install -y dataset-fashion-mnist"
        )
    sample = _sample_module()
    prefix = "train" if split == "train" else "t10k"
    images, labels = sample.load_idx(
        FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz",
        FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz",
    )
    return images, labels, list(sample.CLASS_NAMES)


def write_jpeg_folder(
    out: Path,
    count: int,
    size: int,
    split: str = "train",
    offset: int = 0,
    quality: int = 90,
    fmt: str = "JPEG",
) -> Path:
    """``count`` Fashion-MNIST images upscaled (bicubic) to ``size`` px RGB JPEGs (or ``fmt``:
    PNG) in class folders.

    Reuses the folder when it already holds exactly these files.
    """
    suffix = "" if fmt == "JPEG" else f"-{fmt.lower()}"
    marker = out / f".complete-{count}-{size}-{split}-{offset}-{quality}{suffix}"
    if marker.exists():
        return out
    images, labels, names = load_fashion_mnist(split)
    if offset + count > len(images):
        raise SystemExit(f"only {len(images)} images in the {split} split")
    for i in range(offset, offset + count):
        folder = out / names[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert("RGB")
        ext = "jpg" if fmt == "JPEG" else fmt.lower()
        image.save(folder / f"{split}_{i:05d}.{ext}", format=fmt, quality=quality)
    marker.touch()
    return out
