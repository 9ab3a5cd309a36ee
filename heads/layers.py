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
from .options import VIEW_GROUPS, view_count  # noqa: E402

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


@keras.saving.register_keras_serializable(package="featcache")
class TestViews(keras.layers.Layer):
    """Square images ``(N, S, S, 3)`` -> their views ``(V * N, S, S, 3)``, view-major: each
    quarter turn of ``group`` (``mirror``: none), each also mirrored left-right when the
    group mirrors. :class:`ViewAverage` undoes the stacking after the head."""

    def __init__(self, group: str = "all", **kwargs: Any) -> None:
        from ..core.options import check_choice

        super().__init__(**kwargs)
        self.group = check_choice("test_views", group, tuple(VIEW_GROUPS))

    def call(self, images: Any) -> Any:
        turns, mirror = VIEW_GROUPS[self.group]
        views = []
        for k in range(turns):
            turned = tf.image.rot90(images, k) if k else images
            views.append(turned)
            if mirror:
                views.append(tf.reverse(turned, axis=[2]))
        return tf.concat(views, axis=0)

    @property
    def views(self) -> int:
        """Copies of each image made (2, 4 or 8)."""
        return view_count(self.group)

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch = input_shape[0]
        count = view_count(self.group)
        return (None if batch is None else batch * count, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "group": self.group}


@keras.saving.register_keras_serializable(package="featcache")
class ViewAverage(keras.layers.Layer):
    """``(V * N, K)`` probabilities of :class:`TestViews`' stacked views -> ``(N, K)``:
    their mean over the ``V`` views of each image."""

    def __init__(self, views: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, x: Any) -> Any:
        stacked = tf.reshape(x, (self.views, -1, tf.shape(x)[-1]))
        return tf.reduce_mean(stacked, axis=0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch = input_shape[0]
        return (None if batch is None else batch // self.views, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "views": self.views}
