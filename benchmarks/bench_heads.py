"""The saving featcache exists for, and the accuracy of every head on Fashion-MNIST.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_heads.py --images 2000 --size 224 --epochs 10 \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5

1. The tutorials' recipe (frozen MobileNet + the same dense head trained end to end on the
   images with ``model.fit`` for E epochs) against ``extract`` once + ``train-head`` for the
   same head and E, on the same train/val/test folders; then each further head on the warm
   cache. Early stopping is off on both sides so both run exactly E epochs.
2. Test accuracy of every head kind on the cache, against scikit-learn on raw pixels of the
   same images (the original 28x28 Fashion-MNIST pixels), run by the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load_fashion_mnist

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def write_split_folders(out: Path, count: int, size: int) -> tuple[Path, dict[str, np.ndarray]]:
    """``count`` Fashion-MNIST train images as RGB JPEGs in train/val/test class folders."""
    from PIL import Image

    images, labels, names = load_fashion_mnist("train")
    bounds = np.cumsum([0] + [round(count * r) for r in SPLITS.values()])
    bounds[-1] = count
    index = {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(SPLITS)}
    marker = out / f".complete-{count}-{size}"
    if not marker.exists():
        for split, rows in index.items():
            for i in rows:
                folder = out / split / names[int(labels[i])]
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC)
                image.convert("RGB").save(folder / f"{i:05d}.jpg", quality=90)
        marker.touch()
    return out, index


def recipe(folder: Path, size: int, weights: str, epochs: int, batch: int) -> dict:
    """Frozen MobileNet + dense head trained on images, as in the Keras tutorials."""
    import keras

    began = time.monotonic()

    def load(split: str, shuffle: bool):
        return keras.utils.image_dataset_from_directory(
            folder / split,
            image_size=(size, size),
            batch_size=batch,
            shuffle=shuffle,
            seed=0,
            verbose=False,
        )

    train, val, test = load("train", True), load("val", False), load("test", False)
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNet(
        include_top=False, weights=weights, pooling="avg", input_shape=(size, size, 3)
    )
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # mobilenet.preprocess_input
    x = base(x, training=False)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    return {"seconds": time.monotonic() - began, "test_accuracy": float(accuracy)}


def cached(folder: Path, size: int, weights: str, epochs: int, batch: int, tmp: Path) -> dict:
    from featcache import extract
    from featcache.heads.train import train_head

    began = time.monotonic()
    summary = extract(
        folder,
        backbone="mobilenet",
        weights=weights,
        image_size=size,
        output=tmp / "cache.h5",
        progress=False,
    )
    extract_seconds = time.monotonic() - began
    began = time.monotonic()
    result = train_head(
        tmp / "cache.h5",
        "dense",
        tmp / "run-dense",
        hidden=(256,),
        dropout=0.5,
        epochs=epochs,
        batch_size=batch,
        patience=0,
    )
    head_seconds = time.monotonic() - began
    return {
        "extract_seconds": extract_seconds,
        "head_seconds": head_seconds,
        "seconds": extract_seconds + head_seconds,
        "rows": summary.rows,
        "test_accuracy": result.report["test"]["accuracy"],
    }


def every_head(cache: Path, tmp: Path, epochs: int) -> list[dict]:
    from featcache.heads.baselines import HEAD_KINDS
    from featcache.heads.train import train_head

    rows = []
    for kind in HEAD_KINDS:
        began = time.monotonic()
        result = train_head(cache, kind, tmp / f"run-{kind}", epochs=epochs)
        rows.append(
            {
                "head": kind,
                "seconds": time.monotonic() - began,
                "val_accuracy": result.report["val"]["accuracy"],
                "test_accuracy": result.report["test"]["accuracy"],
                "test_macro_f1": result.report["test"]["macro_f1"],
            }
        )
        print(
            f"  {kind:<14} test {rows[-1]['test_accuracy']:.4f}  ({rows[-1]['seconds']:.1f} s)",
            flush=True,
        )
    return rows


def raw_pixels(index: dict[str, np.ndarray]) -> list[dict]:
    from featcache.heads.baselines import make_baseline

    images, labels, _ = load_fashion_mnist("train")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    rows = []
    for kind in ("logreg", "knn", "random-forest", "svm"):
        began = time.monotonic()
        model = make_baseline(kind).fit(x[index["train"]], labels[index["train"]])
        accuracy = float(np.mean(model.predict(x[index["test"]]) == labels[index["test"]]))
        rows.append(
            {
                "head": f"raw pixels + {kind}",
                "seconds": time.monotonic() - began,
                "test_accuracy": accuracy,
            }
        )
        print(f"  raw pixels + {kind:<14} test {accuracy:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weights", required=True, help="MobileNet no-top weights file")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()

    folder, index = write_split_folders(
        Path(args.data) / f"splits{args.size}-{args.images}", args.images, args.size
    )
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": args.images,
        "size": args.size,
        "epochs": args.epochs,
        "rows": {k: len(v) for k, v in index.items()},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fc = cached(folder, args.size, args.weights, args.epochs, args.batch_size, tmp)
        results["featcache"] = fc
        print(
            f"featcache: extract {fc['extract_seconds']:.1f} s + head {fc['head_seconds']:.1f} s"
            f", test accuracy {fc['test_accuracy']:.4f}",
            flush=True,
        )
        if not args.skip_recipe:
            rc = recipe(folder, args.size, args.weights, args.epochs, args.batch_size)
            results["recipe"] = rc
            results["ratio_with_extraction"] = rc["seconds"] / fc["seconds"]
            results["ratio_further_head"] = rc["seconds"] / fc["head_seconds"]
            print(
                f"recipe: {rc['seconds']:.1f} s, test accuracy {rc['test_accuracy']:.4f}; "
                f"ratio {results['ratio_with_extraction']:.1f}x with extraction, "
                f"{results['ratio_further_head']:.0f}x per further head",
                flush=True,
            )
        print("every head on the cache:", flush=True)
        results["heads"] = every_head(tmp / "cache.h5", tmp, 30)
    print("raw-pixel baselines:", flush=True)
    results["raw_pixels"] = raw_pixels(index)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
