"""The feature extractor a cache (or a head) records, built again: for ``predict``,
``export``, ``fine-tune`` and ``search`` on new images."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..core.settings import FeatureSettings
from .backbone import FeatureExtractor, resolve_backbone


def rebuild_backbone(
    settings: FeatureSettings | Mapping[str, Any], precision: str | None = None
) -> FeatureExtractor:
    """The feature extractor a cache (or a head's ``cache_settings``) was made with, in
    the cache's compute precision unless ``precision`` says otherwise.

    Refuses (:class:`SettingsMismatchError`) a weights file or saved model whose bytes
    changed since, or anything else that would give other features now.
    """
    recorded = (
        settings
        if isinstance(settings, FeatureSettings)
        else FeatureSettings.from_mapping(settings)
    )
    if precision is not None:
        recorded = replace(recorded, precision=precision)
    config = recorded.config()
    what = f"{recorded.backbone} changed since the cache was made; its features would not match"
    now = resolve_backbone(config)
    recorded.check(now, what, ours="cache", theirs="now")
    extractor = FeatureExtractor(now)
    recorded.check(extractor.resolved, what, ours="cache", theirs="now")  # and its width
    return extractor
