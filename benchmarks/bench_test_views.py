"""Test-time views (``fine-tune --test-views``): the head and the fine-tuned model, each
scored on one view and averaged over the views the recipe's augmentation assumed, on the
val and test files, as ``predict`` runs a saved model.

Usage (from the repository root; the sets as ``bench_finetune_ood.py`` builds them)::

    python benchmarks/bench_test_views.py --sets galaxies,deepsky --size 224 --seeds 20,21,22 \
        --weights-dir ../shared/weights --json benchmarks/results-test-views.json

Per set: ``extract`` (MobileNet, frozen), ``train-head --head dense`` (as
``bench_finetune_ood.py``), then per seed ``fine-tune`` (auto) with ``test_views="none"``;
the exported model and the head are then saved again with the views of the augmentation
the recipe chose (flip: mirror, rotate90: quarter turns) and both are scored on val and
test through :func:`featcache.heads.images.load_classifier`. Per-image correctness is kept,
so that a rule deciding from val can be replayed on the same runs.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_datasets import BUILDERS, add_run_arguments, run_record, weights_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def split_files(cache: Path) -> dict[str, tuple[list[Path], np.ndarray, list[str]]]:
    """The val and test files of ``cache`` (labelled rows), their labels and class names."""
    from featcache.store.reader import CacheReader

    reader = CacheReader(cache)
    root = Path(reader.settings.dataset_root)
    out = {}
    for split in ("val", "test"):
        rows = reader.rows_of(split, labelled=True)
        out[split] = (
            [root / reader.paths[i] for i in rows],
            reader.labels[rows],
            reader.class_names,
        )
    return out


def scores(model_file: Path, files: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, balanced accuracy and per-image correctness of a saved model on each split."""
    from sklearn.metrics import balanced_accuracy_score

    from featcache.heads.images import load_classifier

    classifier = load_classifier(model_file)
    out: dict[str, Any] = {}
    began = time.monotonic()
    for split, (paths, labels, names) in files.items():
        column = [names.index(n) for n in classifier.names]
        pixels = [classifier.prepare(p.read_bytes()) for p in paths]
        predicted = []
        for start in range(0, len(pixels), 32):
            proba = classifier.predict(np.stack(pixels[start : start + 32]))
            predicted += [column[int(j)] for j in np.argmax(proba, axis=1)]
        right = np.asarray(predicted) == labels
        out[split] = {
            "accuracy": round(float(right.mean()), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(labels, predicted)), 4),
            "right": right.astype(int).tolist(),
            "labels": labels.tolist(),
        }
    out["seconds"] = round(time.monotonic() - began, 2)
    return out


def run_set(name: str, args: argparse.Namespace, weights: str, work: Path) -> dict[str, Any]:
    from featcache import extract
    from featcache.heads.endtoend import build, save, with_test_views
    from featcache.heads.finetune import fine_tune
    from featcache.heads.test_views import views_of_augment
    from featcache.heads.train import train_head

    data = BUILDERS[name](
        Path(args.data) / f"{name}-{args.size}", args.size, args.train, args.val, args.test
    )
    cache = work / f"{name}.h5"
    extract(data["folder"], backbone="mobilenet", weights=weights, image_size=args.size,
            output=cache, progress=False)  # fmt: skip
    head = work / f"{name}-h"
    train_head(cache, head="dense", hidden=(256,), epochs=30, output=head)
    files = split_files(cache)
    out: dict[str, Any] = {"counts": data["counts"], "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        began = time.monotonic()
        tuned = fine_tune(cache, head, output=work / f"{name}-{seed}", seed=seed,
                          test_views="none", overwrite=True)  # fmt: skip
        seconds = time.monotonic() - began
        group = views_of_augment(tuned.report["params"]["augment"])
        got: dict[str, Any] = {
            "fine_tune_seconds": round(seconds, 1),
            "exported": tuned.report.get("exported", "fine-tuned"),
            "augment": tuned.report["params"]["augment"],
            "group": group,
        }
        for tag, model in (("head", build(head).model), ("model", None)):
            plain = work / f"{name}-{seed}" / "model.keras" if model is None else None
            if plain is None:
                plain = work / f"{name}-{seed}-{tag}.keras"
                save(model, plain)
            got[tag] = {"one": scores(plain, files)}
            if group != "none":
                from featcache.heads.endtoend import load_model

                loaded, _, _ = load_model(plain)
                viewed = work / f"{name}-{seed}-{tag}-views.keras"
                save(with_test_views(loaded, group), viewed)
                got[tag]["views"] = scores(viewed, files)
            for kind, s in got[tag].items():
                print(f"{name} seed {seed} {tag:5s} {kind:5s} val {s['val']['accuracy']:.3f}/"
                      f"{s['val']['balanced_accuracy']:.3f} test {s['test']['accuracy']:.3f}/"
                      f"{s['test']['balanced_accuracy']:.3f}", flush=True)  # fmt: skip
        out["seeds"][str(seed)] = got
    return out


def summarise(paths: list[str]) -> None:
    """Replay ``--test-views auto``'s rule (:mod:`featcache.heads.test_views`: the sign test
    against one view and the head's val as the floor) on saved runs and print, per set and
    seed, test accuracy / balanced accuracy of one view, of the views and of auto's choice."""
    from featcache.heads.test_views import paired, veto

    shown_heads: set[str] = set()
    print("| set | seed | model.keras | one view | views | auto keeps | auto |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        for name, got in json.loads(Path(path).read_text())["sets"].items():
            for seed, run in got["seeds"].items():
                for tag in ("head", "model"):
                    if tag == "head" and name in shown_heads:
                        continue  # the head is the same whatever the fine-tuning seed
                    if tag == "head":
                        shown_heads.add(name)
                    one, views = run[tag]["one"], run[tag].get("views")
                    head = run["head"]["one"]["val"]
                    kept = "-"
                    if views is not None:
                        test = paired(np.array(views["val"]["right"], bool),
                                      np.array(one["val"]["right"], bool))  # fmt: skip
                        floor = (head["accuracy"], head["balanced_accuracy"])
                        veto = veto(views["val"], one["val"], test, floor)
                        kept = run["group"] if veto is None else f"one ({veto.split(' (')[0]})"
                    auto = views if views is not None and not kept.startswith("one") else one
                    what = "head" if tag == "head" else run["exported"]
                    shown = _pair(views) if views else "-"
                    print(f"| {name} | {seed} | {what} | {_pair(one)} | {shown} | {kept} | "
                          f"{_pair(auto)} |")  # fmt: skip


def _pair(scored: dict[str, Any]) -> str:
    test = scored["test"]
    return f"{test['accuracy']:.3f} / {test['balanced_accuracy']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarise", nargs="+", metavar="JSON", help="replay saved runs")
    parser.add_argument("--sets", default="galaxies,deepsky")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=900)
    parser.add_argument("--seeds", default="20,21,22")
    add_run_arguments(parser)
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    weights = weights_file(args.weights_dir)
    results: dict[str, Any] = {**run_record(), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            results["sets"][name] = run_set(name, args, weights, Path(tmp))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
