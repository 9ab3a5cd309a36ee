"""Keras layers of featcache's end-to-end models, saved by name in ``.keras`` files.

``ResizeImages`` and ``Preprocess`` repeat exactly what ``extract`` does to an image before
the backbone, and ``ClassProbabilities`` turns a head's output into one probability per
class while carrying the class names, so that a saved model needs no side file.
Importing this module registers them; :func:`featcache.heads.endtoend.load_model` does so.
"""

from __future__ import annotations

from typing import Any

from ..backbones.backbone import ensure_tensorflow_backend

ensure_tensorflow_backend()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..backbones import hub_model, pool_layers  # noqa: E402 - TokenPool, GeMPool for saved models

del hub_model, pool_layers


@keras.saving.register_keras_serializable(package="featcache")
class ResizeImages(keras.layers.Layer):
    """0-255 images of any size to ``(height, width)`` float32, as ``extract --resize``
    and ``--decode`` (models saved before ``decode`` was recorded: ``exact``). For ``fast``,
    the box reduction stands in for a JPEG's reduced-scale decode (close, not equal: see
    :func:`featcache.backbones.resize.resize_batch`); images decoded by ``predict`` arrive
    already at the input size."""

    def __init__(
        self, height: int, width: int, mode: str = "stretch", decode: str = "exact", **kwargs: Any
    ) -> None:
        from ..core.options import DECODE_MODES, RESIZE_MODES, check_choice

        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)
        self.mode = check_choice("resize", mode, RESIZE_MODES)
        self.decode = check_choice("decode", decode, DECODE_MODES)

    def call(self, images: Any) -> Any:
        from ..backbones.resize import resize_batch  # the code extraction runs too

        return resize_batch(images, self.height, self.width, self.mode, self.decode)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.height, self.width, 3)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "height": self.height,
            "width": self.width,
            "mode": self.mode,
            "decode": self.decode,
        }


@keras.saving.register_keras_serializable(package="featcache")
class Preprocess(keras.layers.Layer):
    """A backbone's ``preprocess_input``, named as caches record it."""

    def __init__(self, function: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..backbones.backbone import preprocess_function

        self.function = function
        self._fn = preprocess_function(function)

    def call(self, images: Any) -> Any:
        return self._fn(images)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "function": self.function}


@keras.saving.register_keras_serializable(package="featcache")
class StorageRound(keras.layers.Layer):
    """Features rounded as a float16 cache stores them, so that a head sees what it learned on."""

    def __init__(self, storage: str = "float16", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.storage = storage

    def call(self, x: Any) -> Any:
        return tf.cast(tf.cast(x, self.storage), tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "storage": self.storage}


@keras.saving.register_keras_serializable(package="featcache")
class ClassProbabilities(keras.layers.Layer):
    """A head's output as one probability per class in ``classes`` (label indices).

    ``output``: ``softmax`` (already probabilities), ``logits`` (softmax applied here),
    ``sigmoid`` or ``sigmoid-logits`` (one unit for two classes), ``ovr-logits`` (one-vs-rest
    logistic regression: sigmoids normalised to sum to one), ``scores`` (the decision scores
    of a linear-svm or ridge head: their softmax, which ranks the classes as the head does
    but is not a probability; :attr:`probabilities` is False).
    """

    def __init__(
        self, output: str, classes: list[int], class_names: list[str], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.output_kind = output
        self.classes = [int(c) for c in classes]
        self.class_names = list(class_names)

    def call(self, x: Any) -> Any:
        if self.output_kind in ("sigmoid", "sigmoid-logits"):
            p = tf.sigmoid(x) if self.output_kind == "sigmoid-logits" else x
            return tf.concat([1.0 - p, p], axis=-1)
        if self.output_kind in ("logits", "scores"):
            return tf.nn.softmax(x, axis=-1)
        if self.output_kind == "ovr-logits":
            p = tf.sigmoid(x)
            return p / tf.reduce_sum(p, axis=-1, keepdims=True)
        return x

    @property
    def probabilities(self) -> bool:
        """False when the outputs rank classes without being probabilities (``scores``)."""
        return self.output_kind != "scores"

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], len(self.classes))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "output": self.output_kind,
            "classes": self.classes,
            "class_names": self.class_names,
        }
