"""The one image resize of featcache, shared by extraction and exported models.

:func:`resize_batch` is plain TensorFlow that also works in a graph on images of any
(dynamic) size: the ``ResizeImages`` layer of an exported model calls it, and
extraction calls it through :func:`resize_one`, one image at a time. TensorFlow is
imported only when used.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .options import RESIZE_MODES, check_choice


def resize_batch(images: Any, height: Any, width: Any, mode: str = "stretch") -> Any:
    """Resize 0-255 images ``(N, H, W, C)`` to float32 ``(N, height, width, C)``, bilinear.

    ``stretch`` is ``tf.image.resize``; ``pad`` is ``tf.image.resize_with_pad``; ``crop``
    takes the largest centred crop with the target aspect ratio, then resizes (Keras
    ``smart_resize``, ``crop_to_aspect_ratio``). No antialiasing, as in Keras. ``height``
    and ``width`` are ints or integer scalar tensors. Raises ``InvalidOptionError`` for
    an unknown mode.
    """
    import tensorflow as tf

    check_choice("resize", mode, RESIZE_MODES)
    # no cast up front: the bilinear kernel reads any real dtype as float32 itself (the
    # same values), and a uint8 image is 4 times less memory to crop and read
    if mode == "pad":
        images = tf.image.resize_with_pad(images, height, width, method="bilinear")
    else:
        if mode == "crop":
            images = _crop_to_aspect_ratio(images, height, width)
        images = tf.image.resize(images, (height, width), method="bilinear")
    return tf.cast(images, tf.float32)


def _crop_to_aspect_ratio(images: Any, target_height: Any, target_width: Any) -> Any:
    """The largest centred crop of ``images`` with the aspect ratio of the target size.

    Exact integer arithmetic, on Python ints when every size is known (eager images: no
    extra TensorFlow ops) or on int64 tensors in a graph of unknown image size; both give
    the box Keras ``smart_resize`` computes in floating point, without its rounding on
    huge images.
    """
    import tensorflow as tf

    height, width = images.shape[1], images.shape[2]
    sizes = (height, width, target_height, target_width)
    if all(isinstance(v, (int, np.integer)) for v in sizes):
        height, width, target_height, target_width = (int(v) for v in sizes)
        crop_h = max(min(height, width * target_height // target_width), 1)
        crop_w = max(min(width, height * target_width // target_height), 1)
    else:
        shape = tf.shape(images, out_type=tf.int64)
        height, width = shape[1], shape[2]
        target_height = tf.cast(target_height, tf.int64)
        target_width = tf.cast(target_width, tf.int64)
        crop_h = tf.maximum(tf.minimum(height, width * target_height // target_width), 1)
        crop_w = tf.maximum(tf.minimum(width, height * target_width // target_height), 1)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[:, top : top + crop_h, left : left + crop_w, :]


def resize_one(pixels: np.ndarray, height: int, width: int, mode: str = "stretch") -> np.ndarray:
    """One ``(H, W, C)`` image through :func:`resize_batch`, as float32 ``(height, width, C)``.

    Stretch and crop run eagerly (one or two TensorFlow ops); pad runs as a graph traced
    once per target size and dtype, since ``tf.image.resize_with_pad`` is some twenty
    small ops that would cost about half a millisecond per image eagerly.
    """
    check_choice("resize", mode, RESIZE_MODES)
    height, width = int(height), int(width)
    if pixels.dtype != np.uint8:  # one traced graph per dtype: uint8 or float32
        pixels = np.asarray(pixels, dtype=np.float32)
    if mode == "pad":
        out = _traced_pad(pixels.dtype.name, height, width)(pixels[None])
    else:
        out = resize_batch(pixels[None], height, width, mode)
    return out.numpy()[0]


@functools.lru_cache(maxsize=16)
def _traced_pad(dtype: str, height: int, width: int) -> Any:
    """``resize_batch(..., mode="pad")`` as a graph for images of any size."""
    import tensorflow as tf

    function = tf.function(lambda images: resize_batch(images, height, width, "pad"))
    return function.get_concrete_function(tf.TensorSpec([None, None, None, None], dtype))
