"""``audit --zero-shot``: the opinion of the zero-shot classifier of the cache's class names
(its CLIP or SigLIP preset's text tower, ``a photo of a {}.``) on every label.

A label draws a strong disagreement when the zero-shot classifier gives it less than
``zero_shot_threshold`` and prefers another class. Every label issue gets the zero-shot
class and its probability of the given label as columns; strong disagreements the
out-of-fold check did not flag join the issues after its own, least probable first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backbones.text_tower import cached_tower
from ..backbones.zero_shot import build_classifier
from ..store import CacheReader

_ROWS = 65536


def zero_shot_issues(
    reader: CacheReader, x: np.ndarray, issues: list[dict[str, Any]], threshold: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``issues`` with the zero-shot columns, the strong disagreements added, and what the
    report says of them (``label_check``)."""
    names = list(reader.class_names)
    rows = np.flatnonzero(reader.labels >= 0)
    if len(names) < 2 or not len(rows):
        return issues, {}
    classifier = build_classifier(cached_tower(reader.settings), names)
    labels = reader.labels[rows]
    given = np.empty(len(rows), np.float64)
    top = np.empty(len(rows), np.int64)
    for start in range(0, len(rows), _ROWS):
        part = slice(start, start + _ROWS)
        p = classifier.predict_proba(x[rows[part]])
        given[part] = p[np.arange(len(p)), labels[part]]
        top[part] = np.argmax(p, axis=1)
    disagree = (given < threshold) & (top != labels)
    at = {int(r): i for i, r in enumerate(rows)}
    out = []
    for issue in issues:
        i = at[issue["row"]]
        out.append(
            {
                **issue,
                **_columns(names, top[i], given[i]),
                "flagged_by": "both" if disagree[i] else "out-of-fold",
            }
        )
    flagged = {issue["row"] for issue in issues}
    extra = [int(j) for j in np.flatnonzero(disagree) if int(rows[j]) not in flagged]
    for j in sorted(extra, key=lambda j: (given[j], rows[j])):
        out.append(
            {
                "row": int(rows[j]),
                "given": names[int(labels[j])],
                "suggested": names[int(top[j])],
                "self_confidence": None,
                **_columns(names, top[j], given[j]),
                "flagged_by": "zero-shot",
            }
        )
    check = {
        "zero_shot_threshold": threshold,
        "zero_shot_disagreements": int(disagree.sum()),
        "zero_shot_accuracy": round(float(np.mean(top == labels)), 4),
        "zero_shot_templates": list(classifier.templates),
    }
    return out, check


def _columns(names: list[str], top: Any, given: Any) -> dict[str, Any]:
    return {"zero_shot": names[int(top)], "zero_shot_given": round(float(given), 6)}
