"""Layer taps on sets far from ImageNet: the last layer vs the best inner layer vs all of
them side by side, from one ``extract --taps auto``, with what the taps cost.

Usage (from the repository root; the sets as in ``ood_datasets.py``)::

    python benchmarks/bench_taps.py --sets textures,digits,mnist-lt --size 96 \
        --weights-dir ../shared/weights --json benchmarks/results-taps.json

Per set: ``extract`` of its split folders with the real ImageNet MobileNet, once without
taps and once with ``--taps auto`` (embedding seconds of each, after the model loaded;
bytes each ``taps/LAYER`` dataset holds), then ``compare --taps all --protocol
linear-probe`` (test acc@1 with 95% bootstrap intervals for ``main``, each tap and their
concatenation), and the same with ``--shots K`` for each K of ``--shots`` (few-shot
curve per tap, mean over ``--seeds`` draws).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_datasets import BUILDERS, add_run_arguments, run_record, weights_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def storage(cache: Path) -> dict[str, int]:
    """Bytes of ``features`` and of each tap dataset (rows x width x item size; HDF5
    allocates whole chunks on top)."""
    import h5py

    with h5py.File(cache, "r") as handle:
        names = ["features", *(f"taps/{name}" for name in handle.get("taps", {}))]
        return {
            name.removeprefix("taps/"): int(handle[name].size * handle[name].dtype.itemsize)
            for name in names
        }


def _acc(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "acc1": row["test_acc1"],
        "low": row["test_acc1_low"],
        "high": row["test_acc1_high"],
        "std": row.get("test_acc1_std"),
    }


def run_set(name: str, args: argparse.Namespace, weights: str, work: Path) -> dict[str, Any]:
    from featcache import extract
    from featcache.heads.compare import compare
    from featcache.heads.probe import ProbeSettings

    data = BUILDERS[name](Path(args.data) / f"{name}-{args.size}", args.size, args.train,
                          args.val, args.test)  # fmt: skip
    common = {"backbone": "mobilenet", "weights": weights, "image_size": args.size,
              "progress": False, "overwrite": True}  # fmt: skip
    out: dict[str, Any] = {"counts": data["counts"]}
    for arm, taps in (("plain", "none"), ("taps", "auto"), ("plain_again", "none")):
        began = time.monotonic()
        summary = extract(data["folder"], output=work / f"{name}-{arm}.h5", taps=taps, **common)
        whole = time.monotonic() - began
        out[f"extract_{arm}"] = {
            "seconds": round(whole, 2),
            "embed_seconds": round(whole - summary.load_seconds, 2),
            "rows": summary.rows,
        }
    cache = work / f"{name}-taps.h5"
    out["bytes"] = storage(cache)
    board = compare(cache, work / f"{name}-cmp", taps="all", protocol="linear-probe",
                    probe=ProbeSettings(bootstrap=1000), progress=False)  # fmt: skip
    out["full"] = {row["source"]: _acc(row) for row in board.rows}
    for shots in [int(s) for s in args.shots.split(",") if s]:
        few = compare(cache, work / f"{name}-cmp{shots}", taps="all", protocol="linear-probe",
                      probe=ProbeSettings(shots=shots, seeds=args.seeds, bootstrap=1000),
                      progress=False)  # fmt: skip
        out[f"{shots}-shot"] = {row["source"]: _acc(row) for row in few.rows}
    return out


def show(name: str, result: dict[str, Any]) -> None:
    full = result["full"]
    taps = [s for s in full if s != "main" and not s.startswith("concat")]
    best = max(taps, key=lambda s: full[s]["acc1"])
    joined = next(s for s in full if s.startswith("concat"))

    def cell(row: dict[str, Any]) -> str:
        return f"{row['acc1']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"

    plain = result["extract_plain_again"]["embed_seconds"]
    tapped = result["extract_taps"]["embed_seconds"]
    print(f"== {name}: {result['extract_taps']['rows']} rows", flush=True)
    print(f"  last layer (main)   {cell(full['main'])}")
    print(f"  best tap ({best}) {cell(full[best])}")
    print(f"  {joined:<19} {cell(full[joined])}")
    for source in taps:
        print(f"    {source:<18} {cell(full[source])}")
    for key in [k for k in result if k.endswith("-shot")]:
        print(f"  {key}: " + ", ".join(f"{s} {r['acc1']:.3f}" for s, r in result[key].items()))
    sizes = result["bytes"]
    first = result["extract_plain"]["embed_seconds"]
    print(f"  extract: {first:.1f} and {plain:.1f} s without taps, {tapped:.1f} s with (embedding)")
    print("  bytes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="textures,digits,mnist-lt")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=150)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--shots", default="5,20", help="few-shot K per class (comma list)")
    parser.add_argument("--seeds", type=int, default=3)
    add_run_arguments(parser)
    args = parser.parse_args()
    weights = weights_file(args.weights_dir)
    results: dict[str, Any] = {"run": run_record(), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            results["sets"][name] = run_set(name, args, weights, Path(tmp))
            show(name, results["sets"][name])
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
