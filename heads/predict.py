"""``predict_cache``: apply a trained head to another cache's features."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

from ..core.files import check_new_output, written_file
from ..core.options import MAIN_TAP
from ..core.ranking import top_k as rank
from ..store import CacheReader, open_cache
from ..store.opening import with_tap
from .options import DEFAULT_FEATURE_BATCH_SIZE, DEFAULT_TOP_K, SCORE_HEADS, check_options
from .train import TrainedHead, load_head


def check_cache_suits(head: TrainedHead, reader: CacheReader) -> None:
    """Refuse a cache whose features were not made with the settings the head learned on.

    The storage type does not matter (a float16 cache suits a float32 head); the feature
    width does. Raises :class:`SettingsMismatchError` naming every setting that differs.
    """
    cache = replace(reader.settings, feature_dim=reader.feature_dim)
    head.settings.check(
        cache,
        what=f"{reader.path} was not made with the backbone settings the head was trained on",
        ours="head",
        theirs="cache",
    )


def predict_cache(
    run: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_FEATURE_BATCH_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write ``output`` (default ``RUN/predictions.csv``: path, label, predicted,
    probability, top-k) for every row.

    The cache must come from the same backbone settings as the head's training cache (a
    head trained on a tap, ``train-head --tap``, reads the cache's tap of that name, or its
    taps side by side). For a linear-svm or ridge head the probability column is named
    ``score``: a softmax of the head's decision scores, which ranks the classes as the head
    does but is not calibrated.
    An existing ``output`` is refused before anything loads, unless ``overwrite``; the file is
    written under a temporary name and renamed into place.
    """
    check_options({"top_k": top_k, "batch_size": batch_size})
    out = check_new_output(
        Path(output) if output is not None else Path(run) / "predictions.csv", overwrite
    )
    head = load_head(run)
    reader = open_cache(cache)
    tap = str(head.meta.get("tap") or "")
    names = [name.strip() for name in tap.split("+")] if tap else []
    known = getattr(reader, "tap_info", {})
    if len(names) == 1 and names[0] in known:  # a head on a tap: the cache's tap
        reader = reader.tap(names[0])
    elif len(names) > 1 and set(names) <= {MAIN_TAP, *known}:  # its taps side by side
        reader = with_tap(reader, tap)
    check_cache_suits(head, reader)
    names = head.class_names
    columns = [names[c] for c in head.classes]
    with written_file(out, overwrite) as file:
        writer = csv.writer(file)
        measure = "score" if head.kind in SCORE_HEADS else "probability"
        writer.writerow(["path", "label", "predicted", measure, "top_k"])
        for rows, features in reader.batches(batch_size=batch_size):
            proba = head.predict_proba(features)
            order = rank(proba, top_k)
            for row, true, p, best in zip(rows, reader.label_names(rows), proba, order):
                top = "|".join(f"{columns[j]}:{p[j]:.4f}" for j in best)
                writer.writerow(
                    [reader.paths[row], true, columns[best[0]], f"{p[best[0]]:.6f}", top]
                )
    return out
