"""Head only vs fine-tuned: test accuracy and time, real Fashion-MNIST, pretrained MobileNet.

Usage (from the repository root, after ``pip install .``)::

    python benchmarks/bench_finetune.py --images 1000 --size 96 --epochs 3 \
        --weights-dir ../shared/weights --json /tmp/bench-finetune.json

Phase one is ``extract`` + ``train-head --head dense`` (the frozen backbone, once); phase
two is ``fine-tune`` of that head with the top ``--unfreeze`` backbone layers on the same
images (train split), early-stopping on val. Both are scored on the same test split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--unfreeze", default="20")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-bench"))
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    if not args.weights_dir or not (Path(args.weights_dir) / WEIGHTS).is_file():
        raise SystemExit(f"needs {WEIGHTS} in --weights-dir")
    weights = str(Path(args.weights_dir) / WEIGHTS)

    from featcache import extract
    from featcache.heads.finetune import fine_tune
    from featcache.heads.train import train_head

    folder = write_jpeg_folder(
        Path(args.data) / f"jpeg{args.size}-{args.images}", args.images, args.size
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "mobilenet.h5"
        began = time.monotonic()
        extract(folder, backbone="mobilenet", weights=weights, image_size=args.size,
                output=cache, progress=False)  # fmt: skip
        extract_seconds = time.monotonic() - began
        began = time.monotonic()
        head = train_head(cache, head="dense", hidden=(256,), epochs=30, output=Path(tmp) / "h")
        head_seconds = time.monotonic() - began
        began = time.monotonic()
        tuned = fine_tune(  # the one-run schedule RESULTS section 6 measured
            cache, Path(tmp) / "h", output=Path(tmp) / "ft", schedule="fixed",
            unfreeze=args.unfreeze, lr=args.lr, epochs=args.epochs, batch_size=32, patience=2,
        )  # fmt: skip
        tune_seconds = time.monotonic() - began
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "images": args.images,
        "size": args.size,
        "rows": tuned.report["rows"],
        "extract_seconds": extract_seconds,
        "head_seconds": head_seconds,
        "head_test_accuracy": head.report["test"]["accuracy"],
        "finetune_seconds": tune_seconds,
        "finetune_epochs": tuned.report["epochs_run"],
        "finetune_layers": len(tuned.report["unfrozen_layers"]),
        "finetune_test_accuracy": tuned.report["test"]["accuracy"],
    }
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
