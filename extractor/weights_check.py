"""Checks on a backbone's weights that run before TensorFlow loads: one line instead of a
download attempt offline or a wall of Keras warnings for a file of another architecture."""

from __future__ import annotations

from ..backbones.registry import BackboneSpec
from ..backbones.weights_files import check_imagenet
from ..backbones.weights_fit import identify, kernel_count, misfit
from ..core.settings import FeatureSettings
from ..errors import WeightsError
from ..store.weights_file import weight_shapes


def check_weights(settings: FeatureSettings) -> None:
    """Raise :class:`WeightsError` in one line when ``settings``' weights cannot work:
    ImageNet weights Keras would have to download with the internet out of reach, or a
    weights file whose arrays are not those of the backbone. Saved models and keras-hub
    presets are left to their loaders."""
    spec = settings.spec
    if not isinstance(spec, BackboneSpec):
        return
    if settings.weights == "imagenet":
        check_imagenet(spec, settings.image_size)
    elif settings.weights_sha256:  # a weights file
        message = misfit(weight_shapes(settings.weights), spec.name, settings.weights)
        if message is not None:
            raise WeightsError(message)


def describe_weights_file(path: str) -> str:
    """What the weights file at ``path`` was saved from, in words (``featcache weights
    FILE``): the registered backbone(s) whose arrays it has, or that it matches none."""
    shapes = weight_shapes(path)
    found = identify(shapes)
    if not found:
        return f"matches no registered backbone ({kernel_count(shapes)} kernels)"
    return " or ".join(
        f"{name} with its ImageNet classifier top" if top else f"{name}: use --backbone {name}"
        for name, top in found
    )
