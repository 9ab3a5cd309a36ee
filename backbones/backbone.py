"""Building the frozen feature extractor: backbone + optional inner layer + pooling.

A :class:`FeatureExtractor` maps a batch of resized float32 RGB images (0-255) to
embeddings; the backbone's own ``preprocess_input`` runs inside it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import (
    DECODE_MODES,
    DEFAULT_DECODE,
    MAIN_TAP,
    NAMED_WEIGHTS,
    POOLING_MODES,
    PRECISIONS,
    RESIZE_MODES,
    TOKEN_POOLING,
    check_blocks,
    check_choice,
    check_seed,
    invalid,
    parse_image_size,
)
from ..core.progress import note
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import InvalidOptionError, WeightsError
from .hub import HUB_PREFIX, HubSpec, is_hub_backbone, parse_preprocessing
from .registry import REGISTRY, BackboneSpec, get_backbone
from .weights_files import check_imagenet

_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_BUILD_LOCK = threading.Lock()
"""Model building uses Keras's global random state (seeded for random weights): one at a time."""
_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
"""Keras dtype policy of each reduced ``precision`` (float32 variables, 16-bit compute)."""


def ensure_tensorflow_backend() -> None:
    """Select the TensorFlow backend of Keras (the decoder and the loops use TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" not in sys.modules:  # the CLI's first line while TensorFlow loads
        note("loading TensorFlow…")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise InvalidOptionError(
            f"featcache needs the TensorFlow backend of Keras, not {keras.backend.backend()!r} "
            "(unset KERAS_BACKEND)"
        )


_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Remembered per (path, inode, size, mtime), so a server resolving the same weights file
    for every request hashes it once; any change to the file hashes it again.
    """
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        known = _HASHES.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if len(_HASHES) > 256:
        _HASHES.clear()
    _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def is_model_file(backbone: str) -> bool:
    """True when ``backbone`` names a saved Keras model rather than a registry entry."""
    return backbone.lower().endswith(_MODEL_SUFFIXES) and backbone.lower() not in REGISTRY


def resolve_backbone(config: BackboneConfig) -> FeatureSettings:
    """Validate options and hash files, without building any model."""
    check_seed(config.seed)
    check_choice("pooling", config.pooling, POOLING_MODES)
    check_choice("resize", config.resize, RESIZE_MODES)
    check_choice("decode", config.decode or DEFAULT_DECODE, DECODE_MODES)
    check_choice("precision", config.precision, PRECISIONS)
    check_blocks(config.blocks)
    if is_hub_backbone(config.backbone):
        from .hub_resolve import resolve_hub

        return resolve_hub(config, file_sha256)
    for parameter, value, asked in (
        ("pooling", config.pooling, config.pooling in TOKEN_POOLING),
        ("blocks", config.blocks, config.blocks != 1),
        ("projection", config.projection, config.projection),
    ):
        if asked:
            raise invalid(
                parameter,
                value,
                f"only for keras-hub transformers ({config.backbone} gives a feature map: "
                "pooling avg, max, gem or none)",
            )
    spec: BackboneSpec | None = None
    backbone_sha = ""
    if is_model_file(config.backbone):
        model_path = Path(config.backbone).expanduser()
        if not model_path.is_file():
            raise InvalidOptionError(f"backbone {config.backbone}: no such model file", "backbone")
        backbone = str(model_path.resolve())
        backbone_sha = file_sha256(model_path)
    else:
        spec = get_backbone(config.backbone)
        backbone = spec.name
    weights, weights_sha = _resolve_weights(config.weights, spec is None)
    preprocessing = _resolve_preprocessing(config.preprocessing, spec)
    size = parse_image_size(config.image_size)
    if size is None and spec is not None:
        size = (spec.default_size, spec.default_size)
    if size is not None and spec is not None and min(size) < spec.min_size:
        raise InvalidOptionError(
            f"image_size {size[0]},{size[1]}: {spec.name} needs at least {spec.min_size} px",
            "image_size",
        )
    return FeatureSettings(
        backbone,
        backbone_sha,
        weights,
        weights_sha,
        size or (0, 0),
        config.resize,
        config.pooling,
        "" if config.layer in (None, MAIN_TAP) else config.layer,  # main: the last layer
        preprocessing,
        config.seed,
        precision=config.precision,
        decode=config.decode or DEFAULT_DECODE,
        spec=spec,
    )


def _resolve_weights(weights: str, saved_model: bool) -> tuple[str, str]:
    key = weights.strip()
    if key.lower() in NAMED_WEIGHTS:
        if saved_model:
            if key.lower() != "imagenet":
                raise InvalidOptionError(
                    "weights none: a saved-model backbone keeps its weights", "weights"
                )
            return "embedded", ""
        return ("none" if key.lower() == "random" else key.lower()), ""
    path = Path(key).expanduser()
    if not path.is_file():
        raise InvalidOptionError(
            f"weights {weights}: expected imagenet, none or a weights file", "weights"
        )
    return str(path.resolve()), file_sha256(path)


def _resolve_preprocessing(preprocessing: str, spec: BackboneSpec | None) -> str:
    key = preprocessing.strip().lower()
    if key == "auto":
        return spec.preprocessing if spec is not None else "none"
    if key == "none":
        return "none"
    for known in REGISTRY.values():  # the dotted name a cache records
        if key == known.preprocessing:
            return known.preprocessing
    return get_backbone(key).preprocessing


def preprocess_function(name: str) -> Callable[[Any], Any]:
    """The ``preprocess_input`` a cache names (``keras.applications.X.preprocess_input``),
    or a keras-hub image converter's ``hub:scale=...;offset=...``."""
    if name == "none":
        return lambda x: x
    if name.startswith(HUB_PREFIX):
        scale, offset = parse_preprocessing(name)
        return lambda x: x * scale + offset
    module = name.rsplit(".", 1)[0].split(".", 2)[2]
    matches = [spec for spec in REGISTRY.values() if spec.module == module]
    if not matches:
        raise InvalidOptionError(f"preprocessing {name!r}: unknown", "preprocessing")
    return matches[0].preprocess_input()


def check_taps(resolved: FeatureSettings, taps: tuple[str, ...]) -> None:
    """Refuse taps the backbone cannot give (before any model loads)."""
    if taps and isinstance(resolved.spec, HubSpec):
        raise InvalidOptionError(
            f"taps: {resolved.backbone} is a keras-hub transformer; taps are for "
            "keras.applications and saved models (transformers: blocks concatenates the "
            "last blocks)",
            "taps",
        )
    if taps and "+" in resolved.layer:
        raise InvalidOptionError(
            f"taps: the features are layers side by side ({resolved.layer}); taps need "
            "features of one layer",
            "taps",
        )


def load_base(resolved: FeatureSettings) -> Any:
    """The whole backbone (for a keras-hub CLIP or SigLIP: both towers) built as
    :class:`FeatureExtractor` builds it: the same weights, or the same seeded random ones."""
    ensure_tensorflow_backend()
    import keras

    with _BUILD_LOCK:
        return FeatureExtractor._load_base(resolved, keras)


class FeatureExtractor:
    """Frozen backbone that embeds batches of resized float32 images (0-255 RGB).

    With ``taps`` (``("auto",)`` or layer names) one model gives the features and each
    tap's pooled features, concatenated in one row (one forward pass):
    :attr:`tap_layout` says which layers and widths follow the first
    :attr:`feature_dim` columns, :meth:`split` separates them.
    """

    def __init__(self, resolved: FeatureSettings, taps: tuple[str, ...] = ()) -> None:
        check_taps(resolved, taps)
        ensure_tensorflow_backend()
        import keras
        import tensorflow as tf

        self.resolved = resolved
        with _BUILD_LOCK:
            base = self._load_base(resolved, keras)
        base.trainable = False
        if resolved.spec is None:
            shape = tuple(base.inputs[0].shape[1:3])
            if resolved.image_size == (0, 0):
                if None in shape:
                    raise InvalidOptionError(
                        "image_size: the saved model accepts any input size; give one",
                        "image_size",
                    )
                resolved = replace(resolved, image_size=shape)
            elif None not in shape and shape != resolved.image_size:
                raise InvalidOptionError(
                    f"image_size {resolved.image_size[0]},{resolved.image_size[1]}: the saved "
                    f"model takes {shape[0]}x{shape[1]} images",
                    "image_size",
                )
        if isinstance(resolved.spec, HubSpec):
            from .hub_model import hub_feature_model

            self.model = hub_feature_model(base, resolved, resolved.spec)
        else:
            self.model = _layers_model(base, resolved.layer, resolved.pooling, keras)
        if len(self.model.output.shape) != 2 or self.model.output.shape[1] is None:
            raise InvalidOptionError(
                f"features of shape {tuple(self.model.output.shape)} are not (N, D)"
            )
        self.feature_dim = int(self.model.output.shape[1])
        self.tap_layout: tuple[tuple[str, int], ...] = ()
        """``(layer, width)`` of each tap, in the order its columns follow the features."""
        if taps:
            self.model, self.tap_layout = _with_taps(
                base, self.model, taps, resolved.layer, resolved.pooling, keras
            )
        self.resolved = replace(resolved, feature_dim=self.feature_dim)
        preprocess = preprocess_function(resolved.preprocessing)
        height, width = resolved.image_size
        model = self.model

        @tf.function(
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
            reduce_retracing=True,
        )
        def embed(images: Any) -> Any:
            return model(preprocess(images), training=False)

        embed.get_concrete_function()  # trace now, so that loading time includes it
        self._embed = embed
        self._pixel_functions: dict[bool, Any] = {}
        self.trace_seconds = 0.0
        """Time spent tracing the uint8 graphs of :meth:`embed_pixels` (on first use)."""

    @staticmethod
    def _load_base(resolved: FeatureSettings, keras: Any) -> Any:
        """The backbone, built under ``resolved.precision``'s dtype policy (the caller holds
        ``_BUILD_LOCK``; Keras keeps the policy per thread, and it is restored here)."""
        policy = _POLICIES.get(resolved.precision)
        if policy is None:
            return FeatureExtractor._build_base(resolved, keras)
        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            base = FeatureExtractor._build_base(resolved, keras)
            if resolved.spec is None:  # a saved model's layers keep the dtype they were saved with
                base = _with_policy(base, policy, resolved.precision, keras)
            return base
        finally:
            keras.config.set_dtype_policy(before)

    @staticmethod
    def _build_base(resolved: FeatureSettings, keras: Any) -> Any:
        if resolved.weights == "none":
            keras.utils.set_random_seed(resolved.seed)
        if isinstance(resolved.spec, HubSpec):
            from .hub_model import build_hub_backbone

            return build_hub_backbone(resolved, resolved.spec)
        if resolved.spec is None:
            try:
                model = keras.models.load_model(resolved.backbone, compile=False)
            except Exception as exc:  # noqa: BLE001 - Keras raises many kinds here
                raise WeightsError(f"could not load model {resolved.backbone}: {exc}") from None
            if resolved.weights != "embedded":
                _load_weights(model, resolved.weights)
            return model
        spec = resolved.spec
        weights: str | None = resolved.weights
        if weights == "none":
            weights = None
        height, width = resolved.image_size
        if weights == "imagenet":  # offline and not in Keras's cache: one line, no download
            check_imagenet(spec, resolved.image_size)
        try:
            with warnings.catch_warnings():  # one per layer for a file that does not fit
                warnings.simplefilter("ignore", UserWarning)
                return spec.constructor()(
                    include_top=False,
                    weights=weights,
                    input_shape=(height, width, 3),
                    pooling=None,
                )
        except Exception as exc:  # noqa: BLE001 - download and load errors vary
            message = _first_sentence(exc)
            if weights == "imagenet":
                raise WeightsError(
                    f"could not build {spec.name} with ImageNet weights ({message}); "
                    "offline, give the path of a weights file as weights (--weights PATH), or none"
                ) from None
            raise WeightsError(
                f"could not load {resolved.weights} into {spec.name}: {message}"
            ) from None

    def split(self, wide: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows of this model's output as ``(features, {layer: tap features})``."""
        taps: dict[str, np.ndarray] = {}
        start = self.feature_dim
        for layer, width in self.tap_layout:
            taps[layer] = wide[:, start : start + width]
            start += width
        return wide[:, : self.feature_dim], taps

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed ``(N, H, W, 3)`` float32 images; returns ``(N, D)`` float32 (with taps:
        the features, then each tap's; :meth:`split`)."""
        return np.asarray(self._embed(images), dtype=np.float32)

    def embed_pixels(self, images: np.ndarray) -> np.ndarray:
        """Embed a batch of decoded images: uint8 ``(N, h, w, 3)`` of any one size are
        resized (with the settings' resize mode), cast and preprocessed inside the graph;
        float32 images must already have the model's size. Returns ``(N, D)`` float32.

        The same features as resizing each image with
        :func:`~featcache.extractor.decode.resize_image` first, at a quarter of the memory
        traffic and without one eager TensorFlow call per image.
        """
        if images.dtype != np.uint8:
            return self(images)
        same_size = tuple(images.shape[1:3]) == self.resolved.image_size
        function = self._pixel_functions.get(same_size)
        if function is None:
            began = time.monotonic()
            function = self._pixel_function(same_size)
            self._pixel_functions[same_size] = function
            self.trace_seconds += time.monotonic() - began
        return np.asarray(function(images), dtype=np.float32)

    def _pixel_function(self, same_size: bool) -> Any:
        """The traced uint8 graph: cast (or resize) -> preprocess -> model."""
        import tensorflow as tf

        from .resize import resize_batch

        height, width = self.resolved.image_size
        mode, decode = self.resolved.resize, self.resolved.decode
        preprocess = preprocess_function(self.resolved.preprocessing)
        model = self.model
        shape = [None, height, width, 3] if same_size else [None, None, None, 3]

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
        def embed(images: Any) -> Any:
            if same_size:
                pixels = tf.cast(images, tf.float32)
            else:
                pixels = resize_batch(images, height, width, mode, decode)
            return model(preprocess(pixels), training=False)

        embed.get_concrete_function()
        return embed


def _load_weights(model: Any, path: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(path)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"could not load weights {path}: {_first_sentence(exc)}") from None


def _first_sentence(exc: BaseException) -> str:
    """The start of an exception's message on one line: its first line, and the next one
    too when the first ends with a colon (Keras's "... for object <Conv2D ...>:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text


def _with_policy(model: Any, policy: str, precision: str, keras: Any) -> Any:
    """A copy of a saved model whose float32 layers compute under ``policy``, with its weights."""

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if getattr(layer.dtype_policy, "name", "") == "float32":
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
        copy.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - subclassed models and custom layers vary
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidOptionError(
            f"precision {precision!r}: could not rebuild saved model {model.name} under "
            f"{policy} ({text}); use precision float32",
            "precision",
        ) from None
    return copy


def _layers_model(base: Any, layer: str, pooling: str, keras: Any) -> Any:
    """Images -> the pooled output of ``layer`` (empty: the backbone's own), or of several
    layers side by side (``a+b``, :data:`~featcache.core.options.MAIN_TAP` for the
    backbone's own output), concatenated in that order: what a head trained on taps side
    by side (``train-head --tap a+b``) reads."""
    parts = [part.strip() for part in layer.split("+")] if "+" in layer else [layer]
    outputs = []
    for index, part in enumerate(parts):
        tapped = _tap_layer(base, "" if part == MAIN_TAP else part, keras)
        suffix = f"_side{index}" if len(parts) > 1 else ""
        outputs.append(_pool(tapped.output, pooling, keras, suffix=suffix))
    if len(outputs) == 1:
        return keras.Model(base.inputs, outputs[0], name=f"featcache_{base.name}")
    if any(len(out.shape) != 2 for out in outputs):
        raise InvalidOptionError(f"layer {layer!r}: a layer gives no (N, D) features", "layer")
    joined = keras.layers.Concatenate(axis=-1, dtype="float32", name="featcache_side_by_side")
    return keras.Model(base.inputs, joined(outputs), name=f"featcache_{base.name}")


def _tap_layer(base: Any, layer: str, keras: Any, parameter: str = "layer") -> Any:
    if not layer:
        return base
    if "+" in layer:
        raise InvalidOptionError(
            f"{parameter} {layer!r}: one layer per tap (taps side by side are a+b in "
            "train-head --tap, not in --taps)",
            parameter,
        )
    names = [each.name for each in base.layers]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"{len(names)} layers exist"
        raise InvalidOptionError(
            f"{parameter} {layer!r}: no such layer in {base.name}; {hint}", parameter
        )
    return keras.Model(base.inputs, base.get_layer(layer).output)


_NOT_STAGES = ("ZeroPadding2D", "Dropout", "InputLayer", "Rescaling", "Normalization")
"""Layers that never end a stage (padding makes a map larger just before it shrinks)."""


def auto_taps(base: Any, last: str = "", count: int = 4) -> list[str]:
    """The layer ending each stage of a CNN (the last layer whose feature map has a
    given size), the last ``count`` stages before the one ``last`` (else the output) is in;
    every stage when the network has fewer."""
    end = base.get_layer(last).output if last else base.output
    final = tuple(end.shape[1:3]) if len(end.shape) == 4 else None
    stages: dict[tuple[int, int], str] = {}
    first = tuple(base.inputs[0].shape[1:3])
    for layer in base.layers:
        if type(layer).__name__ in _NOT_STAGES:
            continue
        output = getattr(layer, "output", None)
        shape = getattr(output, "shape", None)
        if shape is None or len(shape) != 4 or None in tuple(shape[1:3]):
            continue
        size = (int(shape[1]), int(shape[2]))
        if size == first:
            continue  # the stem at input resolution
        stages.pop(size, None)  # keep the sizes in the order their stages end
        stages[size] = layer.name
        if layer.name == last:
            break
    names = [name for size, name in stages.items() if size != final]
    return names[-count:]


def _with_taps(
    base: Any, model: Any, taps: tuple[str, ...], last: str, pooling: str, keras: Any
) -> tuple[Any, tuple[tuple[str, int], ...]]:
    """``model`` (image -> pooled features) with each tap's pooled output concatenated
    after its features, and the taps' ``(layer, width)``."""
    from ..core.options import AUTO_TAPS, MAX_AUTO_TAPS

    layers = list(auto_taps(base, last, MAX_AUTO_TAPS)) if taps == (AUTO_TAPS,) else list(taps)
    if not layers:
        raise InvalidOptionError(f"taps auto: {base.name} has no stage before its last", "taps")
    outputs = [model.output]
    for index, layer in enumerate(layers):
        tapped = _tap_layer(base, layer, keras, "taps")
        pooled = _pool(tapped.output, pooling, keras, suffix=f"_tap{index}")
        if len(pooled.shape) != 2:
            raise InvalidOptionError(f"taps {layer!r}: gives no (N, D) features", "taps")
        outputs.append(pooled)
    joined = keras.layers.Concatenate(axis=-1, dtype="float32", name="featcache_taps")(outputs)
    layout = tuple((layer, int(out.shape[1])) for layer, out in zip(layers, outputs[1:]))
    return keras.Model(model.inputs, joined, name=f"{model.name}_taps"), layout


def _pool(output: Any, pooling: str, keras: Any, suffix: str = "") -> Any:
    """Pooled features, as float32 whatever the backbone's precision (these layers are made
    with the float32 dtype policy and cast their input)."""
    rank = len(output.shape)
    if rank == 2:
        if output.dtype == "float32":
            return output
        return keras.layers.Activation(
            "linear", dtype="float32", name=f"featcache_float32{suffix}"
        )(output)
    if pooling == "none":
        return keras.layers.Flatten(dtype="float32", name=f"featcache_flatten{suffix}")(output)
    if pooling == "gem" and rank in (3, 4):
        from .pool_layers import GeMPool

        return GeMPool(name=f"featcache_gem_pool{suffix}")(output)
    if rank == 4:
        layer = (
            keras.layers.GlobalAveragePooling2D
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D
        )
        return layer(dtype="float32", name=f"featcache_{pooling}_pool{suffix}")(output)
    if rank == 3:
        layer = (
            keras.layers.GlobalAveragePooling1D
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling1D
        )
        return layer(dtype="float32", name=f"featcache_{pooling}_pool{suffix}")(output)
    return keras.layers.Flatten(dtype="float32", name=f"featcache_flatten{suffix}")(output)
