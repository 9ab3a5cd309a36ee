"""Training-only image augmentation of the ``auto`` fine-tuning schedule, in the ``tf.data``
pipeline (so the saved model holds none of it).

Every augmentation draws from its own stateless seed ``(seed, epoch, row, augmentation)``:
the same run gives the same images, and adding one augmentation does not change another's
draws. Suited to grayscale and texture data as well as photos: ``flip``/``vflip``,
``rotate90`` (quarter turns, for data with no up), ``crop`` (small random resized crops),
``contrast`` and ``brightness``; ``rotate``, ``zoom`` and ``translate`` as before.
"""

from __future__ import annotations

import math
from typing import Any

from .options import AUGMENTATIONS, parse_augment

CROP_AREA = (0.7, 1.0)
"""Share of the image a ``crop`` keeps (then resized back), aspect ratio 3/4 to 4/3."""
CONTRAST = 0.2
"""``contrast`` scales deviations from the image mean by 1 +- this."""
BRIGHTNESS = 0.1
"""``brightness`` adds up to +- this share of 255."""
ROTATE = 0.05
"""``rotate``: up to +- this share of a full turn (18 degrees), as the Keras layer."""
SHIFT = 0.1
"""``zoom`` and ``translate``: up to +- this share of the side."""


def augment_function(names: str, seed: int, size: tuple[int, int]) -> Any:
    """``f(image, key) -> image``: float32 ``(H, W, 3)`` 0-255 images of ``size``, ``key`` an
    int64 ``(2,)`` tensor (epoch, row) that, with ``seed``, fixes every draw."""
    import tensorflow as tf

    chosen = parse_augment(names)
    height, width = size

    def draw(key: Any, index: int, shape: tuple[int, ...] = ()) -> Any:
        mixed = tf.stack([key[0] * 1_000_003 + seed, key[1] * 101 + index])
        return tf.random.stateless_uniform(shape, mixed, 0.0, 1.0)

    def transform(image: Any, matrix: Any) -> Any:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=tf.reshape(matrix, (1, 8)),
            output_shape=tf.constant((height, width), tf.int32),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )[0]

    def crop(image: Any, key: Any, index: int, area_range: tuple[float, float]) -> Any:
        u = draw(key, index, (4,))
        area = area_range[0] + (area_range[1] - area_range[0]) * u[0]
        ratio = tf.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        h = tf.minimum(1.0, tf.sqrt(area / ratio))
        w = tf.minimum(1.0, tf.sqrt(area * ratio))
        top, left = (1.0 - h) * u[2], (1.0 - w) * u[3]
        box = tf.stack([top, left, top + h, left + w])[None]
        return tf.image.crop_and_resize(image[None], box, [0], (height, width))[0]

    def one(name: str, index: int, image: Any, key: Any) -> Any:
        u = draw(key, index, (3,))
        if name == "flip":
            return tf.where(u[0] < 0.5, tf.reverse(image, [1]), image)
        if name == "vflip":
            return tf.where(u[0] < 0.5, tf.reverse(image, [0]), image)
        if name == "rotate90":
            if height != width:  # a quarter turn would change the shape: half turns only
                return tf.where(u[0] < 0.5, tf.reverse(image, [0, 1]), image)
            turns = tf.cast(tf.floor(u[0] * 4), tf.int32)
            return tf.image.rot90(image, turns)
        if name == "crop":
            return crop(image, key, index, CROP_AREA)
        if name == "zoom":
            return crop(image, key, index, ((1 - SHIFT) ** 2, 1.0))
        if name == "contrast":
            factor = 1.0 + CONTRAST * (2 * u[0] - 1)
            mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
            return tf.clip_by_value((image - mean) * factor + mean, 0.0, 255.0)
        if name == "brightness":
            return tf.clip_by_value(image + 255.0 * BRIGHTNESS * (2 * u[0] - 1), 0.0, 255.0)
        if name == "translate":
            dx = SHIFT * width * (2 * u[0] - 1)
            dy = SHIFT * height * (2 * u[1] - 1)
            return transform(image, tf.stack([1.0, 0.0, dx, 0.0, 1.0, dy, 0.0, 0.0]))
        # rotate: about the centre
        angle = 2 * math.pi * ROTATE * (2 * u[0] - 1)
        cos, sin = tf.cos(angle), tf.sin(angle)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
        return transform(image, tf.stack([*matrix, 0.0, 0.0]))

    def apply(image: Any, key: Any) -> Any:
        for name in chosen:  # seeded by name, not by place in the list
            image = one(name, AUGMENTATIONS.index(name), image, key)
        return tf.ensure_shape(image, (height, width, 3))

    return apply
