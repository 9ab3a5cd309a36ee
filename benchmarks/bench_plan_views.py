"""fine-tune's time plan against what the run took, the final evaluation with test views
included (``report["plan"]["evaluate_seconds"]``, estimated before training, against
``report["evaluate_seconds"]``, taken).

Usage (from the repository root; the sets as ``bench_finetune_ood.py`` builds them)::

    python benchmarks/bench_plan_views.py --sets deepsky --size 224 --seed 20 \
        --weights-dir ../shared/weights --json deepsky-plan.json

Per set: ``extract`` (MobileNet, frozen), ``train-head --head dense`` (as
``bench_finetune_ood.py``), then one ``fine-tune`` with every default (auto, test views
auto); prints and saves the plan's estimates beside the times taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_datasets import (
    add_run_arguments,
    add_set_arguments,
    cache_and_head,
    run_record,
    weights_file,
)


def run_set(name: str, args: argparse.Namespace, weights: str, work: Path) -> dict[str, Any]:
    from featcache.heads.finetune import fine_tune

    _, cache, head = cache_and_head(name, args, weights, work)
    began = time.monotonic()  # the plan's estimates count from when it is made, after this
    tuned = fine_tune(cache, head, output=work / f"{name}-ft", seed=args.seed)
    report, taken = tuned.report, time.monotonic() - began
    plan = report.get("plan", {})
    return {
        "seed": args.seed,
        "rows": report["rows"],
        "image_size": report["image_size"],
        "augment": report["params"]["augment"],
        "test_views": report["test_views"]["chosen"],
        "exported": report.get("exported"),
        "plan_summary": plan.get("summary"),
        "val_seconds": plan.get("val_seconds"),
        "evaluate_passes": plan.get("evaluate_passes"),
        "evaluate_estimated": plan.get("evaluate_seconds"),
        "evaluate_taken": report["evaluate_seconds"],
        "fit_estimated": plan.get("estimated_fit_seconds"),
        "estimated": plan.get("estimated_seconds"),
        "most_estimated": plan.get("estimated_most_seconds"),
        "epochs_added": report["recipe"]["epochs"].get("added"),
        "fit_taken": report["fit_seconds"],
        "fine_tune_seconds": round(taken, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="deepsky,textures")
    add_set_arguments(parser)
    parser.add_argument("--seed", type=int, default=20)
    add_run_arguments(parser)
    args = parser.parse_args()
    weights = weights_file(args.weights_dir)
    results: dict[str, Any] = {**run_record(), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            got = results["sets"][name] = run_set(name, args, weights, Path(tmp))
            print(f"{name}: test views {got['test_views']} (passes {got['evaluate_passes']}); "
                  f"evaluation {got['evaluate_taken']:.1f} s (estimated "
                  f"{got['evaluate_estimated']:.1f} s); fit {got['fit_taken']:.1f} s "
                  f"(estimated {got['fit_estimated']:.1f} s)", flush=True)  # fmt: skip
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
