"""Resolving a keras-hub backbone's settings: preset, weights hash, converter, pooling.

Checks every option against the preset's family without building the model; a local preset
folder needs no keras-hub import, a named or remote preset fetches its small JSON files (and,
with its own weights, the weights files to hash them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.options import DEFAULT_DECODE, invalid, parse_image_size
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import InvalidOptionError
from .hub import (
    FIXED_SIZE,
    HUB_PREFIX,
    HubSpec,
    architecture_sha256,
    format_preprocessing,
    hub_spec,
    parse_preprocessing,
    preset_preprocessing,
    weights_sha256,
)

PRESET_WEIGHTS = ("imagenet", "preset")
"""``weights`` values meaning the preset's own weights (recorded as ``preset``)."""


def resolve_hub(config: BackboneConfig, file_sha256: Callable[[Path], str]) -> FeatureSettings:
    """The feature settings of a keras-hub backbone (options checked, files hashed)."""
    spec = hub_spec(config.backbone)
    if config.layer:
        raise invalid("layer", config.layer, "keras-hub backbones give pooled features only")
    pooling = _pooling(config, spec)
    weights, weights_sha = _weights(config.weights, spec, file_sha256)
    size = parse_image_size(config.image_size) or (spec.default_size, spec.default_size)
    if min(size) < 1:
        raise invalid("image_size", config.image_size, f"preset {spec.name}: give an image size")
    native = (spec.default_size, spec.default_size)
    if spec.family in FIXED_SIZE and size != native and spec.default_size:
        raise invalid(
            "image_size",
            f"{size[0]},{size[1]}",
            f"{spec.name} ({spec.family}) takes {native[0]}x{native[1]} images",
        )
    if min(size) < spec.min_size:
        raise invalid("image_size", f"{size[0]},{size[1]}", f"needs at least {spec.min_size} px")
    return FeatureSettings(
        spec.name,
        architecture_sha256(spec),
        weights,
        weights_sha,
        size,
        config.resize,
        pooling,
        "",
        _preprocessing(config.preprocessing, spec),
        config.seed,
        precision=config.precision,
        blocks=config.blocks,
        projection=config.projection,
        decode=config.decode or DEFAULT_DECODE,
        spec=spec,
    )


def _pooling(config: BackboneConfig, spec: HubSpec) -> str:
    """The canonical pooling: ``avg`` is ``mean`` for tokens; CNNs keep avg/max/none."""
    pooling = config.pooling
    if config.projection and spec.family not in ("clip", "siglip", "metaclip2"):
        raise invalid(
            "projection", True, f"only CLIP, SigLIP and MetaCLIP 2 have one, not {spec.family}"
        )
    if not spec.is_transformer:
        if pooling not in ("avg", "max", "none"):  # no gem: keras-hub builds its own pooling
            raise invalid("pooling", pooling, f"{spec.name} gives a feature map: avg, max or none")
        if config.blocks != 1:
            raise invalid("blocks", config.blocks, f"{spec.name} is not a transformer")
        return pooling
    if pooling in ("max", "gem"):
        raise invalid("pooling", pooling, "transformers: cls, mean (or avg), cls+mean or none")
    if config.projection:
        token = "mean" if spec.family == "siglip" else "cls"
        if pooling not in ("avg", token):
            raise invalid("pooling", pooling, "the projection decides the pooling; leave it out")
        return token
    return "mean" if pooling == "avg" else pooling


def _weights(weights: str, spec: HubSpec, file_sha256: Callable[[Path], str]) -> tuple[str, str]:
    key = weights.strip()
    if key.lower() in ("none", "random"):
        return "none", ""
    if key.lower() in PRESET_WEIGHTS:
        return "preset", weights_sha256(spec, file_sha256)
    path = Path(key).expanduser()
    if not path.is_file():
        raise invalid("weights", weights, "expected preset (imagenet), none or a .weights.h5 file")
    return str(path.resolve()), file_sha256(path)


def _preprocessing(preprocessing: str, spec: HubSpec) -> str:
    key = preprocessing.strip()
    if key.lower() == "auto":
        return preset_preprocessing(spec)
    if key.lower() == "none":
        return "none"
    if key.startswith(HUB_PREFIX):
        scale, offset = parse_preprocessing(key)
        return format_preprocessing(scale, offset)
    raise InvalidOptionError(
        f"preprocessing {preprocessing!r}: keras-hub presets take auto, none or "
        "hub:scale=S;offset=O",
        "preprocessing",
    )
