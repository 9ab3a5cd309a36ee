"""A newcomer's path, timed step by step: the README's quickstart on a folder of one's own.

Usage (from the repository root)::

    python benchmarks/bench_newcomer.py --install            # a fresh venv, `pip install .` timed
    python benchmarks/bench_newcomer.py --featcache .venv/bin/featcache

The folder is written from the real Fashion-MNIST test split (``apt-get install
dataset-fashion-mnist``): ``--images`` JPEGs upscaled to ``--size`` px in class folders, plus
ten new images to predict on. Every command runs in a fresh process on a pseudo-terminal, as
a user at a terminal sees it; for each step the script records the wall time, the time to the
first byte of output (the "nothing happens" wait) and the exit status. Weights come from a
file, as offline users pass them (``--weights``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

ROOT = Path(__file__).resolve().parents[1]
NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |\s*$)")
"""TensorFlow's start-up log lines (absl, oneDNN, CUDA stubs): output, but not useful output."""
WEIGHTS = ROOT / "examples" / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"


def timed(argv: list[str], cwd: Path, pythonpath: str | None = None) -> dict:
    """Run ``argv`` on a pseudo-terminal: wall seconds, seconds to first output, exit status."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    master, slave = pty.openpty()
    # a terminal of 40 x 120, as a user's (a new pty has 0 columns: tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    first = useful = None
    output = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            if first is None and chunk.strip():
                first = time.perf_counter() - start
            output += chunk
            if useful is None:
                lines = output.decode(errors="replace").splitlines()
                if any(not NOISE.match(line) for line in lines):
                    useful = time.perf_counter() - start
        elif process.poll() is not None:
            break
    status = process.wait()
    wall = time.perf_counter() - start
    os.close(master)
    text = output.decode(errors="replace")
    return {
        "argv": " ".join(Path(a).name if a.startswith("/") else a for a in argv[:6]),
        "wall_s": round(wall, 2),
        "first_output_s": None if first is None else round(first, 2),
        "first_useful_s": None if useful is None else round(useful, 2),
        "noise_lines": sum(
            bool(NOISE.match(line)) and bool(line.strip()) for line in text.splitlines()
        ),
        "status": status,
        "output_lines": len(text.splitlines()),
        "tail": text.strip().splitlines()[-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--featcache", default=str(ROOT / ".venv" / "bin" / "featcache"))
    parser.add_argument("--install", action="store_true", help="fresh venv + pip install .")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--base", help="also run a git revision, step by step beside this one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    steps: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        photos = write_jpeg_folder(home / "photos", args.images, args.size, split="test")
        new = home / "new"
        new.mkdir()
        for path in sorted(photos.rglob("*.jpg"))[:10]:
            shutil.copy(path, new / f"new-{path.name}")
        featcache = args.featcache
        if args.install:
            venv = home / "venv"
            python = venv / "bin" / "python"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, cwd=home
            )
            steps.append({"argv": "pip install .", "wall_s": round(time.perf_counter() - start)})
            featcache = str(venv / "bin" / "featcache")
        tf = timed([str(Path(featcache).parent / "python"), "-c", "import tensorflow"], home)
        tf["argv"] = "python -c 'import tensorflow' (for reference)"
        steps.append(tf)
        chains = [("head", None, home / "head")]
        if args.base:
            checkout = home / "base" / "featcache"
            add = ["worktree", "add", "-q", "--detach", str(checkout), args.base]
            subprocess.run(["git", "-C", str(ROOT), *add], check=True)
            chains.append(("base", str(checkout.parent), home / "base-run"))
        for _, _, cwd in chains:
            cwd.mkdir()
        images = sorted(str(p) for p in new.iterdir())
        try:
            for argv in (
                [featcache, "--help"],
                [featcache, "extract", str(photos), "--weights", args.weights],
                [featcache, "inspect", "cache/mobilenet.h5"],
                [featcache, "train-head", "cache/mobilenet.h5", "-o", "runs/dense"],
                [featcache, "compare", "cache/mobilenet.h5", "-o", "runs/compare"],
                [featcache, "predict", "runs/dense", *images],
                [featcache, "export", "runs/dense", "-o", "model.keras"],
            ):
                for name, pythonpath, cwd in chains:
                    steps.append({"version": name, **timed(argv, cwd, pythonpath)})
                    print(json.dumps(steps[-1]), flush=True)
        finally:
            if args.base:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                    check=False,
                )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "images": args.images,
        "size": args.size,
        "steps": steps,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    header = ("version", "step", "wall s", "first output s", "first useful s", "TF log lines")
    print("| " + " | ".join((*header, "status")) + " |")
    print("|" + " --- |" * (len(header) + 1))
    for step in steps:
        keys = ("version", "argv", "wall_s", "first_output_s", "first_useful_s", "noise_lines")
        cells = [str(step.get(k, "")) for k in (*keys, "status")]
        cells[1] = f"`{cells[1][:70]}`"
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
