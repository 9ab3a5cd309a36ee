"""The text tower of a keras-hub CLIP or SigLIP preset, for a cache of its image features.

A cache's image features live in the image-text space when they are the preset's image
embedding: CLIP's projected class token (``--projection``, or the class token itself,
projected here with the preset's linear ``vision_projection``) or SigLIP's attention-pooling
head (``--projection``). :func:`shared_space_problem` says why any other cache cannot be
used; :class:`TextTower` loads the preset the cache records (same weights, or the same seeded
random ones), encodes texts through the preset's own preprocessor (CLIP lowercases and pads
to 77 tokens; SigLIP canonicalises and pads to 64) and gives the logit scale and bias.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.settings import FeatureSettings
from ..errors import InvalidOptionError, WeightsError
from .hub import HubSpec, hub_spec, is_hub_backbone, require_keras_hub

TEXT_FAMILIES = ("clip", "siglip", "metaclip2")
"""keras-hub families whose presets have a text tower featcache reads."""
_PREPROCESSORS = {
    "clip": "CLIPPreprocessor",
    "siglip": "SigLIPPreprocessor",
    "metaclip2": "MetaCLIP2CausalLMPreprocessor",
}
_HEADS = {"clip": "clip_head", "siglip": "siglip_head", "metaclip2": "metaclip_2_head"}
_SHOWN = {"clip": "CLIP", "siglip": "SigLIP", "metaclip2": "MetaCLIP 2"}
DEFAULT_TEXT_BATCH = 256
"""Texts per forward pass of the text encoder."""


def text_family(settings: FeatureSettings) -> str:
    """The keras-hub family of a cache's backbone ("" when it is not a keras-hub preset)."""
    if isinstance(settings.spec, HubSpec):
        return settings.spec.family
    if not is_hub_backbone(settings.backbone):
        return ""
    return hub_spec(settings.backbone).family


def shared_space_problem(settings: FeatureSettings) -> str:
    """Why a cache's features cannot be put in its preset's image-text space ("" if they can)."""
    try:
        family = text_family(settings)
    except InvalidOptionError as exc:  # a preset folder that is gone
        return str(exc)
    if not family:
        return (
            f"backbone {settings.backbone} has no text tower: zero-shot needs a keras-hub "
            f"{', '.join(_SHOWN[f] for f in TEXT_FAMILIES)} preset"
        )
    if family not in TEXT_FAMILIES:
        return f"backbone {settings.backbone} is a {family} backbone, without a text tower"
    if settings.projection:
        return ""
    if family == "metaclip2":
        return (
            f"the cache holds pooling {settings.pooling}; MetaCLIP 2's image embedding is the "
            "projection of its normalised class token: extract with --projection"
        )
    if family == "clip":
        if settings.pooling == "cls" and settings.blocks == 1:
            return ""  # the class token: projected here
        return (
            f"the cache holds pooling {settings.pooling} of {settings.blocks} block(s); CLIP's "
            "image embedding is the projection of the last block's class token: extract with "
            "--projection (or --pooling cls)"
        )
    return (
        f"the cache holds pooling {settings.pooling}; SigLIP's image embedding is its "
        "attention-pooling head over every token, which no pooling of cached tokens gives: "
        "extract with --projection"
    )


def check_shared_space(settings: FeatureSettings) -> str:
    """The cache's family, or :class:`InvalidOptionError` saying why it has no text space."""
    problem = shared_space_problem(settings)
    if problem:
        raise InvalidOptionError(f"cache: {problem}", "cache")
    return text_family(settings)


@dataclass
class TextTower:
    """A preset's text encoder and what maps cached features into the shared space."""

    settings: FeatureSettings
    family: str
    backbone: Any
    preprocessor: Any
    projection: np.ndarray | None
    """``(D, P)``: CLIP's image projection, for a cache of class tokens (None: projected)."""
    scale: float
    """The logit scale, exponentiated (CLIP: 1/temperature)."""
    bias: float
    """SigLIP's logit bias (0 for CLIP)."""

    @classmethod
    def load(cls, settings: FeatureSettings) -> TextTower:
        """The text tower of the preset a cache records, built as extraction built it.

        Refuses a cache without a shared space (:func:`shared_space_problem`) and a preset
        whose files changed since (:class:`SettingsMismatchError`).
        """
        from .backbone import load_base, resolve_backbone

        family = check_shared_space(settings)
        now = resolve_backbone(settings.config())
        what = f"{settings.backbone} changed since the cache was made; its texts would not match"
        settings.check(now, what, ours="cache", theirs="now")
        backbone = load_base(replace(now, precision="float32"))
        preprocessor = _preprocessor(family, now.spec)
        projection = None
        if not settings.projection:
            projection = np.asarray(backbone.vision_projection.kernel, dtype=np.float32)
        head = getattr(backbone, _HEADS[family])
        scale = float(np.exp(np.asarray(head.logit_scale, dtype=np.float64)))
        bias = float(np.asarray(head.logit_bias)) if family == "siglip" else 0.0
        return cls(settings, family, backbone, preprocessor, projection, scale, bias)

    @property
    def dim(self) -> int:
        """Width of the shared space."""
        if self.family != "siglip":
            return int(self.backbone.projection_dim)
        return int(self.backbone.text_encoder.output.shape[-1])

    def token_ids(self, texts: list[str]) -> np.ndarray:
        """``(N, L)`` int32: the texts through the preset's own preprocessor."""
        out = self.preprocessor({"images": None, "prompts": list(texts)})
        x = out[0] if isinstance(out, tuple) else out
        return np.asarray(x["token_ids"], dtype=np.int32)

    def encode(self, texts: list[str], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """``(N, P)`` float32 text embeddings (not normalised), as the preset's own
        ``get_text_embeddings`` gives them."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._text_model()
        parts = []
        for start in range(0, len(texts), batch_size):
            ids = self.token_ids(texts[start : start + batch_size])
            parts.append(np.asarray(model(ids), dtype=np.float32))
        return np.concatenate(parts)

    def image_vectors(self, features: np.ndarray) -> np.ndarray:
        """Cached features -> ``(N, P)`` float32 image embeddings (not normalised)."""
        x = np.asarray(features, dtype=np.float32)
        return x @ self.projection if self.projection is not None else x

    def _text_model(self) -> Any:
        model = getattr(self, "_model", None)
        if model is None:
            import tensorflow as tf

            backbone = self.backbone

            @tf.function(reduce_retracing=True)
            def embed(ids: Any) -> Any:
                return backbone.get_text_embeddings(ids)

            model = self._model = embed
        return model


_TOWERS: dict[str, TextTower] = {}
_TOWERS_LOCK = threading.Lock()
MAX_TOWERS = 2
"""Text towers kept loaded per process (the most recently loaded)."""


def cached_tower(settings: FeatureSettings) -> TextTower:
    """:meth:`TextTower.load`, once per process for the same settings (the last
    :data:`MAX_TOWERS` kept)."""
    check_shared_space(settings)
    key = settings.model_key()
    with _TOWERS_LOCK:
        found = _TOWERS.get(key)
        if found is None:
            found = TextTower.load(settings)
            while len(_TOWERS) >= MAX_TOWERS:
                _TOWERS.pop(next(iter(_TOWERS)))
            _TOWERS[key] = found
        return found


def projected_scan(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], tower: TextTower, query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first ``(similarities, rows)`` of a unit ``query`` over cached ``(rows,
    features)`` batches, each row projected into the shared space: the exact search of a
    CLIP cache of class tokens (its index holds the unprojected features)."""
    best_sims = np.full(0, -np.inf, dtype=np.float32)
    best_rows = np.zeros(0, dtype=np.int64)
    for rows, features in batches:
        sims = normalise(tower.image_vectors(features)) @ np.asarray(query, np.float32)
        sims = np.concatenate([best_sims, sims.astype(np.float32)])
        every = np.concatenate([best_rows, np.asarray(rows, np.int64)])
        keep = np.argsort(-sims, kind="stable")[:k]
        best_sims, best_rows = sims[keep], every[keep]
    return best_sims, best_rows


def _preprocessor(family: str, spec: HubSpec) -> Any:
    """The preset's text preprocessor (its tokenizer assets), without its image converter."""
    keras_hub = require_keras_hub()
    kind = getattr(keras_hub.models, _PREPROCESSORS[family])
    try:
        preprocessor = kind.from_preset(spec.preset)
    except Exception as exc:  # noqa: BLE001 - missing assets and download errors vary
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"preset {spec.name} has no usable text preprocessor (tokenizer): {text}"
        ) from None
    preprocessor.image_converter = None  # texts only
    return preprocessor


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
