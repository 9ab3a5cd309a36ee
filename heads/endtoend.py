"""One Keras model from images to class probabilities: resize, preprocessing, the backbone
exactly as the cache records it, and a trained head. ``export`` saves it; ``fine-tune``
trains it further."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backbones.backbone import FeatureExtractor
from ..backbones.rebuild import rebuild_backbone
from ..core.files import check_new_output, fresh_file, publish
from ..core.options import check_choice, invalid
from ..core.views import TEST_VIEWS_LAYER, views_per_image
from ..errors import CacheError, InvalidOptionError
from .options import (
    DEFAULT_EXPORT_FORMAT,
    EXPORT_FORMATS,
    EXPORT_TEST_VIEWS,
    ZERO_SHOT,
    view_count,
)
from .runs import check_head

if TYPE_CHECKING:  # heads.train loads scikit-learn: not before a refusal is decided
    from .train import TrainedHead

__all__ = [
    "EXPORT_FORMATS",
    "EndToEnd",
    "build",
    "check_head",
    "export",
    "load_model",
    "predictor",
    "test_views_of",
    "with_test_views",
]


@dataclass
class EndToEnd:
    """An end-to-end model and the parts fine-tuning needs."""

    model: Any
    """uint8 or 0-255 float images ``(N, H, W, 3)`` of any size -> probabilities (for
    ``linear-svm`` and ``ridge`` heads, a softmax of their decision scores)."""
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
    """The end-to-end model of a dense head run (``train-head --head dense``), of a linear
    scikit-learn head (logreg, linear-svm, ridge), which becomes one ``Dense`` layer
    (:mod:`featcache.heads.linear`), or of a ``zero-shot`` run (its class text embeddings
    as one ``Dense`` layer after unit normalisation: no text tower).

    ``augmentation`` layers go between resizing and preprocessing (active in training only).
    The backbone computes in the cache's precision unless ``precision`` says otherwise, and
    takes images of the cache's size unless ``image_size`` (a square side) says otherwise:
    the same weights at another size, which needs features whose width does not depend on
    the size (a global pooling). A trainable backbone (fine-tuning) needs a dense head.
    """
    from .linear import linear_form
    from .train import load_head

    check_head(run, "fine-tune" if trainable_backbone else "export")
    head = load_head(run)
    parts = _features(head, trainable_backbone, augmentation, precision, image_size)
    import keras

    from .layers import ClassProbabilities

    if head.kind == "dense":
        outputs, kind = head.estimator.model_(parts.features), _output_kind(head)
    elif head.kind == ZERO_SHOT:
        outputs, kind = _zero_shot_layers(head.estimator, parts.features), head.estimator.output
    else:
        form = linear_form(head.kind, head.estimator)
        # float64: the folded scaler's weights can be large; the sum stays as exact as
        # scikit-learn's own (it multiplies in float64 too)
        dense = keras.layers.Dense(len(form.bias), dtype="float64", name="linear_head")
        outputs, kind = dense(parts.features), form.output
        dense.set_weights([form.weights, form.bias])
    probabilities = ClassProbabilities(
        kind, head.classes.tolist(), head.class_names, name="class_probabilities"
    )(outputs)
    model = keras.Model(parts.inputs, probabilities, name="featcache_classifier")
    return EndToEnd(model, parts.backbone, head, parts.image_size)


def with_test_views(model: Any, group: str) -> Any:
    """``model`` (from :func:`build`, sharing its layers and weights) averaging its
    probabilities over each image's views of ``group`` (``mirror``, ``turns``, ``all``:
    :data:`featcache.heads.options.VIEW_GROUPS`), made after resizing: the backbone runs once
    per view. ``none``: ``model`` itself."""
    if group == "none":
        return model
    import keras

    from .layers import TestViews, ViewAverage

    resize = model.get_layer("resize")
    if group != "mirror" and resize.height != resize.width:
        raise invalid("test_views", group, "quarter turns need square images")

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        out = layer(*args, **kwargs)
        if layer.name == "resize":
            return TestViews(group, name=TEST_VIEWS_LAYER)(out)
        if layer.name == "class_probabilities":
            return ViewAverage(view_count(group), name="view_average")(out)
        return out

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def test_views_of(model: Any) -> str:
    """The view group a model averages over (:func:`with_test_views`); ``none`` for one."""
    try:
        return str(model.get_layer(TEST_VIEWS_LAYER).group)
    except ValueError:
        return "none"


def predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` as a function of a batch of images -> a float32 array. A model with test
    views (:func:`with_test_views`) takes a part of the batch at a time, so that its
    backbone sees about the batch asked for, not ``views`` times it (8 views of 32 images
    at 320 px would hold gigabytes of activations)."""
    views = views_per_image(model)

    def run(images: np.ndarray) -> np.ndarray:
        step = max(1, len(images) // views)
        parts = [
            np.asarray(model(images[start : start + step], training=False), np.float32)
            for start in range(0, max(len(images), 1), step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return run


def _zero_shot_layers(classifier: Any, features: Any) -> Any:
    """Features -> zero-shot logits: CLIP's image projection (for class tokens), unit norm,
    then one ``Dense`` of the class text embeddings times the scale, plus SigLIP's bias."""
    import keras

    x = features
    if classifier.projection is not None:
        project = keras.layers.Dense(
            classifier.projection.shape[1], use_bias=False, dtype="float32", name="projection"
        )
        x = project(x)
        project.set_weights([classifier.projection])
    x = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="unit_norm")(x)
    weights, bias = classifier.weights()
    dense = keras.layers.Dense(len(bias), dtype="float64", name="zero_shot_head")
    out = dense(x)
    dense.set_weights([weights, bias])
    return out


@dataclass
class _Parts:
    inputs: Any
    features: Any
    backbone: Any
    image_size: tuple[int, int]


def _features(
    head: TrainedHead,
    trainable_backbone: bool = False,
    augmentation: list[Any] | None = None,
    precision: str | None = None,
    image_size: int | None = None,
) -> _Parts:
    """Images -> the features ``head`` learned on: resize, preprocessing, backbone."""
    from . import layers  # registers the custom layers
    from .layers import Preprocess, ResizeImages, StorageRound

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
    return _Parts(inputs, features, backbone, (height, width))


def feature_model(head: TrainedHead) -> Any:
    """A Keras model from images (any size, 0-255) to the features ``head`` learned on:
    how ``predict`` runs a head that cannot be part of a Keras model (svm, knn, forest)."""
    import keras

    parts = _features(head)
    return keras.Model(parts.inputs, parts.features, name="featcache_features")


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
    overwrite: bool = False,
    test_views: str = "none",
) -> Path:
    """Save a head run as one model taking images (``.keras`` or a TF SavedModel folder).

    An existing ``output`` is refused before anything loads unless ``overwrite``; the model
    is written under a temporary name and moved into place, so a failed export leaves
    ``output`` as it was.

    A dense head, or a linear scikit-learn head (logreg, linear-svm, ridge) as one ``Dense``
    layer; an svm, knn or random-forest head is refused (before TensorFlow loads): it
    predicts on images with :func:`featcache.heads.images.predict_images` instead.
    ``test_views`` (``mirror``, ``turns``, ``all``): the model averages each image's views
    (:func:`with_test_views`), for images with no up; ``none``: one view.
    """
    check_choice("format", format, EXPORT_FORMATS)
    check_choice("test_views", test_views, EXPORT_TEST_VIEWS)
    out = Path(output)
    if format == "keras" and out.suffix != ".keras":
        raise invalid("output", str(out), "a Keras model file must end in .keras")
    if format == "keras":
        check_new_output(out, overwrite)
    elif os.path.lexists(out) and not overwrite:
        raise invalid("output", str(out), "exists; --overwrite replaces it, or -o names another")
    check_head(run, "export")
    model = with_test_views(build(run).model, test_views)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "keras":
        part = fresh_file(out.parent, f".{out.stem}.part-", ".keras")
        try:
            save(model, part, format)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        publish(part, out, overwrite)
    else:
        _save_folder(model, out, format)
    return out


def _save_folder(model: Any, out: Path, format: str) -> None:
    """A SavedModel written beside ``out`` then swapped in; the old folder goes last."""
    part = Path(tempfile.mkdtemp(prefix=f".{out.name}.part-", dir=out.parent))
    try:
        shutil.rmtree(part)
        save(model, part, format)
        old = None
        if os.path.lexists(out):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "model")
        os.replace(part, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(part, ignore_errors=True)


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
    if isinstance(model.input, list) and len(model.input) == 1:
        # fine-tune saved its models with a list of one input until issue 26: called with an
        # array (as predict and the server do), Keras warned on every batch
        output = model.output
        output = output[0] if isinstance(output, list) and len(output) == 1 else output
        model = keras.Model(model.input[0], output, name=model.name)
    return model, names, list(last.classes)


def _uses_keras_hub(path: Path) -> bool:
    """True when a ``.keras`` archive's config names keras-hub layers."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
