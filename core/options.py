"""Every extraction default and option check, in one place (no heavy imports).

Errors name the Python parameter (``batch_size 0: expected 1 to 4096``); the CLI maps
parameters to its flags and the gRPC service to its message fields.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidOptionError

DEFAULT_BACKBONE = "mobilenet"
DEFAULT_WEIGHTS = "imagenet"
DEFAULT_POOLING = "avg"
DEFAULT_RESIZE = "stretch"
DEFAULT_PREPROCESSING = "auto"
DEFAULT_DTYPE = "float32"
DEFAULT_SPLIT = "0.7,0.2,0.1"
DEFAULT_SEED = 20
"""Seed of the split and of random weights (``weights="none"``)."""
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused as decompression bombs (and ``.npy``
arrays whose images are larger, when the dataset is listed)."""
MAX_CLASSES = 100_000
"""Most classes an ``.npy`` labels file may name: labels are 0 to ``MAX_CLASSES - 1``, or -1
for an unlabelled row (a stray huge label would otherwise build a huge class list)."""
DEFAULT_CHECKPOINT_SECONDS = 60.0
MAX_BATCH_SIZE = 4096
"""Largest ``batch_size`` (the read-ahead window is twice the batch)."""

NAMED_WEIGHTS = ("imagenet", "none", "random")
"""``weights`` values that are not a file (``random`` is another name for ``none``)."""
PAD_VERSION = 2
"""Version of the ``pad`` resize: 1 was ``tf.image.resize_with_pad``'s float32 box (off by a
pixel for some sizes, and different again inside exported models), 2 the exact integer box.
Caches and heads record it; features of the two versions are never mixed."""
RESIZE_MODES = ("stretch", "pad", "crop")
"""``stretch``: plain bilinear resize; ``pad``: fit inside and centre on black, as
``tf.image.resize_with_pad`` but with exact box arithmetic; ``crop``: centre crop to the
target aspect ratio, then resize (Keras ``crop_to_aspect_ratio``). See :mod:`.resize`."""
POOLING_MODES = ("avg", "max", "none", "cls", "mean", "cls+mean")
"""``avg``/``max``: global pooling of the feature map; ``none``: the flattened map (or token
sequence). Transformers (keras-hub presets): ``cls`` the class token, ``mean`` the mean of the
patch tokens (class and register tokens skipped; ``avg`` means the same), ``cls+mean`` both,
concatenated."""
TOKEN_POOLING = ("cls", "mean", "cls+mean")
"""Pooling modes that only token sequences (transformers) have."""
DEFAULT_BLOCKS = 1
"""Transformer blocks whose pooled outputs are concatenated (the last ``blocks``)."""
MAX_BLOCKS = 64
DTYPES = ("float32", "float16")
PRECISIONS = ("float32", "bfloat16", "float16")
"""Compute precision of the backbone: ``bfloat16``/``float16`` build it under Keras's
``mixed_bfloat16``/``mixed_float16`` policy (weights stay float32); features come out float32
either way and are stored as ``dtype``."""
DEFAULT_PRECISION = "float32"
ENGINES = ("local", "ray")
VIEW_AUGMENTATIONS = ("flip", "crop", "color")
"""Augmentations of cached views (:mod:`.views`): ``flip`` (horizontal: half the views,
view 1 when it is the only augmentation), ``crop`` (random resized crop back to the input
size), ``color`` (brightness, contrast and saturation jitter)."""
AUGMENT_VERSION = 2
"""Version of the view augmentations (:mod:`.views`): 1 flipped each view on a coin toss
even with ``flip`` alone (many views copies of view 0), 2 flips view 1 when ``flip`` is the
only augmentation. Caches record it (views caches from before read as 1); views of two
versions are never mixed."""
MAX_VIEWS = 64
"""Most views per image (view 0, the plain image, included)."""


def parse_view_augment(text: str | Sequence[str], parameter: str = "augment") -> tuple[str, ...]:
    """``"flip,crop,color"`` (any order, any subset) as a tuple in canonical order."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    for name in names:
        check_choice(parameter, name, VIEW_AUGMENTATIONS)
    return tuple(n for n in VIEW_AUGMENTATIONS if n in names)


def invalid(parameter: str, value: Any, expected: str) -> InvalidOptionError:
    """``InvalidOptionError("parameter value: expected")`` naming the parameter."""
    shown = repr(value) if isinstance(value, str) else str(value)
    return InvalidOptionError(f"{parameter} {shown}: {expected}", parameter)


def check_choice(parameter: str, value: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise invalid(parameter, value, f"expected one of {', '.join(choices)}")
    return value


def check_range(
    parameter: str, value: float | None, low: float, high: float = float("inf"), wording: str = ""
) -> None:
    """Refuse ``value`` outside ``[low, high]`` (None passes)."""
    if value is not None and not low <= value <= high:
        text = wording or (f"expected {low:g} to {high:g}" if high < float("inf") else "")
        raise invalid(parameter, value, text or f"must be at least {low:g}")


def check_seed(seed: int, parameter: str = "seed") -> int:
    """A seed NumPy and Keras accept."""
    if not 0 <= seed < 2**32:
        raise invalid(parameter, seed, "expected 0 to 2**32 - 1")
    return seed


def check_blocks(blocks: int, parameter: str = "blocks") -> int:
    """A block count from 1 to :data:`MAX_BLOCKS`."""
    if isinstance(blocks, bool) or not isinstance(blocks, int):
        raise invalid(parameter, blocks, f"expected an integer 1 to {MAX_BLOCKS}")
    check_range(parameter, blocks, 1, MAX_BLOCKS)
    return blocks


def parse_split(
    text: str | Sequence[float], parameter: str = "split"
) -> tuple[float, float, float]:
    """Parse ``"0.7,0.2,0.1"`` (or two values, test = 0) into three ratios summing to 1."""
    try:
        values = [float(part) for part in text.split(",")] if isinstance(text, str) else list(text)
    except ValueError:
        raise invalid(parameter, text, "expected numbers like 0.7,0.2,0.1") from None
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or any(v < 0 or v != v for v in values):
        raise invalid(parameter, text, "expected 2 or 3 non-negative ratios")
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        raise invalid(parameter, text, f"ratios add up to {total:g}, not 1")
    return (values[0], values[1], values[2])


def parse_image_size(
    value: str | int | Sequence[int] | None, parameter: str = "image_size"
) -> tuple[int, int] | None:
    """``224``, ``"224"``, ``"240,320"`` or ``(240, 320)`` (height, width); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        pair: tuple[int, ...] = (value, value)
    elif isinstance(value, str):
        try:
            parts = tuple(int(p) for p in value.replace("x", ",").split(","))
        except ValueError:
            raise invalid(parameter, value, "expected N or H,W") from None
        pair = parts * 2 if len(parts) == 1 else parts
    else:
        pair = tuple(int(v) for v in value)
        pair = pair * 2 if len(pair) == 1 else pair
    if len(pair) != 2 or min(pair) < 1:
        raise invalid(parameter, value, "expected N or H,W of positive ints")
    return (pair[0], pair[1])


def check_address(address: str, parameter: str | None) -> None:
    """Refuse Ray Client addresses: Ray Data does not run over Ray Client (``parameter``
    None: the address came from ``RAY_ADDRESS``)."""
    if address.startswith("ray://"):
        raise InvalidOptionError(
            f"{parameter or 'RAY_ADDRESS'} {address!r}: Ray Data does not run over Ray Client "
            "(ray://); run the command on a cluster node (address auto) or submit it with "
            "`ray job submit`",
            parameter,
        )


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None
    """Ray cluster to join (``auto``, ``HEAD:6379``); None starts a local instance unless
    ``RAY_ADDRESS`` is set (as it is inside ``ray job submit``)."""
    actors: int | None = None
    """Actor pool size; None sizes it to the cluster's CPUs (or GPUs) at start."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.actors is not None:
            check_range("actors", self.actors, 1, wording="must be at least 1")
        if not self.cpus_per_actor > 0:
            raise invalid("cpus_per_actor", self.cpus_per_actor, "must be above 0")
        check_range("gpus_per_actor", self.gpus_per_actor, 0, wording="must be 0 or more")
        if self.address is not None:
            check_address(self.address, "ray_address")


@dataclass(frozen=True)
class ExtractOptions:
    """Everything :func:`featcache.extract` can be asked, checked when made.

    The feature settings (``backbone`` to ``seed``) decide the stored features; the rest
    decide how the run goes.
    """

    backbone: str = DEFAULT_BACKBONE
    """Registry name, or the path of a saved Keras model."""
    weights: str = DEFAULT_WEIGHTS
    """``imagenet``, ``none`` (random, seeded) or the path of a weights file."""
    output: str | os.PathLike[str] | None = None
    """Cache file; None: ``cache/<backbone>.h5``."""
    pooling: str = DEFAULT_POOLING
    layer: str | None = None
    image_size: str | int | tuple[int, int] | None = None
    resize: str = DEFAULT_RESIZE
    preprocessing: str = DEFAULT_PREPROCESSING
    dtype: str = DEFAULT_DTYPE
    precision: str = DEFAULT_PRECISION
    """Compute precision of the backbone (see :data:`PRECISIONS`); not the storage type."""
    split: str | tuple[float, ...] = DEFAULT_SPLIT
    seed: int = DEFAULT_SEED
    labels: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    overwrite: bool = False
    rehash: bool = False
    """Read and hash every file; by default a file whose size, mtime, ctime and inode are
    those recorded with its cached row reuses the row unread."""
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    progress: bool | None = None
    """None: a progress bar only on a terminal."""
    engine: str = "local"
    remote: Any = None
    """``"host:port"`` or a :class:`featcache.Client`: embed on a ``featcache serve`` server."""
    ray_options: RayOptions | None = None
    blocks: int = DEFAULT_BLOCKS
    """Transformers: concatenate the pooled output of the last ``blocks`` blocks (each with
    the final norm applied, as in DINOv2's linear evaluation)."""
    projection: bool = False
    """CLIP: the features after the image projection (the shared image-text space); SigLIP:
    the attention-pooling head's output. False: pooled tokens before them."""
    views: int | None = None
    """Embeddings stored per image: view 0 is the plain image (``features``), views 1 to
    ``views - 1`` augmented copies (the cache's ``views`` dataset). None: as the existing
    cache (a rerun keeps its views), else 1."""
    augment: str | tuple[str, ...] | None = None
    """Augmentations of views 1+ (see :data:`VIEW_AUGMENTATIONS`); empty with ``views > 1``:
    all of them. None: as the existing cache when it has these views, else empty."""
    augment_seed: int | None = None
    """Seeds the augmentations (with each image's SHA-256 and the view index). None: as the
    existing cache when it has these views, else :data:`DEFAULT_SEED`."""
    ratios: tuple[float, float, float] = field(init=False)
    view_count: int = field(init=False)
    """``views`` for this run (1 while not given; see :meth:`with_cache_views`)."""
    view_augment: tuple[str, ...] = field(init=False)
    """``augment`` parsed (all augmentations when views > 1 and none were named)."""
    view_seed: int = field(init=False)
    """``augment_seed`` for this run (:data:`DEFAULT_SEED` while not given)."""

    def __post_init__(self) -> None:
        self._check_views()
        check_choice("resize", self.resize, RESIZE_MODES)
        check_choice("pooling", self.pooling, POOLING_MODES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("engine", self.engine, ENGINES)
        check_seed(self.seed)
        check_blocks(self.blocks)
        parse_image_size(self.image_size)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.workers is not None:
            check_range("workers", self.workers, 1, wording="must be at least 1")
        check_range("max_pixels", self.max_pixels, 1, wording="must be at least 1")
        if not self.checkpoint_seconds >= 0:
            raise invalid("checkpoint_seconds", self.checkpoint_seconds, "must be 0 or more")
        if self.engine != "ray" and self.ray_options is not None:
            raise InvalidOptionError("ray_options need engine='ray'")
        if self.engine == "ray" and self.remote is not None:
            raise InvalidOptionError("remote and engine='ray' cannot be combined")
        object.__setattr__(self, "ratios", parse_split(self.split))

    def _check_views(self) -> None:
        """Check the view settings given; those not given (None) are checked once
        :meth:`with_cache_views` has filled them in."""
        views, seed = self.views, self.augment_seed
        if views is not None and (isinstance(views, bool) or not isinstance(views, int)):
            raise invalid("views", views, f"expected an integer 1 to {MAX_VIEWS}")
        check_range("views", views, 1, MAX_VIEWS)
        if seed is not None:
            check_seed(seed, "augment_seed")
        chosen = parse_view_augment(self.augment or "")
        if views == 1 and chosen:
            raise invalid("augment", self.augment, "augmentations need views 2 or more")
        if views == 1 and seed not in (None, DEFAULT_SEED):
            raise invalid("augment_seed", seed, "seeds the views: needs views 2 or more")
        count = views or 1
        if count > 1 and not chosen:
            chosen = VIEW_AUGMENTATIONS
        if count > 2 and set(chosen) == {"flip"}:
            raise invalid(
                "views",
                count,
                "augment 'flip' alone makes one other image (the mirror): views 2 at most",
            )
        if count > 1 and self.remote is not None:
            raise InvalidOptionError(
                "views: a remote server embeds plain images only; extract views locally, "
                "with engine='ray', or with the server's ExtractDataset",
                "views",
            )
        object.__setattr__(self, "view_count", count)
        object.__setattr__(self, "view_augment", chosen)
        object.__setattr__(self, "view_seed", DEFAULT_SEED if seed is None else seed)

    def with_cache_views(
        self, views: int, augment: Sequence[str], augment_seed: int
    ) -> ExtractOptions:
        """These options with the view settings not given (None) taken from an existing
        cache's (``views``, ``augment``, ``augment_seed``): a rerun without them keeps the
        cache's views. The augmentations and seed are the cache's only when the views are
        its views (a cache without views gives 1, no augmentation, the default seed)."""
        count = self.views if self.views is not None else views
        same = count == views > 1
        return replace(
            self,
            views=count,
            augment=(
                self.augment if self.augment is not None else (",".join(augment) if same else "")
            ),
            augment_seed=(
                self.augment_seed
                if self.augment_seed is not None
                else (augment_seed if same else DEFAULT_SEED)
            ),
        )

    @property
    def threads(self) -> int:
        """Reader threads (``workers``, else cores + 1, at most 4)."""
        return self.workers or min(4, (os.cpu_count() or 1) + 1)

    @property
    def window(self) -> int:
        """Images read ahead of the batch being embedded."""
        return max(2 * self.batch_size, 16)
