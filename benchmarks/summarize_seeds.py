"""Several ``bench_finetune_ood.py`` runs (one set and seed each) as one table: per set,
the head, the auto recipe per seed, and the mean change against the head over the seeds
with a 95% t-interval (the seeds' spread) beside each run's bootstrap interval.

Usage (from the repository root)::

    python benchmarks/summarize_seeds.py /tmp/r29/*.json \
        --json benchmarks/results-finetune-ood-seeds.json

Prints a markdown table for RESULTS.md; ``--json`` writes the merged runs and the summary.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}
"""Student's t, two-sided 95%, by degrees of freedom (seeds - 1)."""


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval (the values themselves when there is one)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def runs_by_set(paths: list[Path], arm: str) -> dict[str, list[dict[str, Any]]]:
    """Each set's runs of ``arm`` (one per file and seed), with the head beside them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        if "sets" not in data:  # not a bench_finetune_ood.py run
            continue
        seed = _seed(data.get("command", ""))
        for name, got in data["sets"].items():
            if arm not in got:
                continue
            report = got[arm]["report"]
            out.setdefault(name, []).append(
                {
                    "seed": seed,
                    "file": str(path),
                    "head": {k: got["head"][k] for k in ("accuracy", "balanced_accuracy")},
                    "auto": {k: got[arm][k] for k in ("accuracy", "balanced_accuracy")},
                    "rarest": got["rarest_class"],
                    "rarest_recall": [got[k]["recall"][got["rarest_class"]] for k in ("head", arm)],
                    "exported": report.get("exported", "fine-tuned"),
                    "seconds": round(got[arm]["seconds"]),
                    "recipe": {k: v.get("summary") for k, v in report.get("recipe", {}).items()},
                    "best": report.get("best"),
                }
            )
    for runs in out.values():
        runs.sort(key=lambda r: (r["seed"] is None, r["seed"]))
    return out


def _seed(command: str) -> int | None:
    words = command.split()
    return int(words[words.index("--seed") + 1]) if "--seed" in words else None


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean change against the head over the seeds, with its interval."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for key in ("accuracy", "balanced_accuracy"):
        changes = [r["auto"][key]["value"] - r["head"][key]["value"] for r in runs]
        mean, low, high = mean_interval(changes)
        out[key] = {"change": round(mean, 4), "low": round(low, 4), "high": round(high, 4),
                    "per_seed": [round(c, 4) for c in changes]}  # fmt: skip
    out["fine_tuned_exports"] = sum(r["exported"] != "head-only" for r in runs)
    return out


def table(by_set: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown table."""

    def ci(m: dict[str, float]) -> str:
        return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"

    lines = [
        "| set | head acc | head bal | seed | auto acc | auto bal | exported | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_set.items():
        for r in runs:
            lines.append(
                f"| {name} | {ci(r['head']['accuracy'])} | {ci(r['head']['balanced_accuracy'])} "
                f"| {r['seed']} | {ci(r['auto']['accuracy'])} | "
                f"{ci(r['auto']['balanced_accuracy'])} | {r['exported']} | {r['seconds']} |"
            )
    lines += ["", "| set | seeds | change acc (95% t) | change bal (95% t) | fine-tuned kept |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, runs in by_set.items():
        s = summary(runs)
        a, b = s["accuracy"], s["balanced_accuracy"]
        lines.append(
            f"| {name} | {len(runs)} | {a['change']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}] "
            f"| {b['change']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}] "
            f"| {s['fine_tuned_exports']} of {len(runs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--arm", default="new")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args()
    by_set = runs_by_set(args.files, args.arm)
    print(table(by_set))
    if args.json_out:
        merged = {name: {"runs": runs, "summary": summary(runs)} for name, runs in by_set.items()}
        args.json_out.write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
