"""What cached augmented views cost to extract: ``extract --views K`` against a plain run.

Usage (from the repository root)::

    python benchmarks/bench_views_extract.py --images 1000 --sizes 96,224 --views 1,5 \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5

``--images`` Fashion-MNIST train images as 96 px RGB JPEGs in class folders, extracted
with the frozen MobileNet at each size and view count (``--overwrite``, a fresh cache each
time, after one warm-up run so that TensorFlow's import is not counted). Reports the
embedding time (the run less its model loading), images and view embeddings per second,
and the cache size. Accuracy with views: ``bench_views.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sizes", default="96,224")
    parser.add_argument("--views", default="1,5")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", dest="json_out", default="benchmarks/results-views-extract.json")
    args = parser.parse_args()

    from featcache import extract

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-views-extract-"))
    data = write_jpeg_folder(work / "data", args.images, 96)
    common = {"backbone": "mobilenet", "weights": args.weights, "progress": False}
    extract(data, output=work / "warm.h5", image_size=96, overwrite=True, **common)
    rows = []
    for size in (int(v) for v in args.sizes.split(",")):
        for views in (int(v) for v in args.views.split(",")):
            out = work / f"{size}-{views}.h5"
            summary = extract(
                data, output=out, image_size=size, views=views, overwrite=True, **common
            )
            seconds = summary.seconds - summary.load_seconds
            row = {
                "size": size,
                "views": views,
                "images": summary.new,
                "embedding_seconds": round(seconds, 2),
                "images_per_second": round(summary.new / seconds, 1),
                "embeddings_per_second": round(summary.new * views / seconds, 1),
                "cache_mib": round(out.stat().st_size / 2**20, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "args": vars(args),
        "runs": rows,
    }
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
