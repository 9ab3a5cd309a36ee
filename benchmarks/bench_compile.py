"""The first train step after ``compile``: Keras's own ``compile`` against
``heads.compiling.compile_for_training`` (the optimizer built at compile), side by side.

Usage (from the repository root)::

    python benchmarks/bench_compile.py --weights-dir ../shared/weights --repeats 3 \
        --json one.json
    python benchmarks/bench_compile.py --weights-dir ../shared/weights --repeats 3 --fresh \
        --json fresh.json     # each measurement in a new process

Every fine-tune phase, its step timing, the range test and the head's re-fit compile the
model anew; each compile's first step pays the trace of the train step. The model is the
one fine-tune trains: MobileNet (the shipped ImageNet weights when ``--weights-dir`` holds
them, random otherwise) under a dense head, at 224 px, batch 16, with the layer-wise
optimizer the auto recipe uses. Per set-up (head only, the top quarter of the backbone,
all of it) and per compiler, in alternating order: the seconds from ``compile`` to the end
of the first step, the number of traces of the train step, and the next step's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from featcache.heads.compiling import compile_for_training
from featcache.heads.schedule import layerwise_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import _cpu_flags
from ood_datasets import run_record

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"


def build(weights: str | None, size: int, classes: int) -> tuple[Any, Any]:
    import keras

    backbone = keras.applications.MobileNet(
        include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
    )
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Dense(64, activation="relu")(backbone(inputs))
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), backbone


def thaw(backbone: Any, share: float) -> None:
    """The top ``share`` of the backbone's layers with weights trainable, never BatchNorm."""
    import keras

    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    keep = len(weighted) - round(share * len(weighted))
    for i, layer in enumerate(weighted):
        norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= keep and not norm


def one(compiler: str, share: float, args: argparse.Namespace) -> dict[str, Any]:
    import keras

    keras.backend.clear_session()
    model, backbone = build(args.weights, args.size, 4)
    thaw(backbone, share)
    traces: list[int] = []
    real_step = model.train_step

    def counted(data: Any) -> Any:
        traces.append(1)
        return real_step(data)

    model.train_step = counted
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    y = rng.integers(0, 4, args.batch)
    settings = {
        "optimizer": layerwise_optimizer("adam", 1e-4, {}),
        "loss": keras.losses.SparseCategoricalCrossentropy(),
    }
    began = time.monotonic()
    if compiler == "keras":
        model.compile(**settings)
    else:
        compile_for_training(model, **settings)
    model.train_on_batch(x, y)
    first = time.monotonic() - began
    began = time.monotonic()
    model.train_on_batch(x, y)
    return {"first_step_s": first, "next_step_s": time.monotonic() - began, "traces": len(traces)}


def fresh(compiler: str, share: float, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`one` in a new Python process."""
    sizes = ["--size", str(args.size), "--batch", str(args.batch)]
    weights = ["--weights-dir", str(args.weights_dir or "")]
    command = [sys.executable, __file__, "--one", compiler, str(share), *sizes, *weights]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="each measurement in a new Python process (nothing traced before it), as the "
        "first compile of a user's run; default: all in one process, as the later ones",
    )
    parser.add_argument("--one", nargs=2, metavar=("COMPILER", "SHARE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    found = Path(args.weights_dir or "") / WEIGHTS
    args.weights = str(found) if args.weights_dir and found.is_file() else None
    if args.one:  # a child of --fresh: one measurement, as JSON on the last line
        print(json.dumps(one(args.one[0], float(args.one[1]), args)))
        return
    setups = {"head": 0.0, "top quarter": 0.25, "all": 1.0}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"keras": [], "ours": []} for s in setups
    }
    for r in range(args.repeats):
        for name, share in setups.items():
            order = ("keras", "ours") if r % 2 == 0 else ("ours", "keras")
            for compiler in order:
                rows[name][compiler].append(
                    fresh(compiler, share, args) if args.fresh else one(compiler, share, args)
                )
    summary = {}
    print(
        f"{'set-up':12s} {'compile':8s} {'traces':>6s} {'first step s':>12s} {'next step s':>11s}"
    )
    for name, by in rows.items():
        summary[name] = {}
        for compiler, runs in by.items():
            first = statistics.median(r["first_step_s"] for r in runs)
            nxt = statistics.median(r["next_step_s"] for r in runs)
            traces = sorted({r["traces"] for r in runs})
            summary[name][compiler] = {"first_step_s": first, "next_step_s": nxt, "traces": traces}
            print(f"{name:12s} {compiler:8s} {traces!s:>6s} {first:12.2f} {nxt:11.3f}")
        ratio = summary[name]["ours"]["first_step_s"] / summary[name]["keras"]["first_step_s"]
        summary[name]["first_step_ratio_ours_to_keras"] = ratio
        print(f"{name:12s} first step, ours / keras: {ratio:.2f}")
    if args.json:
        record = {
            **run_record(),
            "cpu": _cpu_flags(),
            "weights": "ImageNet" if args.weights else "random",
            "fresh_process_each": args.fresh,
            "size": args.size,
            "batch": args.batch,
            "repeats": args.repeats,
            "summary": summary,
            "runs": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
