"""Pooling layers of featcache's own, registered so that saved models load them by name
(imports Keras): :class:`GeMPool`, generalized-mean pooling of a feature map."""

from __future__ import annotations

from typing import Any

import keras

GEM_P = 3.0
"""The exponent of ``gem`` pooling (Radenović et al.: 3 suits retrieval and probes)."""
GEM_EPS = 1e-6
"""Feature-map values below this are raised to it before the power (GeM's clamp)."""


@keras.saving.register_keras_serializable(package="featcache")
class GeMPool(keras.layers.Layer):
    """``(N, ..., C)`` -> ``(N, C)`` float32: ``mean(max(x, eps) ** p) ** (1 / p)`` over the
    spatial axes (``p`` 1: average pooling; large ``p``: towards max pooling)."""

    def __init__(self, p: float = GEM_P, eps: float = GEM_EPS, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.p, self.eps = float(p), float(eps)

    def call(self, maps: Any) -> Any:
        values = keras.ops.maximum(keras.ops.cast(maps, "float32"), self.eps)
        axes = tuple(range(1, len(maps.shape) - 1))
        mean = keras.ops.mean(keras.ops.power(values, self.p), axis=axes)
        return keras.ops.power(mean, 1.0 / self.p)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "p": self.p, "eps": self.eps}
