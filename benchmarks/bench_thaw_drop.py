"""Why the first thawed epoch drops val: the auto recipe's first epochs under one change each.

Section 30 of RESULTS.md saw val accuracy fall by 10-15 points in the first epoch that trains
backbone layers, whatever the head it starts from. This runs ``fine_tune`` (auto schedule,
a few epochs, the number fixed so no extension) on one set with the recipe as shipped and
with one ingredient changed at a time (no augmentation, no class weights, SGD instead of
Adam, a tenth of the rate, a longer warm-up), and prints each epoch's val accuracy and
balanced accuracy per phase, so the cause is the arm whose drop disappears::

    python benchmarks/bench_thaw_drop.py --set mnist-lt --size 96 \\
        --weights-dir ../shared/weights --json thaw-mnist-lt.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_datasets import BUILDERS, add_run_arguments, run_record, weights_file

ARMS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "no-augment": {"augment": ""},
    "no-weights": {"balance": "none"},
    "sgd": {"optimizer": "sgd", "lr": 1e-3},
    "lr-tenth": {"lr": 1e-5},
    "warmup-0.5": {"warmup": 0.5},
    "lamb-1e-3": {"lr": 1e-3},
    "lamb-3e-3": {"lr": 3e-3},
    "backbone-tenth": {},
}
"""One change each against the shipped recipe (``sgd``: momentum 0.9 at ten times Adam's
default rate, the usual ratio; ``lamb-*``: Keras's LAMB in place of Adam, each layer's step
a fixed share of its weights' norm; ``backbone-tenth``: every backbone group's rate a tenth
of the shipped one, the head's unchanged)."""
PATCHES = {"lamb-1e-3": "lamb", "lamb-3e-3": "lamb", "backbone-tenth": "backbone-tenth"}


@contextlib.contextmanager
def patched(kind: str | None) -> Iterator[None]:
    """The arm's change that no option of ``fine_tune`` makes (experiments only)."""
    from featcache.heads import finetune_phases, schedule

    saved = finetune_phases.layerwise_optimizer, finetune_phases.group_scales
    if kind == "lamb":
        import keras

        def lamb(name: str, learning_rate: Any, scales: dict[int, float]) -> Any:
            saved_adam = keras.optimizers.Adam
            keras.optimizers.Adam = keras.optimizers.Lamb
            try:
                return schedule.layerwise_optimizer(name, learning_rate, scales)
            finally:
                keras.optimizers.Adam = saved_adam

        finetune_phases.layerwise_optimizer = lamb
    elif kind == "backbone-tenth":
        finetune_phases.group_scales = lambda total, decay=schedule.LR_DECAY: [
            0.1 * s for s in schedule.group_scales(total, decay)
        ]
    try:
        yield
    finally:
        finetune_phases.layerwise_optimizer, finetune_phases.group_scales = saved


def phases_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each phase's name and per-epoch val figures, from the head's start on."""
    out = []
    for phase in report["phases"]:
        out.append(
            {
                "name": phase["name"],
                "layers": phase.get("layers", 0),
                "val_accuracy": [round(v, 4) for v in phase["val_accuracy"]],
                "val_balanced_accuracy": [
                    round(v, 4) for v in phase.get("val_balanced_accuracy", [])
                ],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="mnist-lt", choices=sorted(BUILDERS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=900)
    add_run_arguments(parser)
    args = parser.parse_args()
    from featcache import extract
    from featcache.heads.finetune import fine_tune
    from featcache.heads.train import train_head

    weights = weights_file(args.weights_dir)
    data = BUILDERS[args.set](
        Path(args.data) / f"{args.set}-{args.size}", args.size, args.train, args.val, args.test
    )
    results: dict[str, Any] = {**run_record(), "set": args.set, "epochs": args.epochs,
                               "seed": args.seed, "arms": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache.h5"
        extract(data["folder"], backbone="mobilenet", weights=weights, image_size=args.size,
                output=cache, progress=False)  # fmt: skip
        train_head(cache, head="dense", hidden=(256,), epochs=30, output=work / "head")
        for arm in [a for a in args.arms.split(",") if a]:
            began = time.monotonic()
            with patched(PATCHES.get(arm)):
                tuned = fine_tune(cache, work / "head", output=work / arm, seed=args.seed,
                                  epochs=args.epochs, **ARMS[arm])  # fmt: skip
            report = tuned.report
            record = {
                "options": ARMS[arm],
                "patch": PATCHES.get(arm),
                "seconds": round(time.monotonic() - began, 1),
                "phases": phases_of(report),
                "recipe": {k: v.get("summary") for k, v in report.get("recipe", {}).items()},
                "exported": report.get("exported"),
                "test_accuracy": report["test"]["accuracy"],
                "test_balanced_accuracy": report["test"].get("balanced_accuracy"),
            }
            results["arms"][arm] = record
            line = " | ".join(
                f"{p['name']} " + " ".join(f"{v:.3f}" for v in p["val_accuracy"])
                for p in record["phases"]
            )
            print(f"{args.set} {arm} ({record['seconds']:.0f} s): {line}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
