"""The default cache file of an extraction: ``cache/<backbone>[-<setting>...].h5``.

The name carries every setting that differs from its default, so two extractions with
other settings never meet in one file; the defaults keep ``cache/<backbone>.h5``. The rule,
in order (each part only when not the default):

====================  =====================  ==========================================
setting               part                   example
====================  =====================  ==========================================
``image_size``        ``96px``, ``96x128px``  the backbone's own size gives no part
``pooling``           the mode               ``max``, ``cls_mean``
``resize``            the mode               ``pad``, ``crop``
``layer``             the layer's name       ``block4_pool``
``blocks``            ``4blocks``
``projection``        ``proj``
``decode``            the mode               ``exact``, ``antialias`` (``fast``: none)
``preprocessing``     ``prep_<name>``        ``prep_none``
``weights``           ``random``, ``w_<file stem>``  ``w_finetuned``
``seed``              ``seed<N>``            ``seed7``
``precision``         ``bf16``, ``fp16``
``dtype``             ``f16``
``split``             ``split<percent>``     ``split80_10_10``
``shard``             ``shard<I>of<N>``      ``shard0of4``
====================  =====================  ==========================================

The backbone part is the registry name, a saved model's file stem, or the last part of a
keras-hub preset (``hub:dinov2_small`` -> ``dinov2_small``, ``hf://org/my-model`` ->
``my_model``). Every part is lower case, with ``-`` and other characters than letters,
digits, ``.`` and ``_`` turned into ``_``; free-form parts (a layer, a weights file) are cut
to 24 characters. A weights file whose name says ``imagenet`` (the files Keras downloads,
``mobilenet_1_0_224_imagenet_notop.weights.h5``, passed by hand offline) names as the
default ImageNet weights do. Cached views (``views``, ``augment``) are not in the name: a rerun
without them extends the cache it finds, as ``extract`` always does.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

from ..backbones.backbone import is_model_file
from ..backbones.hub import HUB_REGISTRY
from ..backbones.registry import REGISTRY
from ..core.options import (
    DEFAULT_BLOCKS,
    DEFAULT_DECODE,
    DEFAULT_DTYPE,
    DEFAULT_POOLING,
    DEFAULT_PRECISION,
    DEFAULT_PREPROCESSING,
    DEFAULT_RESIZE,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    BackboneConfig,
    parse_image_size,
    parse_shard,
    parse_split,
)
from ..core.settings import CacheSettings, FeatureSettings

DEFAULT_CACHE_DIR = Path("cache")
_DEFAULT_WEIGHTS = ("imagenet", "preset")
_RANDOM_WEIGHTS = ("none", "random")
_PRECISIONS = {"bfloat16": "bf16", "float16": "fp16"}
_FREE_FORM = 24
"""Longest part taken from free text (a layer name, a weights file's stem)."""


def default_output(
    config: BackboneConfig, dtype: str | None = None, split: str | tuple[float, ...] | None = None
) -> Path:
    """``cache/<name>.h5`` for these settings (see :func:`cache_name`); ``dtype`` and
    ``split`` default to ``config``'s own when it is an ``ExtractOptions``."""
    return DEFAULT_CACHE_DIR / f"{cache_name(config, dtype, split)}.h5"


def cache_name(
    config: BackboneConfig, dtype: str | None = None, split: str | tuple[float, ...] | None = None
) -> str:
    """The default cache's file stem: the backbone, then a part per setting that is not
    its default (the module's table)."""
    dtype = str(dtype or getattr(config, "dtype", DEFAULT_DTYPE))
    split = split or getattr(config, "split", None) or DEFAULT_SPLIT
    parts = [backbone_part(config.backbone)]
    size = parse_image_size(config.image_size)
    if size is not None and size != (_own_size(config.backbone),) * 2:
        parts.append(f"{size[0]}px" if size[0] == size[1] else f"{size[0]}x{size[1]}px")
    if config.pooling != DEFAULT_POOLING:
        parts.append(_clean(config.pooling))
    if config.resize != DEFAULT_RESIZE:
        parts.append(_clean(config.resize))
    if config.layer:
        parts.append(_clean(config.layer)[:_FREE_FORM])
    if config.blocks != DEFAULT_BLOCKS:
        parts.append(f"{config.blocks}blocks")
    if config.projection:
        parts.append("proj")
    if config.decode not in (None, DEFAULT_DECODE):
        parts.append(_clean(config.decode))
    if config.preprocessing != DEFAULT_PREPROCESSING:
        parts.append("prep_" + _clean(config.preprocessing)[:_FREE_FORM])
    parts += _weights_parts(config.weights, config.seed)
    if config.precision != DEFAULT_PRECISION:
        parts.append(_PRECISIONS.get(config.precision, _clean(config.precision)))
    if dtype != DEFAULT_DTYPE:
        parts.append("f16" if dtype == "float16" else _clean(dtype))
    ratios = parse_split(split)
    if ratios != parse_split(DEFAULT_SPLIT):
        parts.append("split" + "_".join(f"{round(100 * r, 1):g}" for r in ratios if r))
    shard = getattr(config, "shard", None)
    if shard:
        index, count = parse_shard(shard)
        parts.append(f"shard{index}of{count}")
    return "-".join(part for part in parts if part)


def backbone_part(backbone: str) -> str:
    """The backbone's part of the name: a registry name, a model file's stem, the last part
    of a preset folder or handle."""
    name = Path(backbone).stem if is_model_file(backbone) else backbone
    name = name.rstrip("/").rsplit("/", 1)[-1].removeprefix("hub:")
    return _clean(name) or "backbone"


def _weights_parts(weights: str, seed: int) -> list[str]:
    key = weights.strip().lower()
    parts = []
    if key in _RANDOM_WEIGHTS:
        parts.append("random")
    elif key not in _DEFAULT_WEIGHTS and "imagenet" not in Path(key).name:  # a weights file
        stem = Path(weights).name
        for suffix in (".h5", ".keras", ".weights", ".npz"):
            stem = stem.removesuffix(suffix)
        parts.append("w_" + _clean(stem)[:_FREE_FORM])
    if seed != DEFAULT_SEED:
        parts.append(f"seed{seed}")
    return parts


def _own_size(backbone: str) -> int | None:
    """The registered backbone's default input size; None when not registered."""
    key = backbone.strip().lower()
    spec = REGISTRY.get(key.replace("-", "_")) or HUB_REGISTRY.get(key.removeprefix("hub:"))
    return spec.default_size if spec is not None else None


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9_.]+", "_", text.strip().lower()).strip("._")


def other_name_hint(
    output: Path,
    data: str | os.PathLike[str],
    cached: CacheSettings | None,
    config: BackboneConfig,
    resolved: FeatureSettings,
) -> str:
    """What to do when ``output``, a default name, holds a cache of other settings: a name
    for this run beside it (``-o cache/<stem>-<data folder>.h5``) and, when the cache's own
    settings are named otherwise (a cache from before this naming), that name.

    ``config`` is what this run was asked, ``resolved`` what it resolved to: a setting the
    cache shares with the run is named as the run's (``auto`` rather than the function it
    resolved to)."""
    folder = _clean(Path(data).expanduser().resolve().name.rsplit(".", 1)[0])[:_FREE_FORM]
    beside = output.with_name(f"{output.stem}-{folder or 'data'}{output.suffix}")
    hint = f"e.g. -o {beside}"
    if cached is not None:
        theirs = cached.config()
        asked = {
            each.name: getattr(config if _same(cached, resolved, each.name) else theirs, each.name)
            for each in fields(BackboneConfig)
        }
        own = output.with_name(
            f"{cache_name(BackboneConfig(**asked), cached.dtype, cached.split_ratios)}.h5"
        )
        if own != output:
            hint += f" (or rename that cache to {own}, the default name of its settings)"
    return hint


def _same(cached: FeatureSettings, resolved: FeatureSettings, name: str) -> bool:
    """The cache and the run agree on setting ``name`` (files by their hashes)."""
    if name in ("weights", "backbone"):
        mine = getattr(cached, f"{name}_sha256") or getattr(cached, name)
        return bool(mine == (getattr(resolved, f"{name}_sha256") or getattr(resolved, name)))
    return bool(getattr(cached, name) == getattr(resolved, name))
