"""The one image resize of featcache, shared by extraction and exported models.

:func:`resize_batch` is plain TensorFlow that also works in a graph on images of any
(dynamic) size: the ``ResizeImages`` layer of an exported model calls it, and
extraction calls it through :func:`resize_one`, one image at a time. TensorFlow is
imported only when used.

Crop and pad boxes are computed in exact integer arithmetic, written once and run on
Python ints (eager images, whose size is known: no extra TensorFlow ops) or on int64
tensors (a graph over images of unknown size). Float32 arithmetic, as in
``tf.image.resize_with_pad``, gives boxes that change when a graph optimizer rewrites
``x / constant``: an exported model then disagreed with extraction for many sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.options import DECODE_MODES, RESIZE_MODES, check_choice


def resize_batch(
    images: Any, height: Any, width: Any, mode: str = "stretch", decode: str = "exact"
) -> Any:
    """Resize 0-255 images ``(N, H, W, C)`` to float32 ``(N, height, width, C)``, bilinear.

    ``stretch``: ``tf.image.resize`` (no antialiasing, as Keras). ``crop``: the largest
    centred crop with the target aspect ratio, then resize (Keras ``smart_resize``,
    ``crop_to_aspect_ratio``). ``pad``: resize to fit inside, then centre with zeros, as
    ``tf.image.resize_with_pad`` but with exact box arithmetic (so never a stray black
    row or column from float rounding, and never an empty image). ``height`` and
    ``width`` are ints or integer scalar tensors.

    ``decode`` (see :data:`~featcache.core.options.DECODE_MODES`): ``exact`` as above;
    ``fast`` first averages boxes of ``f`` x ``f`` pixels, ``f`` the largest integer that
    leaves the image at least twice the target on the side(s) the mode keeps
    (:func:`reduce_factor`; 1 for images below that: then exactly ``exact``);
    ``antialias`` resizes with ``tf.image.resize(antialias=True)``. Raises
    ``InvalidOptionError`` for an unknown mode.
    """
    import tensorflow as tf

    check_choice("resize", mode, RESIZE_MODES)
    check_choice("decode", decode, DECODE_MODES)
    antialias = decode == "antialias"

    def bilinear(images: Any, size: Any) -> Any:
        return tf.image.resize(images, size, method="bilinear", antialias=antialias)

    h, w, th, tw, ops = _sizes(images, height, width)
    if decode == "fast":
        images = _box_reduce(images, h, w, reduce_factor(h, w, th, tw, mode, ops), ops)
        h, w, th, tw, ops = _sizes(images, height, width)
    # no cast up front: the bilinear kernel reads any real dtype as float32 itself (the
    # same values), and a uint8 image is 4 times less memory to crop and read
    if mode == "stretch":
        return tf.cast(bilinear(images, (height, width)), tf.float32)
    if mode == "crop":
        crop_h = ops.maximum(ops.minimum(h, w * th // tw), 1)
        crop_w = ops.maximum(ops.minimum(w, h * tw // th), 1)
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        images = images[:, top : top + crop_h, left : left + crop_w, :]
        return tf.cast(bilinear(images, (height, width)), tf.float32)
    # pad: tf.image.resize_with_pad's box, floor((target - exact resized size) / 2)
    wide = w * th >= h * tw  # the width limits the scale
    new_h = ops.where(wide, ops.maximum(h * tw // w, 1), th)
    new_w = ops.where(wide, tw, ops.maximum(w * th // h, 1))
    top = ops.where(wide, (th * w - h * tw) // (2 * w), 0)
    left = ops.where(wide, 0, (tw * h - w * th) // (2 * h))
    resized = bilinear(images, ops.ints(new_h, new_w))
    paddings = [[0, 0], [top, th - new_h - top], [left, tw - new_w - left], [0, 0]]
    padded = tf.pad(tf.cast(resized, tf.float32), ops.ints(*paddings))
    static = [v if isinstance(v, int) else None for v in (height, width)]
    padded.set_shape([images.shape[0], *static, images.shape[-1]])
    return padded


def reduce_factor(h: Any, w: Any, th: Any, tw: Any, mode: str, ops: Any = None) -> Any:
    """The largest integer ``f`` (at least 1) by which an ``h`` x ``w`` image can shrink and
    still be at least twice a ``th`` x ``tw`` target where the ``mode`` samples it: both
    sides for ``stretch`` and for ``crop`` (whose crop box is limited by the smaller ratio),
    the side that limits the scale for ``pad``. Python ints, or int64 tensors with ``ops``."""
    ops = ops or _PythonInts
    pick = ops.maximum if mode == "pad" else ops.minimum
    return ops.maximum(pick(h // (2 * th), w // (2 * tw)), 1)


def _box_reduce(images: Any, h: Any, w: Any, f: Any, ops: Any) -> Any:
    """Mean of every ``f`` x ``f`` box as float32 (area resize by an integer factor; the
    last ``h % f`` rows and ``w % f`` columns dropped); ``images`` unchanged when ``f`` is
    the int 1."""
    import tensorflow as tf

    if ops is _PythonInts and f == 1:
        return images

    def reduce() -> Any:
        rows, cols = h // f, w // f
        whole = images[:, : rows * f, : cols * f, :]
        return tf.image.resize(whole, ops.ints(rows, cols), method="area")

    if ops is _PythonInts:
        return reduce()
    return tf.cond(f > 1, reduce, lambda: tf.cast(images, tf.float32))


class _PythonInts:
    """The integer operations of the box arithmetic, on Python ints."""

    minimum, maximum = staticmethod(min), staticmethod(max)

    @staticmethod
    def where(condition: bool, a: int, b: int) -> int:
        return a if condition else b

    @staticmethod
    def ints(*values: Any) -> Any:
        return values


class _TensorInts:
    """The integer operations of the box arithmetic, on int64 scalar tensors."""

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        import tensorflow as tf

        return tf.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        import tensorflow as tf

        return tf.maximum(a, tf.cast(b, tf.int64))

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        import tensorflow as tf

        return tf.where(condition, tf.cast(a, tf.int64), tf.cast(b, tf.int64))

    @staticmethod
    def ints(*values: Any) -> Any:
        import tensorflow as tf

        return tf.cast(tf.stack([tf.cast(v, tf.int64) for v in values]), tf.int32)


def _sizes(images: Any, height: Any, width: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Image and target height and width as Python ints when all are known, else tensors."""
    sizes = (images.shape[1], images.shape[2], height, width)
    if all(isinstance(v, (int, np.integer)) for v in sizes):
        h, w, th, tw = (int(v) for v in sizes)
        return h, w, th, tw, _PythonInts
    import tensorflow as tf

    shape = tf.shape(images, out_type=tf.int64)
    th, tw = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    return shape[1], shape[2], th, tw, _TensorInts


def resize_one(
    pixels: np.ndarray, height: int, width: int, mode: str = "stretch", decode: str = "exact"
) -> np.ndarray:
    """One ``(H, W, C)`` image through :func:`resize_batch`, as float32 ``(height, width, C)``.

    Runs eagerly: with the image size known, every mode is one to three TensorFlow ops.
    """
    if pixels.dtype != np.uint8:  # the kernel's own float32 reading, for any dtype
        pixels = np.asarray(pixels, dtype=np.float32)
    return resize_batch(pixels[None], int(height), int(width), mode, decode).numpy()[0]
