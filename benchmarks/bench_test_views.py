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
from ood_datasets import (
    add_run_arguments,
    add_set_arguments,
    cache_and_head,
    run_record,
    weights_file,
)

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
    from featcache.heads.endtoend import build, save, with_test_views
    from featcache.heads.finetune import fine_tune
    from featcache.heads.test_views import views_of_augment

    data, cache, head = cache_and_head(name, args, weights, work)
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
    seed, test accuracy / balanced accuracy of one view, of the views and of auto's choice;
    then per set the mean change against the head over the seeds, with 95% intervals."""
    runs: dict[str, dict[str, Any]] = {}
    for path in paths:
        for name, got in json.loads(Path(path).read_text())["sets"].items():
            for seed, run in got["seeds"].items():
                runs.setdefault(name, {})[seed] = run
    print("| set | seed | model.keras | one view | views | auto keeps | auto |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, seeds in runs.items():
        for number, (seed, run) in enumerate(sorted(seeds.items())):
            for tag in ("head", "model") if number == 0 else ("model",):  # one head a set
                one, views = run[tag]["one"], run[tag].get("views")
                kept, auto = _auto(run, tag)
                what = "head" if tag == "head" else run["exported"]
                shown = _pair(views) if views else "-"
                print(f"| {name} | {seed} | {what} | {_pair(one)} | {shown} | {kept} | "
                      f"{_pair(auto)} |")  # fmt: skip
    print()
    print("| set (test images; head) | seeds | one view | auto views | views always |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seeds in runs.items():
        ordered = [seeds[seed] for seed in sorted(seeds)]
        head = ordered[0]["head"]["one"]["test"]
        arms = {
            "one": [run["model"]["one"] for run in ordered],
            "auto": [_auto(run, "model")[1] for run in ordered],
            "always": [run["model"].get("views") or run["model"]["one"] for run in ordered],
        }
        cells = [_change(head, [arm["test"] for arm in arms[key]]) for key in arms]
        described = f"{name} ({len(head['right'])}; {head['accuracy']:.3f} / "
        described += f"{head['balanced_accuracy']:.3f})"
        print(f"| {described} | {len(ordered)} | " + " | ".join(cells) + " |")
    print(
        f"\n(points, mean over the seeds; [95% paired bootstrap interval over the test "
        f"images, {BOOTSTRAP} resamples], accuracy / balanced accuracy)"
    )


BOOTSTRAP = 2000
"""Resamples of the test images for an interval of the mean change against the head."""


def _auto(run: dict[str, Any], tag: str) -> tuple[str, dict[str, Any]]:
    """What auto's rule keeps for the ``tag`` model of a run (``head`` or ``model``): a
    short reason and the scores it ships."""
    from featcache.heads.test_views import paired, veto

    one, views = run[tag]["one"], run[tag].get("views")
    if views is None:
        return "-", one
    test = paired(np.array(views["val"]["right"], bool), np.array(one["val"]["right"], bool))
    head = run["head"]["one"]["val"]
    why = veto(views["val"], one["val"], test, (head["accuracy"], head["balanced_accuracy"]))
    if why is None:
        return str(run["group"]), views
    return f"one ({why.split(' (')[0]})", one


def _scores(right: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and balanced accuracy of each row of ``right`` (resamples x images) with
    the matching rows of ``labels``; a class absent from a resample is left out."""
    accuracy = right.mean(axis=1)
    recalls = []
    for k in np.unique(labels):
        members = labels == k
        count = members.sum(axis=1)
        hits = (right & members).sum(axis=1)
        recalls.append(np.where(count > 0, hits / np.maximum(count, 1), np.nan))
    return accuracy, np.nanmean(np.stack(recalls), axis=0)


def _change(head: dict[str, Any], arms: list[dict[str, Any]]) -> str:
    """Mean change of ``arms`` (one test score per seed, same images) against ``head``, in
    points, with the 95% interval of a paired bootstrap over the test images."""
    labels = np.asarray(head["labels"])
    rng = np.random.default_rng(0)
    picks = np.vstack(
        [np.arange(len(labels)), rng.integers(0, len(labels), (BOOTSTRAP, len(labels)))]
    )
    base_acc, base_bal = _scores(np.asarray(head["right"], bool)[picks], labels[picks])
    acc = np.zeros_like(base_acc)
    bal = np.zeros_like(base_bal)
    for arm in arms:
        if list(arm["labels"]) != list(labels):
            raise SystemExit("the seeds' test images differ: no paired interval")
        got_acc, got_bal = _scores(np.asarray(arm["right"], bool)[picks], labels[picks])
        acc += (got_acc - base_acc) / len(arms)
        bal += (got_bal - base_bal) / len(arms)
    shown = []
    for values in (acc, bal):
        low, high = np.percentile(values[1:], [2.5, 97.5]) * 100
        shown.append(f"{values[0] * 100:+.1f} [{low:+.1f}, {high:+.1f}]")
    return " / ".join(shown)


def _pair(scored: dict[str, Any]) -> str:
    test = scored["test"]
    return f"{test['accuracy']:.3f} / {test['balanced_accuracy']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarise", nargs="+", metavar="JSON", help="replay saved runs")
    parser.add_argument("--sets", default="galaxies,deepsky")
    add_set_arguments(parser)
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
