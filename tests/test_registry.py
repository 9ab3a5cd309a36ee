"""Every registry entry builds with random weights at a small size (one test per entry)."""

import numpy as np
import pytest

from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone
from featcache.backbones.registry import REGISTRY, get_backbone, list_backbones
from featcache.errors import InvalidOptionError, UnknownBackboneError


def test_registry_covers_every_keras_application():
    import keras

    constructors = {n for n in dir(keras.applications) if n[0].isupper()}
    assert {spec.class_name for spec in list_backbones()} == constructors
    assert all(spec.name == spec.name.lower() for spec in list_backbones())


def test_lookup_is_forgiving_and_unknown_names_list_close_matches():
    assert get_backbone("MobileNet-V2").name == "mobilenet_v2"
    assert get_backbone("EfficientNetB3").name == "efficientnet_b3"
    with pytest.raises(UnknownBackboneError, match=r"did you mean .*resnet50"):
        get_backbone("resnet5")


def test_too_small_input_is_refused():
    with pytest.raises(InvalidOptionError, match="at least 75 px"):
        resolve_backbone(BackboneConfig("inception_v3", "none", 32))


FAMILIES = {spec.module: name for name, spec in reversed(REGISTRY.items())}
"""The first (smallest) entry of each ``keras.applications`` module."""


@pytest.mark.parametrize("name", sorted(FAMILIES.values()))
def test_each_family_embeds_through_the_feature_extractor(name):
    import keras

    keras.backend.clear_session()
    spec = REGISTRY[name]
    extractor = FeatureExtractor(resolve_backbone(BackboneConfig(name, "none", spec.min_size)))
    features = extractor(np.full((1, spec.min_size, spec.min_size, 3), 127.0, np.float32))
    assert features.shape == (1, spec.feature_dim)
    assert extractor.feature_dim == spec.feature_dim
    assert np.isfinite(features).all()


@pytest.mark.parametrize("name", [name for name in REGISTRY if name not in FAMILIES.values()])
def test_entry_builds_and_gives_documented_dimension(name):
    # The rest of each family: same code path, so building the Keras model is enough
    # (the traced forward pass would double the time of the largest ones). Built in a
    # StatelessScope that leaves the variables uninitialized: the layers and shapes are
    # real, the random initial values are never drawn.
    import keras

    keras.backend.clear_session()
    spec = REGISTRY[name]
    with keras.StatelessScope(initialize_variables=False):
        model = spec.constructor()(
            include_top=False,
            weights=None,
            input_shape=(spec.min_size, spec.min_size, 3),
            pooling="avg",
        )
    assert model.output_shape == (None, spec.feature_dim)
