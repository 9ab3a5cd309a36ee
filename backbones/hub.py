"""keras-hub vision backbones: registry entries by preset name, and preset handles.

A keras-hub backbone is named by a registered preset (``dinov2_small``), ``hub:<preset>``
for any other built-in preset, a local preset folder (written by ``save_to_preset``), or an
``hf://`` / ``kaggle://`` handle. Its preprocessing is the preset's own ``ImageConverter``
(scale and offset, recorded as ``hub:scale=...;offset=...``); the cache identifies the
architecture (a local ``config.json``) and the weights files by SHA-256.
Nothing here imports keras-hub until a remote preset's files are needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, WeightsError

HUB_EXTRA = "pip install 'featcache[hub]'"
"""How to install keras-hub, named in the error when it is missing."""
HUB_PREFIX = "hub:"
"""``hub:<preset>``: any built-in keras-hub preset, registered here or not."""
_SCHEMES = ("hf://", "kaggle://", "gs://", "modelscope://")
_WEIGHT_NAMES = ("model.weights.h5", "model.weights.json", "model.safetensors")
TRANSFORMERS = ("dinov2", "dinov3", "vit", "clip", "siglip", "metaclip2")
"""Families whose output is a token sequence (``cls``/``mean`` pooling, ``blocks``)."""
FIXED_SIZE = ("vit", "clip", "siglip", "metaclip2")
"""Families whose position embeddings fix the input size (DINOv2 interpolates them)."""
_CLASS_FAMILIES = {
    "DINOV2Backbone": "dinov2",
    "DINOV3Backbone": "dinov3",
    "ViTBackbone": "vit",
    "CLIPBackbone": "clip",
    "SigLIPBackbone": "siglip",
    "MetaCLIP2Backbone": "metaclip2",
}


@dataclass(frozen=True)
class HubSpec:
    """How to build one keras-hub backbone (from ``Backbone.from_preset``)."""

    name: str
    """Registry name, ``hub:<preset>``, a local preset folder or a remote handle."""
    preset: str
    """What ``from_preset`` is given."""
    family: str
    """``dinov2``, ``vit``, ``clip``, ``siglip``, ``resnet``, ... (the backbone class)."""
    default_size: int
    """Input side the preset's image converter resizes to (0: unknown until read)."""
    feature_dim: int = 0
    """Width with the default pooling, without projection (0: unknown without the config)."""
    source: str = "keras-hub"
    min_size: int = 32

    @property
    def is_transformer(self) -> bool:
        """True when the backbone outputs tokens."""
        return self.family in TRANSFORMERS

    @property
    def is_local(self) -> bool:
        """True for a preset folder on this machine."""
        return Path(self.preset).is_dir()


def _entry(name: str, family: str, size: int, dim: int) -> HubSpec:
    return HubSpec(name, name, family, size, dim)


_ENTRIES: list[HubSpec] = [
    _entry("dinov2_small", "dinov2", 224, 384),
    _entry("dinov2_base", "dinov2", 224, 768),
    _entry("dinov2_large", "dinov2", 224, 1024),
    _entry("dinov2_giant", "dinov2", 224, 1536),
    _entry("dinov2_with_registers_small", "dinov2", 224, 384),
    _entry("dinov2_with_registers_base", "dinov2", 224, 768),
    _entry("dinov2_with_registers_large", "dinov2", 224, 1024),
    _entry("dinov2_with_registers_giant", "dinov2", 224, 1536),
    _entry("dinov3_vit_small_lvd1689m", "dinov3", 224, 384),
    _entry("dinov3_vit_base_lvd1689m", "dinov3", 224, 768),
    _entry("dinov3_vit_large_lvd1689m", "dinov3", 224, 1024),
    _entry("vit_base_patch16_224_imagenet", "vit", 224, 768),
    _entry("vit_base_patch16_384_imagenet", "vit", 384, 768),
    _entry("vit_large_patch16_224_imagenet", "vit", 224, 1024),
    _entry("vit_base_patch16_224_imagenet21k", "vit", 224, 768),
    _entry("clip_vit_base_patch32", "clip", 224, 768),
    _entry("clip_vit_base_patch16", "clip", 224, 768),
    _entry("clip_vit_large_patch14", "clip", 224, 1024),
    _entry("clip_vit_large_patch14_336", "clip", 336, 1024),
    _entry("siglip_base_patch16_224", "siglip", 224, 768),
    _entry("siglip2_base_patch16_224", "siglip", 224, 768),
    _entry("siglip_so400m_patch14_384", "siglip", 384, 1152),
    _entry("siglip2_so400m_patch14_384", "siglip", 384, 1152),
    _entry("resnet_50_imagenet", "resnet", 224, 2048),
    _entry("resnet_vd_50_imagenet", "resnet", 224, 2048),
    _entry("efficientnet_b0_ra_imagenet", "efficientnet", 224, 1280),
]

HUB_REGISTRY: dict[str, HubSpec] = {spec.name: spec for spec in _ENTRIES}
"""Registered keras-hub presets, by name (any other one: ``hub:<preset>``)."""


def list_hub_backbones() -> list[HubSpec]:
    """The registered keras-hub presets, in registry order."""
    return list(_ENTRIES)


def require_keras_hub() -> Any:
    """The ``keras_hub`` module, or a one-line error naming the install command."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as ensure_tensorflow_backend
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras_hub
    except ImportError:
        raise InvalidOptionError(
            f"backbone: keras-hub backbones need keras-hub ({HUB_EXTRA})", "backbone"
        ) from None
    return keras_hub


def is_remote_preset(backbone: str) -> bool:
    """True for ``hub:NAME`` and ``hf://`` / ``kaggle://`` handles (fetched from the network)."""
    key = backbone.strip()
    return key.startswith(HUB_PREFIX) or key.lower().startswith(_SCHEMES)


def is_hub_backbone(backbone: str) -> bool:
    """True when ``backbone`` names a keras-hub preset (registered, ``hub:``, handle, folder)."""
    key = backbone.strip()
    if key.lower() in HUB_REGISTRY or key.startswith(HUB_PREFIX):
        return True
    if key.lower().startswith(_SCHEMES):
        return True
    return (Path(key).expanduser() / "config.json").is_file()


def hub_spec(backbone: str) -> HubSpec:
    """The spec of a keras-hub backbone name, reading a preset's config when not registered."""
    key = backbone.strip()
    if key.lower() in HUB_REGISTRY:
        return HUB_REGISTRY[key.lower()]
    preset = key.removeprefix(HUB_PREFIX)
    folder = Path(preset).expanduser()
    if (folder / "config.json").is_file():
        name = preset = str(folder.resolve())
    else:
        name = key
    config = _read_json(preset, "config.json", required=True) or {}
    family = _CLASS_FAMILIES.get(str(config.get("class_name", "")), "")
    if not family:
        family = str(config.get("class_name", "unknown")).removesuffix("Backbone").lower()
    converter = _read_json(preset, "image_converter.json", required=False)
    size = _converter_size(converter) or _config_size(config)
    return HubSpec(name, preset, family, size, _config_width(config), source=_source(preset))


def preset_preprocessing(spec: HubSpec) -> str:
    """The preset's ``ImageConverter`` scale and offset as a cache records them."""
    converter = _read_json(spec.preset, "image_converter.json", required=False)
    if converter is None:
        raise InvalidOptionError(
            f"preprocessing auto: preset {spec.name} has no image_converter.json; "
            "give preprocessing none or hub:scale=S;offset=O",
            "preprocessing",
        )
    config = converter.get("config", {})
    return format_preprocessing(config.get("scale"), config.get("offset"))


def format_preprocessing(scale: Any, offset: Any) -> str:
    """``hub:scale=a,b,c;offset=d,e,f`` (one value or one per channel; exact floats)."""

    def text(value: Any, default: float) -> str:
        if value is None:
            value = default
        values = value if isinstance(value, list | tuple) else [value]
        return ",".join(repr(float(v)) for v in values)

    return f"hub:scale={text(scale, 1.0)};offset={text(offset, 0.0)}"


def parse_preprocessing(name: str) -> tuple[list[float], list[float]]:
    """Scale and offset of ``hub:scale=...;offset=...``."""
    try:
        parts = dict(part.split("=", 1) for part in name.removeprefix(HUB_PREFIX).split(";"))
        scale = [float(v) for v in parts["scale"].split(",")]
        offset = [float(v) for v in parts["offset"].split(",")]
    except (KeyError, ValueError):
        raise InvalidOptionError(
            f"preprocessing {name!r}: expected hub:scale=S[,S,S];offset=O[,O,O]", "preprocessing"
        ) from None
    if len(scale) not in (1, 3) or len(offset) not in (1, 3):
        raise InvalidOptionError(
            f"preprocessing {name!r}: one value or one per channel", "preprocessing"
        )
    return scale, offset


def architecture_sha256(spec: HubSpec) -> str:
    """SHA-256 of a local preset's ``config.json`` ("" for named presets and handles)."""
    if not spec.is_local:
        return ""
    return hashlib.sha256((Path(spec.preset) / "config.json").read_bytes()).hexdigest()


def weights_sha256(spec: HubSpec, file_sha256: Callable[[Path], str]) -> str:
    """One SHA-256 over the preset's weights files (downloading a remote preset's)."""
    files = _weight_files(spec)
    if not files:
        raise WeightsError(f"preset {spec.name} has no weights ({', '.join(_WEIGHT_NAMES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _weight_files(spec: HubSpec) -> list[Path]:
    names = list(_WEIGHT_NAMES)
    index = _fetch(spec.preset, "model.weights.json", required=False)
    if index is not None:  # sharded: the index names every shard
        shards = json.loads(index.read_text()).get("weight_map", {}).values()
        for shard in shards:
            names.extend(shard if isinstance(shard, list) else [shard])
        for name in names:
            _check_shard_name(spec.preset, name)
    found: dict[str, Path] = {}
    for name in sorted(set(names)):
        path = _fetch(spec.preset, name, required=False)
        if path is not None:
            found[name] = path
    return [found[name] for name in sorted(found)]


def _check_shard_name(preset: str, name: Any) -> None:
    """Refuse a weights file name that is not a plain path inside the preset (a sharded
    index naming ``/etc/hostname`` or ``../x`` must not make anyone read it)."""
    if (
        not isinstance(name, str)
        or not name
        or Path(name).is_absolute()
        or name.startswith("~")
        or ".." in Path(name).parts
        or "\\" in name
    ):
        raise InvalidOptionError(
            f"backbone {preset}: model.weights.json names {name!r}, which leaves the preset folder",
            "backbone",
        )


def _source(preset: str) -> str:
    if Path(preset).is_dir():
        return "local preset"
    scheme = preset.split("://", 1)[0] if "://" in preset else "keras-hub"
    return scheme


def _read_json(preset: str, name: str, required: bool) -> dict[str, Any] | None:
    path = _fetch(preset, name, required)
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidOptionError(
            f"backbone {preset}: unreadable {name} ({exc})", "backbone"
        ) from None
    return value if isinstance(value, dict) else {}


def _fetch(preset: str, name: str, required: bool) -> Path | None:
    """A preset file: from the folder, else downloaded by keras-hub (None when absent)."""
    folder = Path(preset).expanduser()
    if folder.is_dir():
        path = folder / name
        real, inside = os.path.realpath(path), os.path.realpath(folder)
        if os.path.commonpath([real, inside]) != inside:  # a link out of the folder
            raise InvalidOptionError(
                f"backbone {preset}: {name} leads out of the preset folder", "backbone"
            )
        if path.is_file():
            return path
        if required:
            raise InvalidOptionError(f"backbone {preset}: no {name} in the folder", "backbone")
        return None
    require_keras_hub()
    from keras_hub.src.utils import preset_utils

    try:
        if not preset_utils.check_file_exists(preset, name):
            if required:
                raise InvalidOptionError(f"backbone {preset}: preset has no {name}", "backbone")
            return None
        return Path(preset_utils.get_file(preset, name))
    except InvalidOptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth and format errors vary
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"could not fetch {name} of preset {preset}: {text}") from None


def _converter_size(converter: dict[str, Any] | None) -> int:
    size = (converter or {}).get("config", {}).get("image_size")
    return int(size[0]) if isinstance(size, list | tuple) and size and size[0] else 0


def _config_size(config: dict[str, Any]) -> int:
    inner = config.get("config", {})
    for holder in (inner, inner.get("vision_encoder", {}).get("config", {})):
        shape = holder.get("image_shape")
        if isinstance(shape, list | tuple) and shape and shape[0]:
            return int(shape[0])
    return 0


def _config_width(config: dict[str, Any]) -> int:
    inner = config.get("config", {})
    vision = inner.get("vision_encoder", {}).get("config", {})
    for holder in (vision, inner):
        for key in ("hidden_dim", "embed_dim"):
            if isinstance(holder.get(key), int):
                return int(holder[key])
    return 0
