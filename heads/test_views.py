"""Test-time views for ``fine-tune``: the exported model averages its probabilities over
each image's mirrored and quarter-turned copies when the images have no orientation to
lose, so ``predict``, the server and the report all run the same averaged model.

``auto`` takes the symmetries the training augmentation assumed (``flip``: mirror,
``rotate90``: quarter turns; the recipe measures both on the train images,
:mod:`.orientation`), then lets val veto them: they are dropped when val accuracy with
them is significantly lower than on one view (a paired test on the images one gets right
and the other wrong) or when either val figure falls below the floor fine-tuning keeps
(the head's, unless the kept weights were already below it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import fresh_file
from .images import Classifier, load_classifier
from .options import view_count
from .report import metrics

__all__ = [
    "Z",
    "ViewChoice",
    "choose_test_views",
    "evaluation_passes",
    "paired",
    "veto",
    "views_of_augment",
]

Z = 1.645
"""One-sided 95% normal quantile: views that lose ``Z`` standard errors more val images
than they win (a sign test on the discordant images) are dropped."""


def views_of_augment(augment: str | None) -> str:
    """The view group an augmentation assumes: ``all`` (flip and rotate90), ``turns``
    (rotate90), ``mirror`` (flip) or ``none``."""
    names = set((augment or "").split(","))
    mirror, turns = "flip" in names, "rotate90" in names
    if mirror and turns:
        return "all"
    return "turns" if turns else "mirror" if mirror else "none"


def evaluation_passes(asked: str, augment: str | None) -> tuple[int, int]:
    """Backbone passes over each val and each test image that :func:`choose_test_views`
    and the test evaluation after it will make, at most: one each without views; the
    views' count with a group asked; with ``auto`` and a candidate, one more val pass (one
    view, against which the views are checked). For the time plan, before training."""
    group = views_of_augment(augment) if asked == "auto" else asked
    if group == "none":
        return 1, 1
    count = view_count(group)
    return count + (asked == "auto"), count


@dataclass
class ViewChoice:
    """The model kept and why."""

    classifier: Classifier
    val: dict[str, Any]
    """Val metrics of the kept model, as ``predict`` runs it."""
    record: dict[str, Any]


def choose_test_views(
    model: Any,
    saved: Path,
    asked: str,
    augment: str | None,
    predict: Callable[[Classifier, str], np.ndarray],
    labels: np.ndarray,
    class_names: list[str],
    save: Callable[[Any, Path], None],
    floor: tuple[float, float] | None = None,
) -> ViewChoice:
    """Decide the views of ``model`` (already written, one view, at ``saved``) and leave
    the kept model at ``saved``.

    ``asked``: one of :data:`featcache.heads.options.TEST_VIEWS`; ``predict(classifier,
    what)`` gives a loaded model's label for each val row (``labels``). ``floor``: the val
    accuracy and balanced accuracy ``auto``'s views may not go below (the head's; None:
    none)."""
    from .endtoend import with_test_views

    def score(classifier: Classifier, what: str) -> tuple[dict[str, Any], np.ndarray]:
        predicted = np.asarray(predict(classifier, what))
        return metrics(labels, predicted, class_names), predicted == labels

    single = load_classifier(saved)
    group = views_of_augment(augment) if asked == "auto" else asked
    by = "augmentation" if asked == "auto" else "asked"
    if group == "none":
        reason = "the augmentation assumed no symmetry" if asked == "auto" else "asked"
        val, _ = score(single, "val images")
        return ViewChoice(single, val, _record("none", by, f"one view ({reason})", val))
    part = fresh_file(saved.parent, ".model.views-", ".keras")
    try:
        save(with_test_views(model, group), part)
        viewed = load_classifier(part)
        count = view_count(group)
        with_views, right = score(viewed, f"val images, {count} views each")
        cost = f"predict runs the backbone {count}x per image"
        if asked != "auto":
            os.replace(part, saved)
            text = f"{count} views ({group}, asked); {cost}"
            return ViewChoice(viewed, with_views, _record(group, by, text, with_views))
        alone, right_alone = score(single, "val images, one view")
        test = paired(right, right_alone)
        change = (
            f"val {alone['accuracy']:.3f} -> {with_views['accuracy']:.3f}, balanced "
            f"{alone['balanced_accuracy']:.3f} -> {with_views['balanced_accuracy']:.3f}"
        )
        why = veto(with_views, alone, test, floor)
        if why is None:
            os.replace(part, saved)
            text = f"{count} views ({group}: {change}); {cost}"
            record = _record(group, by, text, with_views, alone, group, test, floor)
            return ViewChoice(viewed, with_views, record)
        text = f"one view ({group} dropped, {why}: {change})"
        record = _record("none", by, text, alone, alone, group, test, floor)
        record["candidate_val"] = _scores(with_views)
        return ViewChoice(single, alone, record)
    finally:
        Path(part).unlink(missing_ok=True)


def paired(right: np.ndarray, right_alone: np.ndarray) -> dict[str, Any]:
    """A one-sided sign test of the views against one view on the same val images: the
    images only the views get right (``gained``) and only one view does (``lost``)."""
    gained = int(np.sum(right & ~right_alone))
    lost = int(np.sum(~right & right_alone))
    bound = Z * math.sqrt(gained + lost)
    return {"gained": gained, "lost": lost, "worse": bool(lost - gained > bound)}


def veto(
    views: dict[str, Any],
    alone: dict[str, Any],
    test: dict[str, Any],
    floor: tuple[float, float] | None,
) -> str | None:
    """Why the views are dropped (None: kept)."""
    if test["worse"]:
        return f"significantly worse on val ({test['lost']} images lost, {test['gained']} won)"
    if floor is not None:
        # the floor the kept weights met: the head's, or their own when they were below it
        accuracy = min(floor[0], alone["accuracy"])
        balanced = min(floor[1], alone["balanced_accuracy"])
        # 1e-6: the phases' figures are rounded to 6 decimals
        if views["accuracy"] < accuracy - 1e-6 or views["balanced_accuracy"] < balanced - 1e-6:
            return f"below the head on val ({floor[0]:.3f}, balanced {floor[1]:.3f})"
    return None


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        "accuracy": round(float(metrics["accuracy"]), 4),
        "balanced_accuracy": round(float(metrics["balanced_accuracy"]), 4),
    }


def _record(
    group: str,
    by: str,
    summary: str,
    val: dict[str, Any],
    one_view: dict[str, Any] | None = None,
    candidate: str | None = None,
    paired: dict[str, Any] | None = None,
    floor: tuple[float, float] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "chosen": group,
        "views": view_count(group) if group != "none" else 1,
        "by": by,
        "summary": summary,
        "val": _scores(val),
    }
    if candidate is not None:
        record["candidate"] = candidate
    if one_view is not None:
        record["one_view_val"] = _scores(one_view)
    if paired is not None:
        record["paired"] = paired
    if floor is not None:
        record["floor"] = {"accuracy": round(floor[0], 4), "balanced_accuracy": round(floor[1], 4)}
    return record
