"""Which backbone layers fine-tuning counts and thaws, and the augmentation layers of the
``fixed`` schedule."""

from __future__ import annotations

from typing import Any

from ..core.options import invalid
from .options import DEFAULT_SEED, FINE_TUNE_UNFREEZE, parse_augment, parse_unfreeze


def augmentation_layers(names: str, seed: int = DEFAULT_SEED) -> list[Any]:
    """Keras preprocessing layers for ``flip,rotate,zoom,contrast,translate``."""
    chosen = parse_augment(names)
    import keras

    make = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"),
        "rotate": lambda: keras.layers.RandomRotation(0.05, seed=seed, name="aug_rotate"),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed, name="aug_zoom"),
        "contrast": lambda: keras.layers.RandomContrast(
            0.1, value_range=(0, 255), seed=seed, name="aug_contrast"
        ),
        "translate": lambda: keras.layers.RandomTranslation(
            0.1, 0.1, seed=seed, name="aug_translate"
        ),
    }
    return [make[n]() for n in chosen]


def unfreeze_layers(
    backbone: Any, unfreeze: str | int = FINE_TUNE_UNFREEZE, unfreeze_from: str | None = None
) -> list[str]:
    """Make the top of ``backbone`` trainable; BatchNormalization and LayerNormalization
    layers stay frozen (they count in ``unfreeze`` all the same).

    ``unfreeze``: a number of top layers or ``all``; ``unfreeze_from``: a layer name from
    which on every layer is unfrozen. Returns the names of the layers made trainable.
    """
    return [layer.name for layer in unfreeze_units(backbone, unfreeze, unfreeze_from)]


def unfreeze_units(
    backbone: Any, unfreeze: str | int = FINE_TUNE_UNFREEZE, unfreeze_from: str | None = None
) -> list[Any]:
    """:func:`unfreeze_layers`, returning the layers made trainable (with weights, bottom to
    top) themselves: names can repeat across the blocks of nested (keras-hub) models."""
    import keras

    frozen = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    layers = backbone_units(backbone)
    count = parse_unfreeze(unfreeze)
    if unfreeze_from is not None:
        names = [layer.name for layer in layers]
        if unfreeze_from not in names:
            raise invalid("unfreeze_from", unfreeze_from, "no such backbone layer")
        start = names.index(unfreeze_from)
    elif count is None:  # all
        start = 0
    else:
        start = max(0, len(layers) - count)  # more than there are: all of them
    backbone.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    for inner in backbone._flatten_layers(include_self=False):  # every norm, blocks' too
        if isinstance(inner, frozen):
            inner.trainable = False
    return [layer for i, layer in enumerate(layers) if i >= start and layer.trainable_weights]


def backbone_units(backbone: Any) -> list[Any]:
    """The backbone's layers as ``unfreeze`` counts them, bottom to top (not the input or
    featcache's pooling)."""
    import keras

    return [
        layer
        for layer in _units(backbone, keras)
        if not isinstance(layer, keras.layers.InputLayer)
        and not layer.name.startswith("featcache_")
    ]


def _units(model: Any, keras: Any) -> list[Any]:
    """The layers fine-tuning counts, in order: keras-hub models inside the extractor are
    opened, and a transformer encoder counts as its blocks, so that ``unfreeze N`` counts
    transformer blocks (and the final norm) rather than whole backbones."""
    out: list[Any] = []
    for layer in model.layers:
        hub = type(layer).__module__.startswith("keras_hub")
        if isinstance(layer, keras.Model) and (hub or _holds_hub(layer)):
            out.extend(_units(layer, keras))
            continue
        blocks = getattr(layer, "encoder_layers", None) or (
            layer.layers if type(layer).__name__.endswith("Encoder") else None
        )
        out.extend(blocks if blocks else [layer])
    return out


def _holds_hub(model: Any) -> bool:
    """True for a plain functional model made of keras-hub layers (featcache's taps)."""
    return any(type(layer).__module__.startswith("keras_hub") for layer in model.layers)


def set_trainable(backbone: Any, units: list[Any], allowed: list[Any], count: int) -> None:
    """Train the top ``count`` of ``allowed`` (backbone layers with weights, bottom to top)
    and freeze every other unit of ``units`` (the backbone's layers as fine-tuning counts
    them); normalization layers stay frozen."""
    import keras

    chosen = {id(layer) for layer in allowed[len(allowed) - count :]} if count else set()
    backbone.trainable = True  # containers stay trainable: units nested in them can train
    for layer in units:
        layer.trainable = id(layer) in chosen
    frozen = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    for inner in backbone._flatten_layers(include_self=False):
        if isinstance(inner, frozen):
            inner.trainable = False
