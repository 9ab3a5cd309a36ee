"""What a head run can do, from its ``head.json`` alone (JSON; no scikit-learn, no
TensorFlow), so that ``export``, ``predict`` and ``fine-tune`` refuse a run in a second."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.options import MAIN_TAP
from ..core.settings import FeatureSettings
from ..errors import CacheError, InvalidOptionError
from .options import LINEAR_HEADS, ZERO_SHOT

HEAD_FORMAT = 1
"""The newest ``head.json`` format this featcache reads."""
PURPOSES = ("export", "predict", "fine-tune")


def read_head_meta(run: str | os.PathLike[str]) -> dict[str, Any]:
    """A head run's ``head.json``, checked."""
    run_dir = Path(run)
    meta_path = run_dir / "head.json"
    if not meta_path.is_file():
        raise CacheError(f"{run_dir}: not a head run folder (no head.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise CacheError(f"{meta_path}: not a featcache head description")
    if int(meta.get("featcache_head", 0)) > HEAD_FORMAT:
        raise CacheError(
            f"{run_dir}: head format {meta['featcache_head']} is newer than "
            "this featcache reads; upgrade featcache"
        )
    return meta


def head_settings(meta: dict[str, Any]) -> FeatureSettings:
    """The feature settings of the cache a head was trained on (a head trained on several
    caches' features has none: CacheError)."""
    caches = meta.get("caches") or []
    tap = str(meta.get("tap") or "")
    recorded = meta["cache_settings"]
    if "+" in tap:  # taps of one cache side by side: a model ends at each of their layers
        if "+" not in str(recorded.get("layer", "")):  # heads from before layers were joined
            recorded = {**recorded, "layer": _joined_layers(tap, recorded)}
        caches = caches[:1]
    if len(caches) > 1:
        raise CacheError(
            f"the head was trained on the features of {len(caches)} caches joined "
            f"({', '.join(caches)}): predicting, exporting and fine-tuning need a "
            "head trained on one cache"
        )
    if not recorded.get("feature_dim"):  # the width is known from the head itself
        recorded = {**recorded, "feature_dim": meta.get("feature_dim", 0)}
    return FeatureSettings.from_mapping(recorded)


def _joined_layers(tap: str, recorded: dict[str, Any]) -> str:
    """The layers of taps side by side for a head saved before ``head.json`` recorded them:
    it recorded the first tap's layer; the others are named by their taps, except ``main``
    (the cache's own layer, not recorded then) after the first: CacheError."""
    names = [name.strip() for name in tap.split("+")]
    if MAIN_TAP in names[1:]:
        raise CacheError(
            f"the head was trained on taps side by side ({tap}) by an older featcache, "
            "which did not record the layer of main after the first tap: train it again"
        )
    return "+".join([str(recorded.get("layer") or MAIN_TAP), *names[1:]])


def check_head(run: str | os.PathLike[str], purpose: str = "export") -> dict[str, Any]:
    """``head.json`` of a run that can serve ``purpose``, or the reason it cannot.

    ``export`` (one Keras model): a dense, linear (:data:`LINEAR_HEADS`) or zero-shot head;
    ``fine-tune``: a dense head; ``predict`` (on images): any head of one cache.
    """
    meta = read_head_meta(run)
    kind = str(meta["kind"])
    if purpose == "fine-tune" and kind != "dense":
        raise InvalidOptionError(
            f"{run}: fine-tune starts from a dense head, not a {kind} head; train one with "
            "head 'dense'"
        )
    if purpose == "export" and kind not in ("dense", ZERO_SHOT, *LINEAR_HEADS):
        raise InvalidOptionError(
            f"{run}: a {kind} head cannot be one Keras model: predict on images with "
            f"`featcache predict {run} IMAGES`, or pick a linear head "
            f"({', '.join(LINEAR_HEADS)}) or dense to export"
        )
    head_settings(meta)
    return meta
