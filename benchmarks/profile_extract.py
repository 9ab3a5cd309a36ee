"""Where one ``extract`` run's seconds go, stage by stage, in a fresh process.

Usage (from the repository root)::

    python benchmarks/profile_extract.py --images 1000 --backbones mobilenet,resnet50 \
        --formats jpeg,native --weights-dir ../shared/weights

Each stage's functions are wrapped with a timer before the run (the code itself is not
changed) and their time is summed over the threads that ran them:

- ``import`` and ``build``: importing TensorFlow, building the backbone and loading weights;
- ``list``: scanning the folder (before the engine starts);
- ``read+hash``: ``Dataset.read`` (file bytes and SHA-256), reader threads;
- ``decode``: TensorFlow's decoder, and ``header``: Pillow's header and EXIF check, reader threads;
- ``resize``: images resized on reader threads (those not left to the graph);
- ``model``: the traced graph (cast or resize, preprocess, backbone), main thread;
- ``batch``: assembling a batch (``np.stack``) around the model call, main thread;
- ``hdf5``: ``CacheWriter.add`` and ``commit`` (checkpoints and the final one),
  background writer thread;
- ``progress``: the recorder's progress reporting, main thread.

The main thread's wall time minus its own stages is its waiting on the readers (thread
hand-offs). Reader stages overlap the model: their sum is CPU time taken from the model's
cores, not wall time added to the run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import _folder, _weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_TOTALS: Counter[str] = Counter()
_LOCK = threading.Lock()


def _timed(owner: Any, name: str, stage: str) -> None:
    """Wrap ``owner.name`` so that its time is added to ``stage``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - began
            with _LOCK:
                _TOTALS[stage] += spent

    setattr(owner, name, wrapper)


def profile(folder: Path, backbone: str, weights: str, size: int, batch: int) -> dict:
    """One ``extract`` run with every stage timed."""
    began = time.perf_counter()
    from featcache.extractor import backbone as backbone_module
    from featcache.extractor import decode, engines, recorder, runner, sources
    from featcache.store import writer

    _timed(sources.Dataset, "read", "read+hash")
    _timed(decode, "_decode_tf", "decode")
    _timed(decode, "decode_image", "decode+header")
    _timed(engines, "resize_image", "resize")
    _timed(backbone_module.FeatureExtractor, "__call__", "model")
    _timed(backbone_module.FeatureExtractor, "embed_pixels", "model")
    _timed(engines.LocalEmbedder, "embed", "batch+model")
    _timed(backbone_module.FeatureExtractor, "__init__", "build")
    _timed(backbone_module.FeatureExtractor, "_pixel_function", "trace")
    _timed(writer.CacheWriter, "add", "hdf5")
    _timed(writer.CacheWriter, "commit", "hdf5")
    _timed(recorder.Recorder, "report", "progress")
    _timed(runner, "scan_dataset", "list")
    from featcache import extract

    with tempfile.TemporaryDirectory() as tmp:
        summary = extract(
            folder,
            backbone=backbone,
            weights=weights,
            image_size=size,
            output=Path(tmp) / "profile.h5",
            batch_size=batch,
            progress=False,
        )
    wall = time.perf_counter() - began
    stages = dict(_TOTALS)
    stages["header"] = stages.pop("decode+header", 0.0) - stages.get("decode", 0.0)
    # the first batch builds the model and traces the uint8 graph: loading, not embedding
    build, trace = stages.pop("build", 0.0), stages.pop("trace", 0.0)
    stages["model"] = stages.get("model", 0.0) - trace
    stages["batch"] = stages.pop("batch+model", 0.0) - stages["model"] - trace - build
    main_thread = sum(stages.get(k, 0.0) for k in ("model", "batch", "progress"))
    return {
        "images": summary.new,
        "wall_seconds": wall,
        "extract_seconds": summary.seconds,
        "load_seconds": summary.load_seconds,
        "stages": stages,
        "build_seconds": build,
        "trace_seconds": trace,
        "main_thread_waiting": summary.seconds - summary.load_seconds - main_thread,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbones", default="mobilenet,resnet50")
    parser.add_argument("--formats", default="jpeg,native")
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights-one", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = profile(Path(args.data), args.backbones, args.weights_one, args.size, args.batch_size)
        print(json.dumps(row))
        return
    rows = []
    for backbone in [b for b in args.backbones.split(",") if b]:
        for kind in [k for k in args.formats.split(",") if k]:
            folder = _folder(Path(args.data), kind, args.images, args.size)
            weights = _weights(backbone, args.weights_dir)
            command = [sys.executable, __file__, "--one", "--backbones", backbone]
            command += ["--weights-one", weights, "--data", str(folder)]
            command += ["--size", str(args.size), "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = {"backbone": backbone, "files": kind, **json.loads(done.stdout.splitlines()[-1])}
            rows.append(row)
            n = row["images"]
            parts = ", ".join(
                f"{k} {v:.2f} s ({1000 * v / n:.2f} ms/img)" for k, v in row["stages"].items()
            )
            print(
                f"{backbone} {kind}: {n} images, extract {row['extract_seconds']:.2f} s "
                f"(load {row['load_seconds']:.2f} s: build {row['build_seconds']:.2f} s, "
                f"trace {row['trace_seconds']:.2f} s; main thread waiting "
                f"{row['main_thread_waiting']:.2f} s): {parts}",
                flush=True,
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
