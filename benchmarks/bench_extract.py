"""Extraction speed and memory: model only vs ``extract`` vs the Keras reference pipeline.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_extract.py --images 1000 --backbones mobilenet,resnet50 \
        --weights-dir ../shared/weights --memory 2000,20000

(a) model only: the same frozen backbone (featcache's tf.function) on decoded, resized
    tensors already in memory, batches of 32;
(b) ``extract`` end to end: JPEG files to a new HDF5 cache;
(c) the Keras reference: ``image_dataset_from_directory`` + ``preprocess_input`` +
    ``model.predict`` (features discarded).
Every run is a fresh process (as a user running one command has it). Importing TensorFlow,
backbone construction and weight loading are excluded from (a), (b) and (c) alike and
reported on their own. Peak memory: ``extract`` in a subprocess, peak RSS from ``wait4``.
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
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHT_FILES = {
    "mobilenet": "mobilenet_1_0_224_imagenet_notop.weights.h5",
    "vgg16": "vgg16_hed_bsds500_notop.weights.h5",
}


def _weights(backbone: str, weights_dir: str | None) -> str:
    if weights_dir and backbone in WEIGHT_FILES:
        path = Path(weights_dir) / WEIGHT_FILES[backbone]
        if path.is_file():
            return str(path)
    return "none"


def _decoded(folder: Path, size: int) -> np.ndarray:
    from featcache.extractor.decode import decode_image, resize_image
    from featcache.extractor.sources import scan_dataset

    dataset = scan_dataset(folder)
    return np.stack(
        [
            resize_image(decode_image((folder / item.path).read_bytes()), (size, size))
            for item in dataset.items
        ]
    )


def model_only(backbone: str, weights: str, images: np.ndarray, batch: int) -> dict:
    from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone

    began = time.monotonic()
    extractor = FeatureExtractor(
        resolve_backbone(BackboneConfig(backbone, weights, images.shape[1]))
    )
    load = time.monotonic() - began
    extractor(images[:batch])  # trace and warm up
    began = time.monotonic()
    for start in range(0, len(images), batch):
        extractor(images[start : start + batch])
    seconds = time.monotonic() - began
    return {"seconds": seconds, "images_per_second": len(images) / seconds, "load_seconds": load}


def end_to_end(backbone: str, weights: str, folder: Path, size: int, batch: int) -> dict:
    began = time.monotonic()
    import tensorflow  # noqa: F401 - imported first, as the model-only row has it

    tf_import = time.monotonic() - began
    from featcache import extract

    with tempfile.TemporaryDirectory() as tmp:
        summary = extract(
            folder,
            backbone=backbone,
            weights=weights,
            image_size=size,
            output=Path(tmp) / "bench.h5",
            batch_size=batch,
            progress=False,
        )
    seconds = summary.seconds - summary.load_seconds
    return {
        "seconds": seconds,
        "images_per_second": summary.new / seconds,
        "wall_seconds": summary.seconds,
        "load_seconds": summary.load_seconds,
        "tf_import_seconds": tf_import,
    }


def keras_reference(backbone: str, weights: str, folder: Path, size: int, batch: int) -> dict:
    import keras

    from featcache.backbones.registry import get_backbone

    spec = get_backbone(backbone)
    model = spec.constructor()(
        include_top=False,
        weights=None if weights == "none" else weights,
        pooling="avg",
        input_shape=(size, size, 3),
    )
    preprocess = spec.preprocess_input()
    began = time.monotonic()
    dataset = keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=batch, shuffle=False, verbose=False
    )
    dataset = dataset.map(lambda x, y: preprocess(x))
    features = model.predict(dataset, verbose=0)
    seconds = time.monotonic() - began
    return {"seconds": seconds, "images_per_second": len(features) / seconds}


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a running process (VmHWM), in KiB; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(folder: Path, size: int, backbone: str, weights: str) -> dict:
    """Peak RSS of ``extract`` in its own process, read from /proc while it runs.

    (``wait4``'s ``ru_maxrss`` would count the benchmark's own memory, inherited at fork.)
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "featcache.cli",
            "extract",
            str(folder),
            "-q",
            "--backbone",
            backbone,
            "--weights",
            weights,
            "--image-size",
            str(size),
            "-o",
            str(Path(tmp) / "mem.h5"),
            "--json",
        ]
        began = time.monotonic()
        with tempfile.TemporaryFile() as out:
            process = subprocess.Popen(cmd, stdout=out)
            peak = 0
            while process.poll() is None:
                peak = max(peak, _vm_hwm_kib(process.pid))
                time.sleep(0.1)
            if process.returncode != 0:
                raise SystemExit(f"extract failed: {cmd}")
            out.seek(0)
            summary = json.loads(out.read())
    return {
        "images": summary["rows"],
        "peak_rss_mib": peak / 1024,
        "seconds": time.monotonic() - began,
    }


def _one(mode: str, backbone: str, weights: str, folder: Path, size: int, batch: int) -> dict:
    """One run of one mode, in this (fresh) process."""
    if mode == "a":
        return model_only(backbone, weights, _decoded(folder, size), batch)
    if mode == "b":
        return end_to_end(backbone, weights, folder, size, batch)
    return keras_reference(backbone, weights, folder, size, batch)


def _fresh(mode: str, backbone: str, weights: str, folder: Path, size: int, batch: int) -> dict:
    """:func:`_one` in a fresh process: no thread pools, models or traces of an earlier
    mode, as a user running one command has it."""
    command = [sys.executable, __file__, "--one", mode, "--backbones", backbone]
    command += ["--weights-one", weights, "--data", str(folder), "--size", str(size)]
    command += ["--batch-size", str(batch)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _folder(data: Path, kind: str, images: int, size: int) -> Path:
    """The image folder of one file kind (see ``--formats``)."""
    if kind == "jpeg":
        return write_jpeg_folder(data / f"jpeg{size}-{images}", images, size)
    if kind == "png":
        return write_jpeg_folder(data / f"png{size}-{images}", images, size, fmt="PNG")
    if kind == "native":
        return write_jpeg_folder(data / f"native28-{images}", images, 28, fmt="PNG")
    raise SystemExit(f"--formats {kind!r}: expected jpeg, png or native")


def _median(runs: list[dict]) -> dict:
    """The run with the median rate, plus every run's rate."""
    ordered = sorted(runs, key=lambda r: r["images_per_second"])
    return {**ordered[len(ordered) // 2], "all_rates": [r["images_per_second"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of (a), (b), (c), interleaved; the median is reported",
    )
    parser.add_argument("--backbones", default="mobilenet,resnet50")
    parser.add_argument(
        "--formats",
        default="jpeg",
        help="image files to read: jpeg, png (Fashion-MNIST upscaled to --size px), and "
        "native (28 px PNGs, resized to --size by extract)",
    )
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument(
        "--memory", default="2000,20000", help="image counts for the peak-memory runs ('' to skip)"
    )
    parser.add_argument(
        "--memory-size", type=int, default=96, help="image and input size of the memory runs"
    )
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--json", dest="json_out", default=None, help="also write results here")
    parser.add_argument("--one", choices=("a", "b", "c"), help=argparse.SUPPRESS)
    parser.add_argument("--weights-one", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process of _fresh: --data is the image folder itself
        row = _one(
            args.one, args.backbones, args.weights_one, Path(args.data), args.size, args.batch_size
        )
        print(json.dumps(row))
        return

    data = Path(args.data)
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": args.images,
        "size": args.size,
        "speed": [],
        "memory": [],
    }
    cases = [
        (backbone, kind)
        for backbone in args.backbones.split(",")
        if backbone
        for kind in args.formats.split(",")
        if kind
    ]
    for backbone, kind in cases:
        folder = _folder(data, kind, args.images, args.size)
        weights = _weights(backbone, args.weights_dir)
        runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
        for _ in range(args.repeats):  # each run in a fresh process, interleaved a, b, c
            for mode in "abc":
                runs[mode].append(
                    _fresh(mode, backbone, weights, folder, args.size, args.batch_size)
                )
        a, b, c = (_median(runs[k]) for k in "abc")
        row = {
            "backbone": backbone,
            "files": kind,
            "weights": Path(weights).name,
            "model_only": a,
            "extract": b,
            "keras": c,
            "runs": runs,
            "b_over_a": b["images_per_second"] / a["images_per_second"],
            "b_over_c": b["images_per_second"] / c["images_per_second"],
        }
        results["speed"].append(row)
        print(
            f"{backbone:>12} {kind:>6}: model {a['images_per_second']:.1f}/s, extract "
            f"{b['images_per_second']:.1f}/s, keras {c['images_per_second']:.1f}/s, "
            f"b/a {row['b_over_a']:.2f}, b/c {row['b_over_c']:.2f} "
            f"(load {b['load_seconds']:.1f} s)",
            flush=True,
        )
    for count in [int(n) for n in args.memory.split(",") if n]:
        mem_folder = write_jpeg_folder(
            data / f"jpeg{args.memory_size}-{count}", count, args.memory_size
        )
        row = peak_memory(
            mem_folder, args.memory_size, "mobilenet", _weights("mobilenet", args.weights_dir)
        )
        results["memory"].append(row)
        print(
            f"memory: {row['images']} images -> peak RSS {row['peak_rss_mib']:.0f} MiB "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
    if len(results["memory"]) >= 2:
        ratio = results["memory"][-1]["peak_rss_mib"] / results["memory"][0]["peak_rss_mib"]
        results["memory_ratio"] = ratio
        print(
            f"memory ratio {results['memory'][-1]['images']} vs "
            f"{results['memory'][0]['images']}: {ratio:.2f}x"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
