"""Which decode mode for new caches: features of ``exact``, ``fast`` and ``antialias``.

Usage (from the repository root)::

    python benchmarks/bench_decode_quality.py \
        --weights examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5 \
        --photos /usr/share/backgrounds --train 300 --test 200

(a) Agreement: on real large photographs (Debian's wallpaper packages: ``apt-get install
    ukui-wallpapers lomiri-wallpapers-20.04 mate-backgrounds`` fill /usr/share/backgrounds),
    the cosine between each image's features under two decode modes (MobileNet, 224 px).
(b) Linear probe: real Fashion-MNIST images upscaled (bicubic) to camera size (4032x3024
    JPEGs, quality 90; ``--noise``: with Gaussian sensor noise of that sigma added at camera
    size), features under each mode, logistic regression on train, accuracy on test.
Images are encoded in memory, never written. Prints JSON (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load_fashion_mnist

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("exact", "fast", "antialias")
PAIRS = (("exact", "fast"), ("exact", "antialias"), ("fast", "antialias"))


def _features(extractor, contents: list[bytes], size: tuple[int, int], resize: str) -> dict:
    from featcache.extractor.decode import decode_and_resize

    out = {}
    for mode in MODES:
        rows = []
        for start in range(0, len(contents), 16):
            batch = [
                decode_and_resize(c, size, resize, decode=mode)
                for c in contents[start : start + 16]
            ]
            rows.append(np.asarray(extractor(np.stack(batch)), np.float32))
        out[mode] = np.concatenate(rows)
    return out


def _whole_fast(extractor, contents: list[bytes], size: tuple[int, int], resize: str):
    """``fast`` features as an exported model computes them: every pixel decoded, then its
    ``ResizeImages`` layer's box reduction and resize (no reduced-scale JPEG decode)."""
    from featcache.extractor.decode import decode_pixels, resize_image

    rows = [
        np.asarray(extractor(resize_image(decode_pixels(c), size, resize, "fast")[None]))
        for c in contents
    ]
    return np.concatenate(rows).astype(np.float32)


def _cosines(features: dict, pairs=PAIRS) -> dict:
    out = {}
    for a, b in pairs:
        x, y = features[a], features[b]
        cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        out[f"{a}~{b}"] = {
            "mean": round(float(cos.mean()), 4),
            "min": round(float(cos.min()), 4),
        }
    return out


def agreement(extractor, photos: Path, size, resize: str) -> dict:
    files = sorted(
        p
        for p in photos.rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        and min(Image.open(p).size) >= 4 * min(size)
    )
    contents = [p.read_bytes() for p in files]
    features = _features(extractor, contents, size, resize)
    result = {"images": len(files), "all": _cosines(features)}
    features["fast_whole"] = _whole_fast(extractor, contents, size, resize)
    serving = (("fast", "fast_whole"), ("exact", "fast_whole"))
    for kind in ("JPEG", "PNG"):
        keep = [i for i, p in enumerate(files) if (p.suffix.lower() == ".png") == (kind == "PNG")]
        if keep:
            sub = {m: f[keep] for m, f in features.items()}
            result[kind] = {"images": len(keep), **_cosines(sub), **_cosines(sub, serving)}
    megapixels = [Image.open(p).size[0] * Image.open(p).size[1] / 1e6 for p in files]
    result["megapixels"] = [round(min(megapixels), 1), round(max(megapixels), 1)]
    return result


def _camera_jpegs(images: np.ndarray, noise: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        big = Image.fromarray(image).resize((4032, 3024), Image.BICUBIC).convert("RGB")
        if noise:
            pixels = np.asarray(big, np.float32)
            pixels += rng.normal(0, noise, pixels.shape).astype(np.float32)
            big = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def probe(extractor, train: int, test: int, noise: float, size, resize: str) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels, _ = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(images))[: train + test]
    contents = _camera_jpegs(images[pick], noise, 1)
    features = _features(extractor, contents, size, resize)
    y = labels[pick]
    out: dict = {"train": train, "test": test, "noise": noise, "cosine": _cosines(features)}
    predictions = {}
    for mode in MODES:
        x = features[mode]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
        model.fit(x[:train], y[:train])
        predictions[mode] = model.predict(x[train:])
        out[mode] = round(float(np.mean(predictions[mode] == y[train:])), 4)
    out["predictions_differ_from_exact"] = {
        m: int(np.sum(predictions[m] != predictions["exact"])) for m in MODES[1:]
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--photos", default="/usr/share/backgrounds")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--noise", default="0,8", help="comma-separated sensor-noise sigmas")
    parser.add_argument("--resize", default="stretch")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    from featcache.backbones.backbone import FeatureExtractor, resolve_backbone
    from featcache.core.options import BackboneConfig

    began = time.monotonic()
    resolved = resolve_backbone(BackboneConfig("mobilenet", args.weights, 224, resize=args.resize))
    extractor = FeatureExtractor(resolved)
    size = resolved.image_size
    result: dict = {"backbone": "mobilenet", "image_size": list(size), "resize": args.resize}
    result["photos"] = agreement(extractor, Path(args.photos), size, args.resize)
    print(json.dumps(result["photos"]), flush=True)
    if not args.skip_probe:
        result["probe"] = []
        for sigma in (float(s) for s in args.noise.split(",")):
            row = probe(extractor, args.train, args.test, sigma, size, args.resize)
            print(json.dumps(row), flush=True)
            result["probe"].append(row)
    result["seconds"] = round(time.monotonic() - began, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
