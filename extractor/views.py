"""Cached augmented views: K embeddings per image, view 0 the plain image.

Views 1 to K-1 are augmented copies of the image as the backbone sees it (decoded and
resized to its input size, float32 0-255, before its preprocessing): ``flip``
(horizontal, with probability 1/2; always when it is the only augmentation, as the mirror is
the one other image it makes), ``crop`` (a random resized crop, 35-100 % of the area,
aspect 3/4 to 4/3, bilinear back to the input size) and ``color`` (brightness, contrast
and saturation factors in 0.6-1.4, in that order). Each view's random draws come from
``(seed, the image's SHA-256, view index)`` alone, so a resumed run, the Ray actors and a
server's ``ExtractDataset`` make the same views as one local run. A change to what these
functions make bumps :data:`~.options.AUGMENT_VERSION`, which caches record.

NumPy only: the augmentations run on the engine's thread (or a Ray actor), and the views
are embedded with the same call that embeds plain float images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..core.options import VIEW_AUGMENTATIONS

__all__ = ["VIEW_AUGMENTATIONS", "augment_image", "embed_views", "view_rng"]

CROP_SCALE = (0.35, 1.0)
"""Share of the image's area a ``crop`` keeps."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratios (width / height) a ``crop`` may have."""
COLOR_RANGE = (0.6, 1.4)
"""Brightness, contrast and saturation factors of ``color``."""
_GRAY = np.asarray([0.299, 0.587, 0.114], np.float32)


def view_rng(seed: int, sha256: str, view: int) -> np.random.Generator:
    """The random generator of one view of one image: only the seed, the content's
    SHA-256 and the view index decide it."""
    return np.random.default_rng([int(seed), int(sha256[:32], 16), int(view)])


def augment_image(
    image: np.ndarray, augment: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """One augmented copy of a float32 ``(H, W, 3)`` image in 0-255, same size."""
    out = np.asarray(image, np.float32)
    if "crop" in augment:
        out = _random_resized_crop(out, rng)
    if "flip" in augment and (set(augment) == {"flip"} or rng.random() < 0.5):
        out = out[:, ::-1]
    if "color" in augment:
        out = _color_jitter(out, rng)
    return np.ascontiguousarray(out, dtype=np.float32)


def embed_views(
    embed: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    sha256: Sequence[str],
    views: int,
    augment: Sequence[str],
    seed: int,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeddings of views 1 to ``views - 1``: ``(N, views - 1, D)`` float32.

    ``images`` are float32 ``(N, H, W, 3)`` at the backbone's input size; ``embed`` takes
    such a batch and returns ``(n, D)``. The augmented images are made ``batch_size`` at a
    time on a helper thread while the previous batch is embedded, so memory stays at two
    batches of views.
    """
    n = len(images)
    extra = views - 1
    if n == 0 or extra <= 0:
        return np.zeros((n, max(extra, 0), 0), np.float32)
    jobs = [(i, view) for i in range(n) for view in range(1, views)]
    chunks = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]

    def make(chunk: list[tuple[int, int]]) -> np.ndarray:
        return np.stack(
            [augment_image(images[i], augment, view_rng(seed, sha256[i], v)) for i, v in chunk]
        )

    out: np.ndarray | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="featcache-views") as pool:
        upcoming = pool.submit(make, chunks[0])
        for k, chunk in enumerate(chunks):
            batch = upcoming.result()
            if k + 1 < len(chunks):
                upcoming = pool.submit(make, chunks[k + 1])
            features = np.asarray(embed(batch), np.float32)
            if out is None:
                out = np.empty((n, extra, features.shape[1]), np.float32)
            for (i, view), row in zip(chunk, features):
                out[i, view - 1] = row
    assert out is not None
    return out


def _random_resized_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random box (area share :data:`CROP_SCALE`, aspect :data:`CROP_RATIO`) resized
    back to the image's size, bilinear with half-pixel centres."""
    height, width = image.shape[:2]
    area = height * width * rng.uniform(*CROP_SCALE)
    ratio = float(np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]))))
    box_w = min(float(width), np.sqrt(area * ratio))
    box_h = min(float(height), np.sqrt(area / ratio))
    top = rng.uniform(0.0, height - box_h)
    left = rng.uniform(0.0, width - box_w)
    ys = top + (np.arange(height, dtype=np.float64) + 0.5) * box_h / height - 0.5
    xs = left + (np.arange(width, dtype=np.float64) + 0.5) * box_w / width - 0.5
    return _bilinear(image, ys, xs)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``image`` sampled at rows ``ys`` and columns ``xs`` (separable: rows, then columns)."""
    height, width = image.shape[:2]
    ys = np.clip(ys, 0, height - 1)
    xs = np.clip(xs, 0, width - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    top, bottom = image[y0], image[y1]
    rows = top + (bottom - top) * wy
    left, right = rows[:, x0], rows[:, x1]
    return np.asarray(left + (right - left) * wx, np.float32)


def _color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness ``b``, contrast ``c`` (about the mean gray), saturation ``s`` (about each
    pixel's gray), in that order, as one affine map per pixel (the gray weights sum to 1)."""
    brightness, contrast, saturation = (float(v) for v in rng.uniform(*COLOR_RANGE, size=3))
    gray = image @ _GRAY
    mean = brightness * float(gray.mean())
    scale = brightness * contrast
    # after brightness and contrast: image * scale + mean * (1 - c); its gray likewise
    offset = (gray * scale + mean * (1 - contrast)) * (1 - saturation)
    out = image * (scale * saturation) + (offset + mean * (1 - contrast) * saturation)[..., None]
    return np.clip(out, 0.0, 255.0)
