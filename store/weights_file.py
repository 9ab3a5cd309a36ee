"""The array shapes in a Keras weights file (HDF5), read without loading Keras.

Both layouts are read: Keras 3 ``.weights.h5`` (``layers/NAME/vars/0``) and the older
``.h5`` that ``keras.applications`` downloads (``LAYER/LAYER/kernel:0``). Optimizer state
is skipped. :mod:`featcache.backbones.weights_fit` tells the architecture from them.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from ..errors import WeightsError


def weight_shapes(path: str | os.PathLike[str]) -> list[tuple[int, ...]]:
    """The shapes of the floating-point arrays in the weights file at ``path``.

    Raises :class:`WeightsError` when it is not an HDF5 file.
    """
    shapes: list[tuple[int, ...]] = []

    def visit(name: str, item: Any) -> None:
        if "optimizer_weights" in name.split("/"):
            return
        if isinstance(item, h5py.Dataset) and np.issubdtype(item.dtype, np.floating):
            shapes.append(tuple(int(side) for side in item.shape))

    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError as exc:
        reason = str(exc).split("(")[0].strip() or type(exc).__name__
        raise WeightsError(f"weights file {path}: not an HDF5 weights file ({reason})") from None
    return shapes
