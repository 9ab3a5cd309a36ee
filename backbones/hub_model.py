"""Building a keras-hub backbone and its pooled features (imports Keras; keras-hub on use).

Token pooling of transformers: ``cls`` (the class token), ``mean`` (patch tokens only: the
class token and DINOv2's register tokens are skipped), ``cls+mean`` (both, concatenated) or
``none`` (every token, flattened); ``blocks`` concatenates that for the last N blocks, each
with the backbone's final norm (DINOv2's linear evaluation). CLIP's ``projection`` is its
image projection of the class token (MetaCLIP 2's: of the class token after its post
layer norm); SigLIP's is its attention-pooling head.
"""

from __future__ import annotations

from typing import Any

import keras

from ..core.settings import FeatureSettings
from ..errors import InvalidOptionError, WeightsError
from .hub import FIXED_SIZE, HubSpec, require_keras_hub


@keras.saving.register_keras_serializable(package="featcache")
class TokenPool(keras.layers.Layer):
    """``(N, T, D)`` tokens -> ``(N, D')`` float32: ``cls``, ``mean``, ``cls+mean``, ``none``.

    ``skip`` leading tokens are not patches (class and register tokens); ``has_cls`` says
    whether the first token is a class token.
    """

    def __init__(self, mode: str, skip: int, has_cls: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode, self.skip, self.has_cls = mode, int(skip), bool(has_cls)

    def call(self, tokens: Any) -> Any:
        tokens = keras.ops.cast(tokens, "float32")
        if self.mode == "none":
            return keras.ops.reshape(tokens, (-1, tokens.shape[1] * tokens.shape[2]))
        parts = []
        if "cls" in self.mode:
            parts.append(tokens[:, 0, :])
        if "mean" in self.mode:
            parts.append(keras.ops.mean(tokens[:, self.skip :, :], axis=1))
        return parts[0] if len(parts) == 1 else keras.ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        tokens, width = input_shape[1], input_shape[2]
        if self.mode == "none":
            return (input_shape[0], None if tokens is None else tokens * width)
        return (input_shape[0], width * (2 if self.mode == "cls+mean" else 1))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mode": self.mode,
            "skip": self.skip,
            "has_cls": self.has_cls,
        }


def build_hub_backbone(resolved: FeatureSettings, spec: HubSpec) -> Any:
    """``Backbone.from_preset`` with the preset's weights, a weights file, or random ones."""
    keras_hub = require_keras_hub()
    kwargs: dict[str, Any] = {}
    height, width = resolved.image_size
    if spec.family not in FIXED_SIZE:
        kwargs["image_shape"] = (height, width, 3)
    from_file = resolved.weights not in ("preset", "none")
    load = resolved.weights == "preset"
    try:
        try:
            backbone = keras_hub.models.Backbone.from_preset(
                spec.preset, load_weights=load, **kwargs
            )
        except TypeError:  # a backbone without image_shape
            backbone = keras_hub.models.Backbone.from_preset(spec.preset, load_weights=load)
    except Exception as exc:  # noqa: BLE001 - download and load errors vary
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"could not build keras-hub preset {spec.name}: {text}") from None
    if from_file:
        try:
            backbone.load_weights(resolved.weights)
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"could not load weights {resolved.weights}: {text}") from None
    return backbone


def hub_feature_model(backbone: Any, resolved: FeatureSettings, spec: HubSpec) -> Any:
    """``images (N, H, W, 3) preprocessed -> features (N, D)`` float32, as one Keras model."""
    height, width = resolved.image_size
    images = keras.Input((height, width, 3), name="images")
    if spec.family in ("clip", "metaclip2"):
        features = _clip(backbone, resolved, images)
    elif spec.family == "siglip":
        features = _siglip(backbone, resolved, images)
    elif spec.is_transformer:
        features = _tokens(backbone, resolved, images, spec.family)
    else:
        features = _feature_map(backbone, resolved, images)
    return keras.Model(images, features, name=f"featcache_{backbone.name}")


def _tokens(backbone: Any, resolved: FeatureSettings, images: Any, family: str) -> Any:
    """DINOv2 / DINOv3 / ViT: the sequence output (final norm applied)."""
    registers = int(getattr(backbone, "num_register_tokens", 0) or 0)
    has_cls = bool(getattr(backbone, "use_class_token", True))
    skip = (1 if has_cls else 0) + registers
    if resolved.blocks == 1:
        return _pool(_apply(backbone, images), resolved, skip, has_cls)
    pyramid = getattr(backbone, "pyramid_outputs", None) or {}
    stages = sorted((k for k in pyramid if k.startswith("stage")), key=lambda k: int(k[5:]))
    norm = getattr(backbone, "layernorm", None)
    if len(stages) < resolved.blocks or norm is None:
        raise InvalidOptionError(
            f"blocks {resolved.blocks}: {family} backbones here give only their last block "
            f"({len(stages)} block outputs exposed)",
            "blocks",
        )
    taps = [pyramid[k] for k in stages[-resolved.blocks :]]
    outputs = _call(backbone, taps, images)
    pooled = [
        TokenPool(resolved.pooling, skip, has_cls, name=f"featcache_pool_{i}")(norm(out))
        for i, out in enumerate(outputs)
    ]
    return keras.layers.Concatenate(dtype="float32", name="featcache_blocks")(pooled)


def _clip(backbone: Any, resolved: FeatureSettings, images: Any) -> Any:
    encoder = backbone.vision_encoder
    if resolved.projection:
        _no_blocks(resolved, "clip with projection")
        if resolved.pooling not in ("cls", "avg"):
            raise InvalidOptionError(
                f"pooling {resolved.pooling!r}: CLIP's projection takes the class token "
                "(pooling cls)",
                "pooling",
            )
        tokens = _apply(encoder, images)
        pooled = backbone.vision_pooler(tokens)
        norm = getattr(backbone, "vision_post_layer_norm", None)  # MetaCLIP 2's
        if norm is not None:
            pooled = norm(pooled)
        out = backbone.vision_projection(pooled)
        return keras.layers.Activation("linear", dtype="float32", name="featcache_float32")(out)
    if resolved.blocks == 1:
        return _pool(_apply(encoder, images), resolved, 1, True)
    if not hasattr(encoder, "encoder_layers"):
        _no_blocks(resolved, type(backbone).__name__)
    blocks = list(encoder.encoder_layers)
    if len(blocks) < resolved.blocks:
        raise InvalidOptionError(f"blocks {resolved.blocks}: {len(blocks)} blocks", "blocks")
    taps = [block.output for block in blocks[-resolved.blocks :]]
    outputs = _call(encoder, taps, images)
    pooled = [
        TokenPool(resolved.pooling, 1, True, name=f"featcache_pool_{i}")(encoder.layer_norm(x))
        for i, x in enumerate(outputs)
    ]
    return keras.layers.Concatenate(dtype="float32", name="featcache_blocks")(pooled)


def _siglip(backbone: Any, resolved: FeatureSettings, images: Any) -> Any:
    encoder = backbone.vision_encoder
    _no_blocks(resolved, "siglip")
    if resolved.projection:
        out = _apply(encoder, images)
        return keras.layers.Activation("linear", dtype="float32", name="featcache_float32")(out)
    if "cls" in resolved.pooling:
        raise InvalidOptionError(
            f"pooling {resolved.pooling!r}: SigLIP has no class token; use mean, or projection "
            "for its attention-pooling head",
            "pooling",
        )
    tokens = _call(encoder, encoder.post_layer_norm.output, images)
    return _pool(tokens, resolved, 0, False)


def _feature_map(backbone: Any, resolved: FeatureSettings, images: Any) -> Any:
    """CNN presets: global average or max pooling of the last feature map, as today."""
    _no_blocks(resolved, spec_name=backbone.name)
    out = _apply(backbone, images)
    if isinstance(out, dict) or len(out.shape) != 4:
        shape = "several outputs" if isinstance(out, dict) else f"output {tuple(out.shape)}"
        raise InvalidOptionError(
            f"backbone {resolved.backbone}: {type(backbone).__name__} gives {shape}, not a "
            "feature map; featcache pools DINOv2/v3, ViT, CLIP, SigLIP and CNN backbones only",
            "backbone",
        )
    if resolved.pooling == "none":
        return keras.layers.Flatten(dtype="float32", name="featcache_flatten")(out)
    layer = (
        keras.layers.GlobalAveragePooling2D
        if resolved.pooling == "avg"
        else keras.layers.GlobalMaxPooling2D
    )
    return layer(dtype="float32", name=f"featcache_{resolved.pooling}_pool")(out)


def _apply(model: Any, images: Any) -> Any:
    """``model`` (a keras-hub backbone or encoder, saved whole in exports) on ``images``."""
    if isinstance(model.input, dict):  # "images", or DINOv3's "pixel_values"
        return model({next(iter(model.input)): images})
    return model(images)


def _call(model: Any, outputs: Any, images: Any) -> Any:
    """``outputs`` (tensors of ``model``'s graph) computed from ``images``."""
    single = not isinstance(outputs, list)
    tap = keras.Model(model.inputs, outputs if not single else [outputs])
    result = tap(images)
    if isinstance(result, dict):
        result = list(result.values())
    if not isinstance(result, list | tuple):
        result = [result]
    return result[0] if single else list(result)


def _pool(tokens: Any, resolved: FeatureSettings, skip: int, has_cls: bool) -> Any:
    mode = "mean" if resolved.pooling == "avg" else resolved.pooling
    if "cls" in mode and not has_cls:
        raise InvalidOptionError(f"pooling {mode!r}: this backbone has no class token", "pooling")
    return TokenPool(mode, skip, has_cls, name="featcache_token_pool")(tokens)


def _no_blocks(resolved: FeatureSettings, what: str = "", spec_name: str = "") -> None:
    if resolved.blocks != 1:
        raise InvalidOptionError(
            f"blocks {resolved.blocks}: {what or spec_name} gives its last block only", "blocks"
        )
