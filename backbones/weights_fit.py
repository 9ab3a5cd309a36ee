"""Which registered backbone a weights file was saved from, told by its kernels' shapes.

A weights file for another architecture makes Keras print a warning per layer and stop
with an error cut short. The shapes of a file's kernels (its float arrays with at least two
sides above 1: convolution and dense kernels) are the architecture's fingerprint: they do
not depend on the input size, the layers' names or the file's layout (Keras 3
``.weights.h5`` or the older ``.h5`` that ``keras.applications`` downloads).
:data:`FINGERPRINTS` holds every registered backbone's, without and with its ImageNet
classifier top; ``python -m featcache.backbones.weights_fit`` prints the table again from
the installed Keras (``tests/test_weights.py`` checks a few). Nothing here imports Keras.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

Shape = tuple[int, ...]

FINGERPRINTS: dict[str, tuple[str, str]] = {}
"""Registry name -> (fingerprint with ``include_top=False``, with the ImageNet top)."""


def is_kernel(shape: Sequence[int]) -> bool:
    """A convolution or dense kernel: at least two sides above 1 (biases, norms and
    per-channel statistics have one)."""
    return sum(1 for side in shape if side > 1) >= 2


def fingerprint(shapes: Iterable[Sequence[int]]) -> str:
    """16 hex digits naming the multiset of kernel shapes among ``shapes``."""
    kernels = sorted(tuple(int(side) for side in shape) for shape in shapes if is_kernel(shape))
    return hashlib.sha256(repr(kernels).encode()).hexdigest()[:16]


def kernel_count(shapes: Iterable[Sequence[int]]) -> int:
    return sum(1 for shape in shapes if is_kernel(shape))


def identify(shapes: Sequence[Sequence[int]]) -> tuple[str, bool] | None:
    """``(backbone, with_top)`` whose kernels ``shapes`` has, or ``None``."""
    digest = fingerprint(shapes)
    for name, (notop, top) in FINGERPRINTS.items():
        if digest == notop:
            return name, False
        if digest == top:
            return name, True
    return None


def misfit(shapes: Sequence[Sequence[int]], backbone: str, path: str) -> str | None:
    """``None`` when ``shapes`` (a weights file's arrays) fit ``backbone`` without its
    top, else one line saying so and what the file seems to be."""
    if backbone not in FINGERPRINTS:
        return None  # an architecture this table does not know: Keras will tell
    found = identify(shapes)
    if found == (backbone, False):
        return None
    if found is None:
        seems = (
            f"its {kernel_count(shapes)} kernels match no registered backbone "
            "(saved from another architecture, or with other options?)"
        )
    elif found[0] == backbone:
        seems = (
            f"it holds {backbone} with its ImageNet classifier top; featcache needs the "
            "file without the top (include_top=False)"
        )
    else:
        top = " with its classifier top" if found[1] else ""
        seems = f"it seems to be {found[0]}{top}: try --backbone {found[0]}"
    return f"weights file {path} does not fit {backbone}: {seems}"


def model_kernels(model: Any) -> list[Shape]:
    """The shapes of a built Keras model's weights."""
    return [tuple(int(side) for side in weight.shape) for weight in model.weights]


def _table() -> dict[str, tuple[str, str]]:  # pragma: no cover - regenerates the data
    import keras

    from .registry import list_backbones

    table = {}
    for spec in list_backbones():
        build = spec.constructor()
        notop = fingerprint(model_kernels(build(include_top=False, weights=None)))
        top = fingerprint(model_kernels(build(include_top=True, weights=None)))
        table[spec.name] = (notop, top)
        keras.backend.clear_session()
        print(f'    "{spec.name}": ("{notop}", "{top}"),', flush=True)
    return table


if __name__ == "__main__":  # pragma: no cover
    _table()
