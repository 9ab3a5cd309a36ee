"""Registry of the ``keras.applications`` backbones: name -> spec.

The spec keeps everything a later step needs to rebuild the same feature
extractor: the constructor, the architecture's own ``preprocess_input``, the
default input size and the feature dimension after global pooling.
Nothing here imports TensorFlow; :meth:`BackboneSpec.constructor` does so lazily.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownBackboneError


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one ``keras.applications`` backbone."""

    name: str
    """Lower-case registry name, e.g. ``mobilenet_v2``."""
    class_name: str
    """Constructor name in ``keras.applications``, e.g. ``MobileNetV2``."""
    module: str
    """Submodule of ``keras.applications`` holding ``preprocess_input``."""
    default_size: int
    """Input size (square) the ImageNet weights were trained at."""
    feature_dim: int
    """Embedding width with ``avg`` or ``max`` pooling."""
    min_size: int = 32
    """Smallest input side the architecture accepts."""

    @property
    def preprocessing(self) -> str:
        """Dotted name of the preprocessing function, as stored in caches."""
        return f"keras.applications.{self.module}.preprocess_input"

    def constructor(self) -> Callable[..., Any]:
        """The ``keras.applications`` constructor (imports Keras)."""
        applications = importlib.import_module("keras.applications")
        return getattr(applications, self.class_name)

    def preprocess_input(self) -> Callable[[Any], Any]:
        """The architecture's own ``preprocess_input`` (imports Keras)."""
        module = importlib.import_module(f"keras.applications.{self.module}")
        return module.preprocess_input


_ENTRIES: list[BackboneSpec] = [
    BackboneSpec("vgg16", "VGG16", "vgg16", 224, 512),
    BackboneSpec("vgg19", "VGG19", "vgg19", 224, 512),
    BackboneSpec("resnet50", "ResNet50", "resnet", 224, 2048),
    BackboneSpec("resnet101", "ResNet101", "resnet", 224, 2048),
    BackboneSpec("resnet152", "ResNet152", "resnet", 224, 2048),
    BackboneSpec("resnet50_v2", "ResNet50V2", "resnet_v2", 224, 2048),
    BackboneSpec("resnet101_v2", "ResNet101V2", "resnet_v2", 224, 2048),
    BackboneSpec("resnet152_v2", "ResNet152V2", "resnet_v2", 224, 2048),
    BackboneSpec("inception_v3", "InceptionV3", "inception_v3", 299, 2048, min_size=75),
    BackboneSpec(
        "inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 1536, min_size=75
    ),
    BackboneSpec("xception", "Xception", "xception", 299, 2048, min_size=71),
    BackboneSpec("mobilenet", "MobileNet", "mobilenet", 224, 1024),
    BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 1280),
    BackboneSpec("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, 576),
    BackboneSpec("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 960),
    BackboneSpec("densenet121", "DenseNet121", "densenet", 224, 1024),
    BackboneSpec("densenet169", "DenseNet169", "densenet", 224, 1664),
    BackboneSpec("densenet201", "DenseNet201", "densenet", 224, 1920),
    BackboneSpec("nasnet_mobile", "NASNetMobile", "nasnet", 224, 1056),
    BackboneSpec("nasnet_large", "NASNetLarge", "nasnet", 331, 4032),
    BackboneSpec("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, 1280),
    BackboneSpec("efficientnet_b1", "EfficientNetB1", "efficientnet", 240, 1280),
    BackboneSpec("efficientnet_b2", "EfficientNetB2", "efficientnet", 260, 1408),
    BackboneSpec("efficientnet_b3", "EfficientNetB3", "efficientnet", 300, 1536),
    BackboneSpec("efficientnet_b4", "EfficientNetB4", "efficientnet", 380, 1792),
    BackboneSpec("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, 2048),
    BackboneSpec("efficientnet_b6", "EfficientNetB6", "efficientnet", 528, 2304),
    BackboneSpec("efficientnet_b7", "EfficientNetB7", "efficientnet", 600, 2560),
    BackboneSpec("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, 1280),
    BackboneSpec("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240, 1280),
    BackboneSpec("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260, 1408),
    BackboneSpec("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300, 1536),
    BackboneSpec("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, 1280),
    BackboneSpec("efficientnet_v2_m", "EfficientNetV2M", "efficientnet_v2", 480, 1280),
    BackboneSpec("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480, 1280),
    BackboneSpec("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 768),
    BackboneSpec("convnext_small", "ConvNeXtSmall", "convnext", 224, 768),
    BackboneSpec("convnext_base", "ConvNeXtBase", "convnext", 224, 1024),
    BackboneSpec("convnext_large", "ConvNeXtLarge", "convnext", 224, 1536),
    BackboneSpec("convnext_xlarge", "ConvNeXtXLarge", "convnext", 224, 2048),
]

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _ENTRIES}
"""Every known backbone, by registry name."""


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in registry order."""
    return list(_ENTRIES)


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name (case and ``-`` insensitive).

    Raises :class:`UnknownBackboneError` naming the closest known names.
    """
    key = name.strip().lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    aliases = {spec.class_name.lower(): spec for spec in _ENTRIES}
    if key.replace("_", "") in aliases:
        return aliases[key.replace("_", "")]
    close = difflib.get_close_matches(key, list(REGISTRY), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `featcache backbones`"
    raise UnknownBackboneError(f"unknown backbone {name!r}: {hint}")
