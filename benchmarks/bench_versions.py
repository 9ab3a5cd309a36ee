"""``extract`` of this checkout against another git revision, side by side in one run.

Usage (from the repository root, after ``bash .ci/run`` or ``pip install -e .``)::

    python benchmarks/bench_versions.py --base c80b39e --images 400 --repeats 3 \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5

The base revision is checked out with ``git worktree`` into a temporary folder and imported
as ``featcache`` through a symlink on ``PYTHONPATH``; each run is a fresh process embedding
the same JPEG folder into a new cache, alternating base, head, base, head, ... so that both
see the same machine state. Reported: new images per second of the whole run (model load
included) and of the embedding alone (``seconds - load_seconds``), and head/base ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import json, sys, featcache
summary = featcache.extract(sys.argv[1], backbone=sys.argv[2], weights=sys.argv[3],
                            output=sys.argv[4], image_size=int(sys.argv[5]), progress=False)
print(json.dumps({"file": featcache.__file__, **summary.to_dict()}))
"""


def _run(pythonpath: str | None, data: Path, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-c", RUN, str(data), args.backbone, args.weights, str(out)]
    command.append(str(args.size))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_jpeg_folder(work / "data", args.images, args.size)
        tree = work / "base"
        git = ["git", "-C", str(ROOT)]
        subprocess.run(
            [*git, "worktree", "add", "-q", "--detach", str(tree), args.base], check=True
        )
        try:
            (work / "path").mkdir()
            (work / "path" / "featcache").symlink_to(tree)
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            for i in range(args.repeats):
                for name, path in (("base", str(work / "path")), ("head", None)):
                    result = _run(path, data, args, work / f"{name}-{i}.h5")
                    expected = tree if name == "base" else ROOT
                    assert Path(result["file"]).resolve().parent == expected.resolve()
                    runs[name].append(result)
                    embed = result["seconds"] - result["load_seconds"]
                    print(
                        f"{name} run {i + 1}: {result['images_per_second']:.1f} img/s whole run, "
                        f"{result['new'] / embed:.1f} img/s embedding",
                        flush=True,
                    )
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)

    def median(name: str, key: str) -> float:
        if key == "embed":
            return statistics.median(
                r["new"] / (r["seconds"] - r["load_seconds"]) for r in runs[name]
            )
        return statistics.median(r[key] for r in runs[name])

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "args": {k: str(v) for k, v in vars(args).items()},
        "base_whole": median("base", "images_per_second"),
        "head_whole": median("head", "images_per_second"),
        "base_embed": median("base", "embed"),
        "head_embed": median("head", "embed"),
        "runs": runs,
    }
    report["ratio_whole"] = report["head_whole"] / report["base_whole"]
    report["ratio_embed"] = report["head_embed"] / report["base_embed"]
    print(
        f"median whole run: base {report['base_whole']:.1f}, head {report['head_whole']:.1f} img/s "
        f"({report['ratio_whole']:.2f}x); embedding: base {report['base_embed']:.1f}, head "
        f"{report['head_embed']:.1f} img/s ({report['ratio_embed']:.2f}x)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
