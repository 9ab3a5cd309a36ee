"""The near-duplicate threshold, measured: cosine between an image and its re-encoded
(JPEG q75), 2x upscaled and 1-pixel cropped copy, against the most similar pair of distinct
originals, on MobileNet features of every 10th Fashion-MNIST sample image (30 images).

    .venv/bin/python benchmarks/bench_audit_threshold.py \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from featcache import extract
from featcache.audit.neighbors import normalize
from featcache.store import CacheReader

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE / "examples" / "fashion-mnist"))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args()
    sources = sorted(Path(args.data).rglob("*.png"))[::10][: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data" / "x"
        root.mkdir(parents=True)
        for i, path in enumerate(sources):
            image = Image.open(path).convert("RGB")
            w, h = image.size
            image.save(root / f"{i}_orig.png")
            image.save(root / f"{i}_jpeg.jpg", quality=75)
            image.resize((2 * w, 2 * h), Image.BICUBIC).save(root / f"{i}_up2.png")
            image.crop((1, 1, w - 1, h - 1)).save(root / f"{i}_crop.png")
        cache = Path(tmp) / "c.h5"
        extract(
            root.parent, output=cache, backbone="mobilenet", weights=args.weights, progress=False
        )
        reader = CacheReader(cache)
        x = normalize(reader.features())
        row = {p: i for i, p in enumerate(reader.paths)}
        out: dict[str, object] = {"images": len(sources)}
        for kind in ("jpeg.jpg", "up2.png", "crop.png"):
            cos = [
                float(x[row[f"x/{i}_orig.png"]] @ x[row[f"x/{i}_{kind}"]])
                for i in range(len(sources))
            ]
            out[kind] = {"min": min(cos), "median": float(np.median(cos)), "max": max(cos)}
        originals = x[[row[f"x/{i}_orig.png"] for i in range(len(sources))]]
        sims = originals @ originals.T
        np.fill_diagonal(sims, -1.0)
        out["distinct_originals_max"] = float(sims.max())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
