"""Mixed precision (``--precision``): speed-up over float32 and how much the features move.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_precision.py --images 2000 --time-images 256 --repeats 3 \
        --backbones resnet50,vgg16,efficientnetb0,mobilenet --weights-dir ../shared/weights \
        --json benchmarks/results-precision.json

For each backbone and precision, every run is a fresh process that imports TensorFlow
before any clock starts, builds the same :class:`FeatureExtractor` as ``extract`` (load time
reported on its own), warms it up on one batch, then times it on ``--time-images``
pre-decoded, pre-resized uint8 arrays in memory through ``embed_pixels``, as ``extract``
feeds it (model only: no files, no cache). The
first run of each precision also embeds all ``--images`` and saves the features; from them:

- cosine similarity of each image's features to its float32 features (mean and min);
- head accuracy: standardized features + scikit-learn logistic regression, trained on the
  first ``--train-fraction`` of the images and tested on the rest (the same split for every
  precision).

Images: the Fashion-MNIST train split (``apt-get install -y dataset-fashion-mnist``),
upscaled (bicubic) to ``--size`` px RGB. Weights: the real ones of ``--weights-dir`` for
mobilenet and vgg16 (see ../shared/README.md), random (seeded) for the others; the output
says which. Runs of the precisions are interleaved and the median rate is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load_fashion_mnist

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHT_FILES = {
    "mobilenet": "mobilenet_1_0_224_imagenet_notop.weights.h5",
    "vgg16": "vgg16_hed_bsds500_notop.weights.h5",
}
PRECISIONS = ("float32", "bfloat16", "float16")


def _weights(backbone: str, weights_dir: str | None) -> str:
    if weights_dir and backbone in WEIGHT_FILES:
        path = Path(weights_dir) / WEIGHT_FILES[backbone]
        if path.is_file():
            return str(path)
    return "none"


def _images(data: Path, count: int, size: int) -> tuple[Path, np.ndarray]:
    """``count`` Fashion-MNIST train images as a (count, size, size, 3) uint8 .npy file (made
    once and reused) and their labels."""
    from PIL import Image

    images, labels, _ = load_fashion_mnist("train")
    if count > len(images):
        raise SystemExit(f"--images {count}: only {len(images)} images")
    path = data / f"fashion-train-{count}-{size}.npy"
    if not path.is_file():
        data.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(
            path.with_suffix(".tmp.npy"), "w+", np.uint8, (count, size, size, 3)
        )
        for i in range(count):
            image = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC)
            out[i] = np.asarray(image.convert("RGB"))
        out.flush()
        del out
        path.with_suffix(".tmp.npy").rename(path)
    return path, labels[:count].astype(np.int64)


def one_run(
    backbone: str,
    weights: str,
    precision: str,
    array: Path,
    time_images: int,
    batch: int,
    features_out: Path | None,
) -> dict:
    """One fresh-process run: load, warm up, time ``time_images`` images; with
    ``features_out``, embed every image (untimed) and save the features there."""
    began = time.monotonic()
    import tensorflow  # noqa: F401 - imported before any clock that is reported

    tf_import = time.monotonic() - began
    from featcache.backbones.backbone import FeatureExtractor, resolve_backbone
    from featcache.core.settings import BackboneConfig

    images = np.load(array, mmap_mode="r")
    size = images.shape[1]
    began = time.monotonic()
    extractor = FeatureExtractor(
        resolve_backbone(BackboneConfig(backbone, weights, size, precision=precision))
    )
    load = time.monotonic() - began
    timed = np.ascontiguousarray(images[:time_images])
    extractor.embed_pixels(timed[:batch])  # warm up and trace the uint8 graph
    began = time.monotonic()
    for start in range(0, len(timed), batch):
        extractor.embed_pixels(timed[start : start + batch])
    seconds = time.monotonic() - began
    row = {
        "precision": precision,
        "images": len(timed),
        "seconds": seconds,
        "images_per_second": len(timed) / seconds,
        "load_seconds": load,
        "tf_import_seconds": tf_import,
    }
    if features_out is not None:
        parts = [
            extractor.embed_pixels(np.ascontiguousarray(images[start : start + batch]))
            for start in range(0, len(images), batch)
        ]
        features = np.concatenate(parts)
        if features.dtype != np.float32:
            raise SystemExit(f"{precision}: features came out {features.dtype}, not float32")
        np.save(features_out, features)
    return row


def _fresh(
    backbone: str,
    weights: str,
    precision: str,
    array: Path,
    time_images: int,
    batch: int,
    features_out: Path | None,
) -> dict:
    """:func:`one_run` in a fresh process (no thread pools, models or traces of another
    precision)."""
    command = [sys.executable, __file__, "--one", precision, "--backbones", backbone]
    command += ["--weights-one", weights, "--array", str(array), "--batch-size", str(batch)]
    command += ["--time-images", str(time_images)]
    if features_out is not None:
        command += ["--features-out", str(features_out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{backbone} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cosines(reference: np.ndarray, features: np.ndarray) -> dict:
    """Per-image cosine similarity to the float32 features; all-zero rows (16-bit underflow
    of features that are tiny in float32, as random BatchNorm nets give) are counted apart."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(features, axis=1)
    usable = norms > 0
    values = np.sum(reference * features, axis=1)[usable] / norms[usable]
    return {
        "mean": float(values.mean()) if values.size else float("nan"),
        "min": float(values.min()) if values.size else float("nan"),
        "zero_rows": int((~usable).sum()),
        "non_finite_rows": int((~np.isfinite(features).all(axis=1)).sum()),
    }


def head_accuracy(features: np.ndarray, labels: np.ndarray, train_fraction: float) -> float:
    """Test accuracy of standardized features + logistic regression on a fixed split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cut = int(len(labels) * train_fraction)
    clean = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(clean[:cut], labels[:cut])
    return float(model.score(clean[cut:], labels[cut:]))


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx512_vnni")
    return [flag for flag in wanted if f" {flag}" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images embedded per precision")
    parser.add_argument(
        "--time-images", type=int, default=256, help="images of each timed (model-only) run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per precision")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--backbones", default="resnet50,vgg16,efficientnetb0,mobilenet")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--json", dest="json_out", default=None, help="also write results here")
    parser.add_argument("--one", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--weights-one", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--array", default="", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process of _fresh
        row = one_run(
            args.backbones,
            args.weights_one,
            args.one,
            Path(args.array),
            args.time_images,
            args.batch_size,
            Path(args.features_out) if args.features_out else None,
        )
        print(json.dumps(row))
        return

    precisions = [p for p in args.precisions.split(",") if p]
    if precisions[0] != "float32":
        raise SystemExit("--precisions must start with float32 (the reference)")
    time_images = min(args.time_images, args.images)
    array, labels = _images(Path(args.data), args.images, args.size)
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "cpu_flags": _cpu_flags(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": args.images,
        "time_images": time_images,
        "size": args.size,
        "batch_size": args.batch_size,
        "rows": [],
    }
    print(f"cpu flags: {' '.join(results['cpu_flags']) or 'none of interest'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in [b for b in args.backbones.split(",") if b]:
            weights = _weights(backbone, args.weights_dir)
            shown_weights = Path(weights).name if weights != "none" else "random (seed 20)"
            runs: dict[str, list[dict]] = {p: [] for p in precisions}
            for repeat in range(args.repeats):  # interleaved, each in a fresh process
                for precision in precisions:
                    out = Path(tmp) / f"{backbone}-{precision}.npy" if repeat == 0 else None
                    runs[precision].append(
                        _fresh(
                            backbone, weights, precision, array, time_images, args.batch_size, out
                        )
                    )
            reference = np.load(Path(tmp) / f"{backbone}-float32.npy")
            base_rate = float(np.median([r["images_per_second"] for r in runs["float32"]]))
            for precision in precisions:
                features = np.load(Path(tmp) / f"{backbone}-{precision}.npy")
                rate = float(np.median([r["images_per_second"] for r in runs[precision]]))
                row = {
                    "backbone": backbone,
                    "weights": shown_weights,
                    "precision": precision,
                    "images_per_second": rate,
                    "all_rates": [r["images_per_second"] for r in runs[precision]],
                    "speedup": rate / base_rate,
                    "load_seconds": float(np.median([r["load_seconds"] for r in runs[precision]])),
                    "cosine": cosines(reference, features),
                    "head_accuracy": head_accuracy(features, labels, args.train_fraction),
                }
                results["rows"].append(row)
                cos = row["cosine"]
                print(
                    f"{backbone:>15} {precision:>8} ({shown_weights}): "
                    f"{rate:7.1f} img/s  x{row['speedup']:.2f}  cosine mean {cos['mean']:.4f} "
                    f"min {cos['min']:.4f}  zero rows {cos['zero_rows']}  "
                    f"head acc {row['head_accuracy']:.3f}",
                    flush=True,
                )
    print()
    print("| backbone | weights | precision | images/s | speed-up | cosine mean | cosine min "
          "| head accuracy |")  # fmt: skip
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        cos = row["cosine"]
        print(
            f"| {row['backbone']} | {row['weights']} | {row['precision']} | "
            f"{row['images_per_second']:.1f} | {row['speedup']:.2f}x | {cos['mean']:.4f} | "
            f"{cos['min']:.4f} | {row['head_accuracy']:.3f} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
