"""One Keras model from images to class probabilities: resize, preprocessing, the backbone
exactly as the cache records it, and a trained head. ``export`` saves it; ``fine-tune``
trains it further."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backbones.backbone import FeatureExtractor
from ..backbones.rebuild import rebuild_backbone
from ..core.options import check_choice, invalid
from ..errors import CacheError, InvalidOptionError
from .options import DEFAULT_EXPORT_FORMAT, EXPORT_FORMATS
from .train import TrainedHead, load_head

__all__ = ["EXPORT_FORMATS", "EndToEnd", "build", "export", "load_model"]


@dataclass
class EndToEnd:
    """An end-to-end model and the parts fine-tuning needs."""

    model: Any
    """uint8 or 0-255 float images ``(N, H, W, 3)`` of any size -> probabilities."""
    backbone: Any
    """The feature extractor inside (backbone, tapped layer, pooling)."""
    head: TrainedHead
    image_size: tuple[int, int]


def build(
    run: str | os.PathLike[str],
    trainable_backbone: bool = False,
    augmentation: list[Any] | None = None,
    precision: str | None = None,
    image_size: int | None = None,
) -> EndToEnd:
    """The end-to-end model of a dense head run (``train-head --head dense``).

    ``augmentation`` layers go between resizing and preprocessing (active in training only).
    The backbone computes in the cache's precision unless ``precision`` says otherwise, and
    takes images of the cache's size unless ``image_size`` (a square side) says otherwise:
    the same weights at another size, which needs features whose width does not depend on
    the size (a global pooling).
    """
    from . import layers  # registers the custom layers
    from .layers import ClassProbabilities, Preprocess, ResizeImages, StorageRound

    head = load_head(run)
    if head.kind != "dense":
        raise InvalidOptionError(
            f"{run}: a {head.kind} head is a scikit-learn model and cannot become part of a "
            "Keras model; train one with head 'dense'"
        )
    settings = head.meta["cache_settings"]
    extractor = rebuild_backbone(head.settings, precision)
    if image_size is not None and (image_size, image_size) != extractor.resolved.image_size:
        extractor = _resized(extractor, image_size)
    import keras

    del layers
    height, width = extractor.resolved.image_size
    inputs = keras.Input((None, None, 3), dtype="float32", name="image")
    resolved = extractor.resolved
    x = ResizeImages(height, width, resolved.resize, resolved.decode, name="resize")(inputs)
    for layer in augmentation or []:
        x = layer(x)
    x = Preprocess(extractor.resolved.preprocessing, name="preprocess")(x)
    backbone = extractor.model
    backbone.trainable = trainable_backbone
    features = backbone(x, training=False)  # BatchNormalization stays in inference mode
    if settings.get("dtype") == "float16":  # the head learned on float16-rounded features
        features = StorageRound("float16", name="float16_storage")(features)
    head_model = head.estimator.model_
    outputs = head_model(features)
    kind = _output_kind(head)
    probabilities = ClassProbabilities(
        kind, head.classes.tolist(), head.class_names, name="class_probabilities"
    )(outputs)
    model = keras.Model(inputs, probabilities, name="featcache_classifier")
    return EndToEnd(model, backbone, head, (height, width))


def _resized(extractor: FeatureExtractor, side: int) -> FeatureExtractor:
    """The same backbone (weights, layer, pooling) built for ``side`` x ``side`` images."""
    try:
        other = FeatureExtractor(replace(extractor.resolved, image_size=(side, side)))
    except InvalidOptionError as exc:
        raise invalid("image_size", side, str(exc).split(": ", 1)[-1]) from None
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise invalid("image_size", side, f"the backbone cannot take this size ({first})") from None
    if other.feature_dim != extractor.feature_dim:
        raise invalid(
            "image_size", side, f"the features would have {other.feature_dim} values instead "
            f"of {extractor.feature_dim} (pooling {extractor.resolved.pooling}); use a global "
            "pooling"
        )  # fmt: skip
    return other


def _output_kind(head: TrainedHead) -> str:
    binary = len(head.classes) == 2
    logits = bool(head.estimator.from_logits)
    if binary:
        return "sigmoid-logits" if logits else "sigmoid"
    return "logits" if logits else "softmax"


def export(
    run: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str = DEFAULT_EXPORT_FORMAT,
) -> Path:
    """Save a head run as one model taking images (``.keras`` or a TF SavedModel folder)."""
    check_choice("format", format, EXPORT_FORMATS)
    out = Path(output)
    if format == "keras" and out.suffix != ".keras":
        raise invalid("output", str(out), "a Keras model file must end in .keras")
    built = build(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(built.model, out, format)
    return out


def save(model: Any, out: Path, format: str = DEFAULT_EXPORT_FORMAT) -> None:
    """Write ``model`` as ``.keras`` or as a SavedModel (for TF Serving)."""
    if format == "keras":
        model.save(out)
    else:
        model.export(str(out), format="tf_saved_model")


def load_model(path: str | os.PathLike[str]) -> tuple[Any, list[str], list[int]]:
    """A model saved by ``export`` or ``fine-tune``: (model, class names, label indices).

    Loaded with Keras' ``safe_mode`` (no ``Lambda`` layers or other code from the file).
    """
    from ..backbones.backbone import ensure_tensorflow_backend

    ensure_tensorflow_backend()
    import keras

    from . import layers

    del layers
    path = Path(path)
    if not path.is_file() or path.suffix != ".keras":
        raise InvalidOptionError(f"{path}: expected a .keras model from export or fine-tune")
    if _uses_keras_hub(path):
        from ..backbones.hub import require_keras_hub

        require_keras_hub()  # registers keras-hub's layers for deserialization
    try:
        # safe_mode: no Lambda or other arbitrary code; featcache's own layers are registered
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds here
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CacheError(f"could not load {path}: {first}") from None
    try:
        last = model.get_layer("class_probabilities")
    except ValueError:
        raise InvalidOptionError(f"{path}: not a featcache classifier (no class names)") from None
    names = [last.class_names[c] for c in last.classes]
    return model, names, list(last.classes)


def _uses_keras_hub(path: Path) -> bool:
    """True when a ``.keras`` archive's config names keras-hub layers."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
