"""How far a backbone runs from this machine's arithmetic peak (FLOP utilisation).

Usage (from the repository root)::

    python benchmarks/bench_flops.py --backbones resnet50 --seconds 10

For each precision (float32, and bfloat16 where asked) it measures, each in a fresh process:

- the **peak**: a large square ``tf.linalg.matmul`` in a ``tf.function`` (oneDNN's best
  case: 2 n^3 floating-point operations per call), in GFLOP/s;
- the **backbone**: featcache's ``FeatureExtractor`` at 224 px, batches of 32, on arrays in
  memory, in images/s;
- the backbone's **GFLOPs per image**, counted layer by layer (convolutions, depthwise
  convolutions and dense layers: 2 x multiply-adds; batch norm, activations and pooling
  are left out, so the figure is a floor).

Utilisation = images/s x GFLOPs per image / peak GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def layer_flops(model: Any) -> float:
    """Floating-point operations (2 x multiply-adds) of one image through ``model``'s
    convolution, depthwise convolution and dense layers, nested models included."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += layer_flops(layer)
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        out = layer.output.shape
        kernel = layer.kernel.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # kernel (kh, kw, channels, multiplier): one kh*kw filter per output channel
            macs = out[1] * out[2] * out[3] * kernel[0] * kernel[1]
        elif isinstance(layer, keras.layers.Conv2D):
            groups = getattr(layer, "groups", 1) or 1
            macs = out[1] * out[2] * out[3] * kernel[0] * kernel[1] * kernel[2] // groups
        else:  # Dense on (N, D) or (N, ..., D)
            positions = 1
            for dim in out[1:-1]:
                positions *= dim
            macs = positions * kernel[0] * kernel[1]
        total += 2.0 * macs
    return total


def peak(precision: str, n: int, seconds: float) -> dict:
    """GFLOP/s of an n x n matmul, repeated for ``seconds``."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
    a = tf.random.uniform((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(a, b).numpy()  # trace and warm up
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        matmul(a, b).numpy()
        calls += 1
    elapsed = time.perf_counter() - began
    return {"n": n, "gflops_per_second": 2 * n**3 * calls / elapsed / 1e9}


def backbone_rate(backbone: str, precision: str, size: int, batch: int, seconds: float) -> dict:
    """Images/s of featcache's extractor on in-memory arrays, and GFLOPs per image."""
    import numpy as np

    from featcache.backbones.backbone import FeatureExtractor, resolve_backbone
    from featcache.core.settings import BackboneConfig

    config = BackboneConfig(backbone, "none", size)
    if precision != "float32":
        config = BackboneConfig(backbone, "none", size, precision=precision)  # type: ignore[call-arg]
    extractor = FeatureExtractor(resolve_backbone(config))
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    extractor(images)  # warm up
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        extractor(images)
        calls += 1
    elapsed = time.perf_counter() - began
    return {
        "images_per_second": calls * batch / elapsed,
        "gflops_per_image": layer_flops(extractor.model) / 1e9,
    }


def _fresh(args: list[str]) -> dict:
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet50")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--matmul", type=int, default=4096, help="side of the peak matmul")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timing")
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--one", choices=("peak", "backbone"), help=argparse.SUPPRESS)
    parser.add_argument("--precision-one", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "peak":
        print(json.dumps(peak(args.precision_one, args.matmul, args.seconds)))
        return
    if args.one == "backbone":
        row = backbone_rate(
            args.backbones, args.precision_one, args.size, args.batch_size, args.seconds
        )
        print(json.dumps(row))
        return

    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "rows": [],
    }
    common = ["--seconds", str(args.seconds), "--size", str(args.size)]
    common += ["--batch-size", str(args.batch_size), "--matmul", str(args.matmul)]
    for precision in [p for p in args.precisions.split(",") if p]:
        top = _fresh(["--one", "peak", "--precision-one", precision, *common])
        for backbone in [b for b in args.backbones.split(",") if b]:
            one = ["--one", "backbone", "--backbones", backbone, "--precision-one", precision]
            rate = _fresh([*one, *common])
            achieved = rate["images_per_second"] * rate["gflops_per_image"]
            row = {
                "backbone": backbone,
                "precision": precision,
                "peak_gflops_per_second": top["gflops_per_second"],
                **rate,
                "achieved_gflops_per_second": achieved,
                "utilisation": achieved / top["gflops_per_second"],
            }
            results["rows"].append(row)
            print(
                f"{backbone} {precision}: {rate['images_per_second']:.1f} img/s x "
                f"{rate['gflops_per_image']:.2f} GFLOP = {achieved:.0f} GFLOP/s of a "
                f"{top['gflops_per_second']:.0f} GFLOP/s matmul peak "
                f"({100 * row['utilisation']:.0f}%)",
                flush=True,
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
