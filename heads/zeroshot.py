"""``zero_shot``: a classifier from class names and prompt templates, on a cache of CLIP or
SigLIP image embeddings, written as a run folder like ``train_head``'s (``predict`` and
``export`` take it; the exported model needs no text tower).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.text_tower import check_shared_space
from ..backbones.zero_shot import ZeroShotClassifier
from ..core.progress import Status
from ..errors import InvalidOptionError
from ..store import CacheReader, open_cache
from .options import DEFAULT_BOOTSTRAP, DEFAULT_SEED, ZERO_SHOT, ZeroShotOptions, merge_options
from .report import accuracy_interval, metrics, write_confusion
from .runs import HEAD_FORMAT
from .train import TrainedHead, TrainResult, new_run_dir

HEAD_FILE = "head.npz"


def class_texts(reader: CacheReader, classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(class names, their texts): the cache's names, or ``classes`` as the text of each
    (one per class of the cache, in its order), or the classes of an unlabelled cache."""
    names = list(reader.class_names)
    if not classes:
        if not names:
            raise InvalidOptionError(
                "classes: the cache has no class names (an unlabelled dataset); name the "
                "classes to tell apart",
                "classes",
            )
        return names, names
    if names and len(classes) != len(names):
        raise InvalidOptionError(
            f"classes: {len(classes)} texts for the cache's {len(names)} classes "
            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); give one per "
            "class, in that order",
            "classes",
        )
    return (names or list(classes)), list(classes)


def zero_shot_classifier(
    reader: CacheReader,
    options: ZeroShotOptions | None = None,
    progress: bool | None = None,
    **values: Any,
) -> ZeroShotClassifier:
    """The zero-shot classifier of a cache's classes (its preset's text tower, loaded now)."""
    from ..backbones.text_tower import TextTower
    from ..backbones.zero_shot import build_classifier

    chosen = merge_options(ZeroShotOptions, options, **values)
    check_shared_space(reader.settings)
    names, texts = class_texts(reader, tuple(chosen.classes))
    shown = Status("zero-shot: loading the text tower…", None if progress else progress)
    try:
        tower = TextTower.load(reader.settings)
        return build_classifier(tower, names, chosen.templates, texts)
    finally:
        shown.close()


def zero_shot(
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    options: ZeroShotOptions | None = None,
    progress: bool | None = None,
    **values: Any,
) -> TrainResult:
    """Classify a cache's rows from class names alone and write a run folder.

    ``options`` (:class:`~featcache.heads.options.ZeroShotOptions`) or its keywords:
    ``classes`` (the text of each class; default the cache's class names), ``templates``
    (``photo``, ``plain``, ``clip`` or a file) and ``seed`` (of the bootstrap intervals).
    The report has train-head's metrics on the val and test rows and on every labelled row
    (``all``); the folder holds ``head.npz`` (class embeddings, scale, bias, projection).
    """
    chosen = merge_options(ZeroShotOptions, options, **values)
    reader = open_cache(cache)
    check_shared_space(reader.settings)  # before TensorFlow loads
    class_texts(reader, tuple(chosen.classes))
    started = time.monotonic()
    classifier = zero_shot_classifier(reader, chosen, progress)
    seconds = time.monotonic() - started
    meta = _meta(reader, classifier, chosen)
    head = TrainedHead(ZERO_SHOT, classifier, classifier.class_names, meta)
    report = _report(reader, head, chosen, seconds)
    run_dir = Path(output) if output is not None else new_run_dir(Path(cache), ZERO_SHOT)
    save_zero_shot(run_dir, head, report)
    return TrainResult(run_dir, head, report, report["notes"])


def _meta(
    reader: CacheReader, classifier: ZeroShotClassifier, chosen: ZeroShotOptions
) -> dict[str, Any]:
    settings = {
        **reader.settings.to_dict(),
        "feature_dim": reader.feature_dim,
        "fingerprint": reader.fingerprint,
    }
    return {
        "featcache_head": HEAD_FORMAT,
        "kind": ZERO_SHOT,
        "family": classifier.family,
        "params": {
            "templates": list(classifier.templates),
            "class_texts": list(classifier.class_texts),
            "template_option": chosen.templates,
        },
        "class_names": classifier.class_names,
        "feature_dim": reader.feature_dim,
        "cache": str(reader.path),
        "cache_settings": json.loads(json.dumps(settings)),
        "classes": list(range(len(classifier.class_names))),
        "file": HEAD_FILE,
    }


def _report(
    reader: CacheReader, head: TrainedHead, chosen: ZeroShotOptions, seconds: float
) -> dict[str, Any]:
    classifier: ZeroShotClassifier = head.estimator
    labelled = reader.class_names == classifier.class_names
    notes = []
    if not labelled:
        notes.append("the cache has no labels for these classes: no metrics")
    evaluated: dict[str, Any] = {}
    rows: dict[str, int] = {}
    every = np.flatnonzero(reader.labels >= 0) if labelled else np.zeros(0, np.int64)
    predicted = _predict(classifier, reader, every)  # once; the splits are slices of it
    for split in ("val", "test", "all"):
        if split == "all":
            picked = np.arange(len(every))
        else:
            picked = np.flatnonzero(reader.mask(split)[every])
        rows[split] = len(picked)
        if not len(picked):
            evaluated[split] = None
            continue
        truth = reader.labels[every[picked]]
        found = metrics(truth, predicted[picked], classifier.class_names)
        if chosen.seed != DEFAULT_SEED:  # metrics' intervals are drawn with the default
            low, high = accuracy_interval(truth, predicted[picked], DEFAULT_BOOTSTRAP, chosen.seed)
            found.update(accuracy_low=low, accuracy_high=high)
        evaluated[split] = found
    if labelled and evaluated["test"] is None:
        notes.append("the cache has no labelled test rows: see 'all' for every labelled row")
    return {
        "head": ZERO_SHOT,
        "family": classifier.family,
        "params": head.meta["params"],
        "scale": classifier.scale,
        "bias": classifier.bias,
        "projected_here": classifier.projection is not None,
        "cache": str(reader.path),
        "fingerprint": reader.fingerprint,
        "backbone": reader.settings.backbone,
        "rows": {"train": 0, **rows},
        "labelled_images_used": 0,
        "class_names": classifier.class_names,
        "options": asdict(chosen),
        "notes": notes,
        "fit_seconds": round(seconds, 3),
        **evaluated,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _predict(classifier: ZeroShotClassifier, reader: CacheReader, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.int64)
    step = 16384
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        out[start : start + len(part)] = classifier.predict(reader.features(part))
    return out


def save_zero_shot(run_dir: Path, head: TrainedHead, report: dict[str, Any]) -> None:
    """``head.npz``, ``head.json``, ``report.json`` and, with labels, ``confusion.png``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    head.estimator.save(run_dir / HEAD_FILE)
    (run_dir / "head.json").write_text(json.dumps(head.meta, indent=2))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    shown = report["test"] or report["all"]
    if shown:
        split = "test" if report["test"] else "every labelled row"
        write_confusion(
            shown["confusion_matrix"],
            head.class_names,
            run_dir / "confusion.png",
            f"zero-shot, {split} (rows normalised)",
        )
