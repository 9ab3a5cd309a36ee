"""Time and peak memory of ``featcache export-features`` on a synthetic cache (issue 17).

Usage (from the repository root)::

    python benchmarks/bench_export.py --rows 200000 --dim 1024 --formats parquet,npy,lance

Writes a real cache of random float32 features through ``CacheWriter`` (as
``bench_search.py`` does), then exports it once per format, each step in a fresh process,
and reports seconds, output bytes and the child's peak RSS next to the size of the features
(rows x dim x 4 bytes): a chunked export stays far below it. ``--hf`` also times
``datasets.load_dataset("hdf5", ...)`` on the cache (its Arrow copy goes to the folder).
``--normalize on|off`` overrides the default (L2-normalised features for npy only).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
from pathlib import Path
from bench_search import write_synthetic
started = time.monotonic()
write_synthetic(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "float32")
print(json.dumps({"seconds": time.monotonic() - started}))
"""
CHILD = """
import json, sys, time
from featcache.store.export import export_features
started = time.monotonic()
normalize = {"default": None, "on": True, "off": False}[sys.argv[4]]
summary = export_features(
    sys.argv[1], sys.argv[2], format=sys.argv[3], progress=False, normalize=normalize
)
print(json.dumps({
    "seconds": time.monotonic() - started, "bytes": summary.bytes, "normalized": summary.normalized
}))
"""

HF_CHILD = """
import json, sys, time
import datasets
started = time.monotonic()
ds = datasets.load_dataset("hdf5", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - started, "rows": ds.num_rows}))
"""


def child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; its JSON line plus its own peak RSS in MiB."""
    import os

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed with status {proc.returncode}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--formats", default="parquet,npy")
    parser.add_argument("--hf", action="store_true")
    parser.add_argument(
        "--normalize",
        choices=("default", "on", "off"),
        default="default",
        help="export_features' normalize (default: on for npy, off for the others)",
    )
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        cache = Path(tmp) / "synthetic.h5"
        # every step in its own process, so that each peak RSS is that step's alone
        here = str(Path(__file__).resolve().parent)
        written = child(WRITE_CHILD, str(cache), str(args.rows), str(args.dim), here)
        report: dict = {
            "rows": args.rows,
            "dim": args.dim,
            "features_mib": round(args.rows * args.dim * 4 / 2**20, 1),
            "cache_mib": round(cache.stat().st_size / 2**20, 1),
            "write_cache_seconds": round(written["seconds"], 1),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "formats": {},
        }
        for fmt in args.formats.split(","):
            out = Path(tmp) / f"out-{fmt}"
            result = child(CHILD, str(cache), str(out), fmt, args.normalize)
            result["mib"] = round(result.pop("bytes") / 2**20, 1)
            result["seconds"] = round(result["seconds"], 2)
            report["formats"][fmt] = result
        if args.hf:
            report["hf_load_dataset"] = child(HF_CHILD, str(cache), str(Path(tmp) / "hf"))
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
