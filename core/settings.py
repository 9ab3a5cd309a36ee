"""The settings that decide features, and the one check of whether two sets agree.

:class:`BackboneConfig` is what a caller asks for (names, paths); resolving it
(:func:`featcache.backbones.backbone.resolve_backbone`) gives :class:`FeatureSettings`,
with files hashed and names made canonical. Caches record them (:class:`CacheSettings`
adds storage and split settings), heads keep their cache's, and the server's model pool,
``predict``, ``fine-tune`` and ``export`` compare them with :meth:`FeatureSettings.check`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import SettingsMismatchError
from .options import (
    AUGMENT_VERSION,
    DEFAULT_BLOCKS,
    DEFAULT_PRECISION,
    DEFAULT_RESIZE,
    PAD_VERSION,
    BackboneConfig,
)
from .splits import LEGACY_SPLIT_METHOD

__all__ = ["BackboneConfig", "CacheSettings", "FeatureSettings"]

OLD_DECODE = "exact"
"""The decode mode of caches and heads from before it was recorded (and of settings that do
not say)."""

FEATURE_FIELDS = (
    "backbone",
    "backbone_sha256",
    "weights",
    "weights_sha256",
    "image_size",
    "resize",
    "pooling",
    "layer",
    "preprocessing",
)
"""The settings that change the features (with ``seed`` for random weights)."""


@dataclass(frozen=True)
class FeatureSettings:
    """Resolved feature settings: files identified by their SHA-256, names canonical."""

    backbone: str
    """Registry name, or a saved model's absolute path."""
    backbone_sha256: str
    weights: str
    """``imagenet``, ``none``, ``embedded`` (a saved model's own) or a file's absolute path."""
    weights_sha256: str
    image_size: tuple[int, int]
    resize: str
    pooling: str
    layer: str
    preprocessing: str
    seed: int
    """Seed of random weights; it changes the features only when ``weights == "none"``."""
    feature_dim: int = field(default=0, kw_only=True)
    """Embedding width; 0 while unknown (not yet built)."""
    pad_version: int = field(default=PAD_VERSION, kw_only=True)
    """How ``pad`` resizing was computed (see :data:`~.options.PAD_VERSION`); caches and
    heads from before it was recorded read as 1."""
    precision: str = field(default=DEFAULT_PRECISION, kw_only=True)
    """Compute precision of the backbone (``float32``, ``bfloat16``, ``float16``); caches and
    heads from before it was recorded read as ``float32``."""
    blocks: int = field(default=DEFAULT_BLOCKS, kw_only=True)
    """Transformer blocks whose pooled outputs are concatenated (1: the last only)."""
    projection: bool = field(default=False, kw_only=True)
    """CLIP / SigLIP features after the image projection (or attention-pooling head)."""
    decode: str = field(default=OLD_DECODE, kw_only=True)
    """How images became the model's input (:data:`~.options.DECODE_MODES`); caches and
    heads from before it was recorded read as ``exact``."""
    spec: Any = field(default=None, compare=False, repr=False, kw_only=True)
    """The registry entry (a ``backbones.registry.BackboneSpec`` or ``backbones.hub.HubSpec``);
    None for a saved model."""

    def config(self) -> BackboneConfig:
        """The configuration that gives these features again (a cache's or a head's): a
        saved model's own weights load as ``imagenet`` does, a size of 0 (a saved model of
        any size) is the model's own."""
        return BackboneConfig(
            self.backbone,
            "imagenet" if self.weights == "embedded" else self.weights,
            self.image_size if min(self.image_size) > 0 else None,
            self.pooling,
            self.layer,
            self.preprocessing,
            self.seed,
            self.resize,
            self.precision,
            self.blocks,
            self.projection,
            self.decode,
        )

    def identity(self, resize: bool = True) -> dict[str, Any]:
        """What decides the features: files by hash (not path), the seed only for random
        weights. Without ``resize``: what decides the model alone."""
        out: dict[str, Any] = {}
        for name in FEATURE_FIELDS:
            if name == "resize" and not resize:
                continue
            value = getattr(self, name)
            if name in ("weights", "backbone") and getattr(self, f"{name}_sha256"):
                value = "file"
            out[name] = list(value) if isinstance(value, tuple) else value
        if self.weights == "none":
            out["seed"] = self.seed
        if resize and self.resize == "pad" and self.pad_version != 1:
            out["pad_version"] = self.pad_version  # version 1 caches keep their fingerprint
        if resize and self.decode != OLD_DECODE:
            out["decode"] = self.decode  # exact caches keep their fingerprint
        if self.precision != DEFAULT_PRECISION:
            out["precision"] = self.precision  # float32 caches keep their fingerprint
        if self.blocks != DEFAULT_BLOCKS:
            out["blocks"] = self.blocks  # settings from before blocks keep their fingerprint
        if self.projection:
            out["projection"] = True
        return out

    def model_key(self) -> str:
        """Settings that share one loaded model have the same key (resizing comes before)."""
        return json.dumps(self.identity(resize=False), sort_keys=True)

    def differences(
        self, other: FeatureSettings, ours: str = "cache", theirs: str = "now"
    ) -> list[str]:
        """``name ours-value (ours) vs theirs-value (theirs)`` for every setting that differs."""
        out = []
        for name in (*FEATURE_FIELDS, "seed", "feature_dim"):
            if name.endswith("sha256"):
                continue
            if name == "seed" and "none" not in (self.weights, other.weights):
                continue
            if name == "feature_dim" and not (self.feature_dim and other.feature_dim):
                continue
            mine, yours = getattr(self, name), getattr(other, name)
            if name in ("weights", "backbone"):
                mine = getattr(self, f"{name}_sha256") or mine
                yours = getattr(other, f"{name}_sha256") or yours
            if mine != yours:
                label = "random-weight seed" if name == "seed" else name
                shown, other_shown = _show(getattr(self, name)), _show(getattr(other, name))
                if shown == other_shown:  # the same path, other bytes
                    other_shown += " with other contents (SHA-256 differs)"
                out.append(f"{label} {shown} ({ours}) vs {other_shown} ({theirs})")
        pads = (self.pad_version, other.pad_version)
        if self.resize == other.resize == "pad" and pads[0] != pads[1]:
            out.append(
                f"pad resize version {pads[0]} ({ours}) vs {pads[1]} ({theirs}): version 1 "
                "(featcache before the exact pad box) is off by a pixel for some sizes; "
                "extract again"
            )
        if self.precision != other.precision:
            out.append(
                f"precision {_show(self.precision)} ({ours}) vs {_show(other.precision)} ({theirs})"
            )
        if self.decode != other.decode:
            out.append(
                f"decode {_show(self.decode)} ({ours}) vs {_show(other.decode)} ({theirs}): "
                "images became the model's input another way (--decode)"
            )
        for name in ("blocks", "projection"):
            mine, yours = getattr(self, name), getattr(other, name)
            if mine != yours:
                out.append(f"{name} {mine} ({ours}) vs {yours} ({theirs})")
        return out

    def check(self, other: FeatureSettings, what: str, ours: str, theirs: str) -> None:
        """Raise :class:`SettingsMismatchError` (``what: differences``) unless equal."""
        differ = self.differences(other, ours, theirs)
        if differ:
            raise SettingsMismatchError(f"{what}: {'; '.join(differ)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (as a head's ``cache_settings`` stores it)."""
        out: dict[str, Any] = {}
        for each in fields(self):
            if each.name == "spec":
                continue
            value = getattr(self, each.name)
            out[each.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FeatureSettings:
        """Settings from cache attributes or a head's ``cache_settings``."""
        return cls(**_common(values), feature_dim=int(_plain(values.get("feature_dim", 0)) or 0))


@dataclass(frozen=True)
class CacheSettings(FeatureSettings):
    """What a cache's root attributes record: the feature settings, storage and splits."""

    dtype: str = field(kw_only=True)
    split_ratios: tuple[float, float, float] = field(kw_only=True)
    split_source: str = field(kw_only=True)
    """``hash`` (ratios and seed) or ``folders`` (train/val/test folders)."""
    dataset_root: str = field(kw_only=True)
    split_method: str = field(default=LEGACY_SPLIT_METHOD, kw_only=True)
    """How rows not placed by folders get their split (:data:`~.splits.SPLIT_METHODS`):
    ``stratified`` or ``hash``; caches from before it was recorded read as ``hash``."""
    views: int = field(default=1, kw_only=True)
    """Embeddings per image: ``features`` holds view 0 (the plain image), the ``views``
    dataset views 1 to ``views - 1`` (augmented; see :mod:`.views`)."""
    augment: tuple[str, ...] = field(default=(), kw_only=True)
    """Augmentations of views 1+ (empty when ``views == 1``)."""
    augment_seed: int = field(default=0, kw_only=True)
    """Seed of the augmentations (0 when ``views == 1``)."""
    augment_version: int = field(default=AUGMENT_VERSION, kw_only=True)
    """Version of the augmentation procedure (:data:`~.options.AUGMENT_VERSION`); caches
    with views from before it was recorded read as 1."""
    taps: tuple[str, ...] = field(default=(), kw_only=True)
    """Inner layers stored beside ``features`` as asked (``("auto",)`` or layer names; the
    layers ``auto`` chose are the ``taps/`` datasets); empty: none."""

    @classmethod
    def of(
        cls,
        features: FeatureSettings,
        *,
        dtype: str,
        split_ratios: tuple[float, float, float],
        split_source: str,
        dataset_root: str,
        views: int = 1,
        augment: tuple[str, ...] = (),
        augment_seed: int = 0,
        split_method: str = LEGACY_SPLIT_METHOD,
        taps: tuple[str, ...] = (),
    ) -> CacheSettings:
        """``features`` with a cache's storage, split and view settings."""
        names = [each.name for each in fields(FeatureSettings)]
        return cls(
            **{name: getattr(features, name) for name in names},
            dtype=dtype,
            split_ratios=split_ratios,
            split_source=split_source,
            dataset_root=dataset_root,
            split_method=split_method,
            views=views,
            augment=tuple(augment) if views > 1 else (),
            augment_seed=augment_seed if views > 1 else 0,
            taps=tuple(taps),
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every setting that changes the stored features."""
        payload = {**self.identity(), "dtype": self.dtype}
        if self.taps:  # caches without taps keep their fingerprint
            payload["taps"] = list(self.taps)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def differences(
        self, other: FeatureSettings, ours: str = "cache", theirs: str = "now"
    ) -> list[str]:
        """Feature differences, then storage and split differences."""
        out = super().differences(other, ours, theirs)
        if not isinstance(other, CacheSettings):
            return out
        folders = self.split_source == other.split_source == "folders"
        for name in (
            "dtype",
            "split_ratios",
            "split_source",
            "split_method",
            "seed",
            "dataset_root",
        ):
            if folders and name in ("split_ratios", "split_method", "seed"):
                continue  # the layout sets the splits
            if name == "seed" and "none" in (self.weights, other.weights):
                continue  # already named as the random-weight seed
            mine, yours = getattr(self, name), getattr(other, name)
            if name == "split_ratios":
                mine, yours = [round(v, 6) for v in mine], [round(v, 6) for v in yours]
            if mine != yours:
                out.append(
                    f"{name} {_show(getattr(self, name))} ({ours}) vs "
                    f"{_show(getattr(other, name))} ({theirs})"
                )
        out += self._view_differences(other, ours, theirs)
        if self.taps != other.taps:
            mine, yours = ",".join(self.taps) or "none", ",".join(other.taps) or "none"
            keep = " (to keep the cached taps rerun without --taps)" if ours == "cache" else ""
            out.append(f"taps {mine} ({ours}) vs {yours} ({theirs}){keep}")
        return out

    def _view_differences(self, other: CacheSettings, ours: str, theirs: str) -> list[str]:
        """Cached views are kept only for the same count, augmentations, seed and
        augmentation version (view settings not given are the cache's, see
        :meth:`~.options.ExtractOptions.with_cache_views`). A cache's views that the same
        procedure could extend say how to keep them."""
        out = self._view_setting_differences(other, ours, theirs)
        if out and ours == "cache" and self.views > 1:
            if self.augment_version == other.augment_version:
                out[-1] += (
                    " (to keep the cached views rerun without --views, --augment and "
                    "--augment-seed, in Python views, augment and augment_seed None: "
                    f"views {self.views}, augment {','.join(self.augment)}, augment_seed "
                    f"{self.augment_seed} as the cache)"
                )
        return out

    def _view_setting_differences(self, other: CacheSettings, ours: str, theirs: str) -> list[str]:
        if self.views != other.views:
            return [f"views {self.views} ({ours}) vs {other.views} ({theirs})"]
        if self.views == 1:
            return []
        out = []
        versions = (self.augment_version, other.augment_version)
        if versions[0] != versions[1]:
            out.append(
                f"augment_version {versions[0]} ({ours}) vs {versions[1]} ({theirs}): the "
                "views were made by another augmentation procedure; extract again"
            )
        if self.augment != other.augment:
            mine, yours = ",".join(self.augment), ",".join(other.augment)
            out.append(f"augment {mine!r} ({ours}) vs {yours!r} ({theirs})")
        if self.augment_seed != other.augment_seed:
            seeds = f"{self.augment_seed} ({ours}) vs {other.augment_seed} ({theirs})"
            out.append(f"augment_seed {seeds}")
        return out

    def to_attrs(self) -> dict[str, Any]:
        """Root attributes of the cache file for these settings."""
        from .splits import SPLIT_NAMES

        extra: dict[str, Any] = {}  # only when set: older readers see the same attributes
        if self.blocks != DEFAULT_BLOCKS:
            extra["blocks"] = int(self.blocks)
        if self.projection:
            extra["projection"] = 1
        if self.views > 1:  # caches without views keep their attributes
            extra["views"] = int(self.views)
            extra["augment"] = ",".join(self.augment)
            extra["augment_seed"] = int(self.augment_seed)
            extra["augment_version"] = int(self.augment_version)
        if self.taps:  # caches without taps keep their attributes
            extra["taps"] = json.dumps(list(self.taps))
        return {
            **extra,
            "backbone": self.backbone,
            "backbone_sha256": self.backbone_sha256,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "image_size": np.asarray(self.image_size, dtype=np.int64),
            "resize": self.resize,
            "pooling": self.pooling,
            "layer": self.layer,
            "preprocessing": self.preprocessing,
            "dtype": self.dtype,
            "split_names": json.dumps(list(SPLIT_NAMES)),
            "split_ratios": np.asarray(self.split_ratios, dtype=np.float64),
            "split_source": self.split_source,
            "split_method": self.split_method,
            "seed": int(self.seed),
            "dataset_root": self.dataset_root,
            "pad_version": int(self.pad_version),
            "precision": self.precision,
            "decode": self.decode,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> CacheSettings:
        """Settings read back from a cache file's root attributes."""
        ratios = [float(v) for v in np.asarray(attrs["split_ratios"]).reshape(-1)]
        views = int(_plain(attrs.get("views", 1)) or 1)
        return cls(
            **_common(attrs),
            feature_dim=int(_plain(attrs.get("feature_dim", 0)) or 0),
            dtype=_text(attrs, "dtype"),
            split_ratios=(ratios[0], ratios[1], ratios[2]),
            split_source=_text(attrs, "split_source") or "hash",
            dataset_root=_text(attrs, "dataset_root"),
            split_method=_text(attrs, "split_method") or LEGACY_SPLIT_METHOD,
            views=views,
            augment=tuple(a for a in _text(attrs, "augment").split(",") if a),
            augment_seed=int(_plain(attrs.get("augment_seed", 0)) or 0),
            augment_version=(
                int(_plain(attrs.get("augment_version", 1)) or 1) if views > 1 else AUGMENT_VERSION
            ),
            taps=tuple(json.loads(_text(attrs, "taps") or "[]")),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _text(values: Mapping[str, Any], name: str) -> str:
    value = _plain(values.get(name, ""))
    return "" if value is None else str(value)


def _common(values: Mapping[str, Any]) -> dict[str, Any]:
    raw = _plain(values.get("image_size"))
    size = [int(v) for v in np.asarray(raw if raw is not None else [0, 0]).reshape(-1)] or [0]
    return {
        "backbone": _text(values, "backbone"),
        "backbone_sha256": _text(values, "backbone_sha256"),
        "weights": _text(values, "weights"),
        "weights_sha256": _text(values, "weights_sha256"),
        "image_size": (size[0], size[-1]),
        "resize": _text(values, "resize") or DEFAULT_RESIZE,
        "pooling": _text(values, "pooling"),
        "layer": _text(values, "layer"),
        "preprocessing": _text(values, "preprocessing"),
        "seed": int(_plain(values.get("seed", 0)) or 0),
        "pad_version": int(_plain(values.get("pad_version", 1)) or 1),
        "precision": _text(values, "precision") or DEFAULT_PRECISION,
        "blocks": int(_plain(values.get("blocks", DEFAULT_BLOCKS)) or DEFAULT_BLOCKS),
        "projection": bool(_plain(values.get("projection", False))),
        "decode": _text(values, "decode") or OLD_DECODE,
    }


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return repr(value) if value != "" else "''"
