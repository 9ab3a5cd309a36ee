"""Every extraction default and option check, in one place (no heavy imports).

Errors name the Python parameter (``batch_size 0: expected 1 to 4096``); the CLI maps
parameters to its flags and the gRPC service to its message fields.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InvalidOptionError
from .schema import Range, check_choice, check_fields, invalid, option
from .splits import SPLIT_METHODS

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
DECODE_MODES = ("exact", "fast", "antialias")
"""How an image becomes the model's input. ``exact``: every pixel decoded, then the bilinear
resize without antialiasing of Keras's loader (features equal to
``keras.utils.image_dataset_from_directory``'s). ``fast``: never more pixels than the resize
needs: a JPEG decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT), any
image then reduced by the largest integer box average, so that it stays at least twice the
input (where the resize mode samples it), then the same bilinear resize; images below twice
the input take the ``exact`` path unchanged. ``antialias``: every pixel decoded, then an
antialiased bilinear resize (``tf.image.resize(antialias=True)``). Caches record it; features
of two modes are never mixed."""
DEFAULT_DECODE = "fast"
"""The decode mode of new caches; caches from before it was recorded read as ``exact``."""
POOLING_MODES = ("avg", "max", "gem", "none", "cls", "mean", "cls+mean")
"""``avg``/``max``: global pooling of the feature map; ``gem``: generalized mean (p 3) of
the map (keras.applications and saved models); ``none``: the flattened map (or token
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
AUTO_TAPS = "auto"
"""``taps`` that picks the layers: the end of each stage of a CNN (where the feature map
shrinks next), the last :data:`MAX_AUTO_TAPS` stages before the last layer."""
MAX_AUTO_TAPS = 4
MAIN_TAP = "main"
"""The tap name of a cache's ``features`` (the last layer, or ``--layer``)."""
MAX_TAPS = 16
"""Most taps one extraction stores besides ``features``."""


def parse_taps(value: str | Sequence[str], parameter: str = "taps") -> tuple[str, ...]:
    """``"auto"``, ``"none"`` (or empty) or ``"LAYER,LAYER"`` as a tuple: ``("auto",)``,
    ``()`` or the layer names, in the order given, each once."""
    names = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if names in (["none"], []):
        return ()
    if AUTO_TAPS in names:
        if len(names) > 1:
            raise invalid(parameter, value, "auto picks the layers: give auto or layer names")
        return (AUTO_TAPS,)
    for name in names:
        if "/" in name or "+" in name:
            raise invalid(parameter, value, f"layer name {name!r}: '/' and '+' are not allowed")
    if len(set(names)) != len(names):
        raise invalid(parameter, value, "a layer is named twice")
    if len(names) > MAX_TAPS:
        raise invalid(parameter, value, f"at most {MAX_TAPS} taps")
    return tuple(names)


def parse_view_augment(text: str | Sequence[str], parameter: str = "augment") -> tuple[str, ...]:
    """``"flip,crop,color"`` (any order, any subset) as a tuple in canonical order."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    for name in names:
        check_choice(parameter, name, VIEW_AUGMENTATIONS)
    return tuple(n for n in VIEW_AUGMENTATIONS if n in names)


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


def _check_seed(value: int, name: str) -> int:
    return check_seed(value, name)


def _check_image_size(value: Any, name: str) -> tuple[int, int] | None:
    return parse_image_size(value, name)


def _check_split(value: Any, name: str) -> tuple[float, float, float]:
    return parse_split(value, name)


def parse_shard(value: Any, name: str = "shard") -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``: shard I (0 to N - 1) of N."""
    text = str(value).strip()
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise invalid(name, value, "expected I/N, shard I of N counted from 0 (0/4 to 3/4)")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise invalid(
            name,
            value,
            f"expected I from 0 to N - 1 (0/{max(n, 1)} to {max(n, 1) - 1}/{max(n, 1)})",
        )
    return i, n


def _check_taps(value: Any, name: str) -> tuple[str, ...]:
    return parse_taps(value, name)


def _check_address(value: str, name: str) -> None:
    check_address(value, name.replace("address", "ray_address"))


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = option(
        None,
        flag="--ray-address",
        metavar="ADDRESS",
        parse=_check_address,
        help="Ray cluster to join. [default: $RAY_ADDRESS, else a local Ray instance]",
    )
    """Ray cluster to join (``auto``, ``HEAD:6379``); None starts a local instance unless
    ``RAY_ADDRESS`` is set (as it is inside ``ray job submit``)."""
    actors: int | None = option(
        None,
        kind=int,
        range=Range(1, wording="must be at least 1"),
        help="Ray actors (each loads the backbone once). [default: as many as the cluster holds]",
    )
    """Actor pool size; None sizes it to the cluster's CPUs (or GPUs) at start."""
    cpus_per_actor: float = option(
        1.0, range=Range(0, wording="must be above 0", low_open=True), default_text="1"
    )
    gpus_per_actor: float = option(
        0.0, range=Range(0, wording="must be 0 or more"), default_text="0"
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class BackboneConfig:
    """What a caller asks for: which backbone, weights and input handling (the options
    that decide the features; :class:`ExtractOptions` adds how a run goes)."""

    backbone: str = option(
        DEFAULT_BACKBONE,
        short="-b",
        wire="name",
        help="Registry name (see `featcache backbones`), a saved .keras/.h5 model, or a "
        "keras-hub preset: hub:NAME, a preset folder, hf://... or kaggle://... "
        "(pip install 'featcache[hub]').",
    )
    """Registry name, or the path of a saved Keras model."""
    weights: str = option(
        DEFAULT_WEIGHTS,
        short="-w",
        help="imagenet (keras-hub: the preset's own), none (random, seeded) or a weights file.",
    )
    """``imagenet``, ``none`` (random, seeded) or the path of a weights file."""
    image_size: str | int | tuple[int, int] | None = option(
        None,
        parse=_check_image_size,
        normalise=True,
        kind=str,
        help="N or H,W. [default: the backbone's own size]",
    )
    pooling: str = option(
        DEFAULT_POOLING,
        choices=POOLING_MODES,
        help="Global pooling of the feature map (avg, max, gem: generalized mean p=3; none "
        "keeps it whole, flattened); "
        "keras-hub transformers: cls, mean (avg: the same; class and register tokens "
        "skipped), cls+mean or none.",
    )
    layer: str | None = option(
        "",
        help="Take features from this inner layer (a+b: several, each pooled, side by side; "
        "main: the backbone's own output).",
        kind=str,
    )
    """An inner layer to tap ("", None or ``main``: the last; ``a+b``: several side by side,
    in that order, as a head on taps side by side reads them)."""
    preprocessing: str = option(
        DEFAULT_PREPROCESSING,
        help="auto (the backbone's preprocess_input), none, or a backbone name.",
    )
    """``auto`` (the backbone's own), ``none``, or a registry name whose function to use."""
    seed: int = option(
        DEFAULT_SEED, parse=_check_seed, help="Seed of the split (and of random weights)."
    )
    """Seeds random weights (``weights="none"``) so that reruns give equal features (and,
    in :class:`ExtractOptions`, the split)."""
    resize: str = option(
        DEFAULT_RESIZE,
        choices=RESIZE_MODES,
        help="stretch, pad (resize_with_pad) or crop (centre crop to the aspect ratio).",
    )
    precision: str = option(
        DEFAULT_PRECISION,
        choices=PRECISIONS,
        metavar="|".join(PRECISIONS),
        help="Compute precision of the backbone (Keras mixed precision); features stay "
        "float32 (stored as --dtype).",
    )
    """Compute precision: ``float32``, ``bfloat16`` or ``float16`` (features stay float32)."""
    blocks: int = option(
        DEFAULT_BLOCKS,
        range=Range(1, MAX_BLOCKS, integer=True),
        help="Transformers: concatenate the pooled output of the last N blocks "
        "(DINOv2 linear eval).",
    )
    """Transformers: concatenate the pooled output of the last ``blocks`` blocks (each with
    the final norm applied, as in DINOv2's linear evaluation)."""
    projection: bool = option(
        False,
        negatable=True,
        help="CLIP: features after the image projection; SigLIP: its attention-pooling head.",
    )
    """CLIP: the features after the image projection (the shared image-text space); SigLIP:
    the attention-pooling head's output. False: pooled tokens before them."""
    decode: str | None = option(
        None,
        choices=DECODE_MODES,
        kind=str,
        metavar="|".join(DECODE_MODES),
        help="exact (every pixel, Keras's bilinear resize), fast (large JPEGs decoded at "
        "reduced scale, large images box-reduced to twice the input first) or antialias "
        f"(antialiased resize). [default: the cache's, else {DEFAULT_DECODE}]",
    )
    """How images become the model's input (see :data:`DECODE_MODES`); None: as the
    existing cache (caches from before it was recorded are ``exact``), else
    :data:`DEFAULT_DECODE`."""

    def __post_init__(self) -> None:
        if self.layer is None:
            object.__setattr__(self, "layer", "")
        check_fields(self, _BACKBONE_CHECKED)

    @classmethod
    def of(cls, options: BackboneConfig) -> BackboneConfig:
        """The backbone settings of :class:`ExtractOptions` (or another config)."""
        values = {each.name: getattr(options, each.name) for each in fields(cls)}
        return cls(**values)


_BACKBONE_CHECKED = ("pooling", "resize", "precision", "seed", "blocks", "image_size", "decode")
"""The backbone options checked when a :class:`BackboneConfig` is made (names and files are
checked when the backbone is resolved)."""


@dataclass(frozen=True)
class ExtractOptions(BackboneConfig):
    """Everything :func:`featcache.extract` can be asked, checked when made.

    The feature settings (:class:`BackboneConfig`'s, ``backbone`` to ``projection``) decide
    the stored features; the rest decide how the run goes.
    """

    output: str | os.PathLike[str] | None = option(
        None,
        short="-o",
        path=True,
        default_text="cache/<backbone>[-<settings>].h5",
        help="Cache file to write; the default names the backbone and every setting not at "
        "its default (cache/mobilenet.h5, cache/mobilenet-96px-max.h5).",
    )
    """Cache file; None: ``cache/<backbone>[-<settings>].h5``, the settings that are not
    their defaults (:func:`featcache.extractor.naming.cache_name`)."""
    dtype: str = option(DEFAULT_DTYPE, choices=DTYPES, help="Storage type of the features.")
    split: str | tuple[float, ...] = option(
        DEFAULT_SPLIT,
        parse=_check_split,
        kind=str,
        help="train,val[,test] ratios (of each class with --split-method stratified).",
    )
    split_method: str | None = option(
        None,
        choices=SPLIT_METHODS,
        help="stratified: every class spread over train/val/test by the --split ratios "
        "(new images fill the split furthest below its share; cached rows never move); "
        "hash: from each image's content hash and --seed alone. [default: the cache's, "
        "else stratified]",
    )
    """``stratified`` or ``hash`` (see :data:`~.splits.SPLIT_METHODS`); None: as the
    existing cache (caches from before the method was recorded are ``hash``), else
    ``stratified``. Images in train/val/test folders keep their folder's split."""
    labels: str | None = option(
        None, path=True, help="Integer labels .npy for an .npy image array."
    )
    batch_size: int = option(
        DEFAULT_BATCH_SIZE, range=Range(1, MAX_BATCH_SIZE), help="Images per model call."
    )
    overwrite: bool = option(False, help="Replace a cache made with other settings.")
    rehash: bool = option(
        False,
        help="Read and hash every file; by default a cached file whose size, mtime, ctime "
        "and inode are unchanged is not read again.",
    )
    """Read and hash every file; by default a file whose size, mtime, ctime and inode are
    those recorded with its cached row reuses the row unread."""
    workers: int | None = option(
        None,
        kind=int,
        range=Range(1, wording="must be at least 1"),
        help="Image decoding threads.",
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        range=Range(1, wording="must be at least 1"),
        help="Larger images are recorded as bad (decompression bombs).",
    )
    checkpoint_seconds: float = option(
        DEFAULT_CHECKPOINT_SECONDS,
        range=Range(0, wording="must be 0 or more"),
        help="Commit finished rows to the cache at least this often.",
    )
    progress: bool | None = option(None, cli=False)
    """None: a progress bar only on a terminal."""
    engine: str = option(
        "local",
        choices=ENGINES,
        help="ray: embed on a Ray actor pool (pip install 'featcache[ray]').",
    )
    remote: Any = option(
        None,
        metavar="HOST:PORT",
        kind=str,
        help="Embed on a `featcache serve` server; images are read and the cache written here.",
    )
    """``"host:port"`` or a :class:`featcache.Client`: embed on a ``featcache serve`` server."""
    ray_options: RayOptions | None = option(None, cli=False)
    views: int | None = option(
        None,
        kind=int,
        range=Range(1, MAX_VIEWS, integer=True),
        help="Embeddings per image: view 0 the plain image, the rest augmented (cached "
        "views). [default: the cache's, else 1]",
    )
    """Embeddings stored per image: view 0 is the plain image (``features``), views 1 to
    ``views - 1`` augmented copies (the cache's ``views`` dataset). None: as the existing
    cache (a rerun keeps its views), else 1."""
    augment: str | tuple[str, ...] | None = option(
        None,
        kind=str,
        metavar="LIST",
        help="Augmentations of views 1+: flip,crop,color (any subset). [default: the "
        "cache's, else with --views above 1 all]",
    )
    """Augmentations of views 1+ (see :data:`VIEW_AUGMENTATIONS`); empty with ``views > 1``:
    all of them. None: as the existing cache when it has these views, else empty."""
    augment_seed: int | None = option(
        None,
        kind=int,
        parse=_check_seed,
        help="Seed of the view augmentations (with each image's SHA-256 and view index). "
        f"[default: the cache's, else {DEFAULT_SEED}]",
    )
    """Seeds the augmentations (with each image's SHA-256 and the view index). None: as the
    existing cache when it has these views, else :data:`DEFAULT_SEED`."""
    shard: str | None = option(
        None,
        kind=str,
        metavar="I/N",
        parse=parse_shard,
        help="Embed only shard I of N: the files whose path hashes to I (SHA-256 of the path "
        "under DATA, mod N). N runs with I = 0 .. N-1, on one machine or several, split one "
        "folder without talking to each other; featcache manifest names their N caches as "
        "one dataset.",
    )
    """``"I/N"``: only the items whose dataset path hashes to ``I`` mod ``N``
    (:func:`featcache.extractor.sources.take_shard`); None: every item."""
    taps: str | tuple[str, ...] | None = option(
        None,
        kind=str,
        metavar="LIST",
        parse=_check_taps,
        help="Also store these inner layers, pooled as --pooling, from the same forward pass: "
        "auto (the end of each stage of a CNN, the last 4), layer names (a,b), or none. "
        "[default: the cache's, else none]",
    )
    """Inner layers stored beside ``features``, each its own row dataset ``taps/LAYER``
    (one forward pass): ``"auto"``, layer names (``"a,b"`` or a tuple), ``"none"``. None:
    as the existing cache (a rerun keeps its taps), else none."""
    ratios: tuple[float, float, float] = field(init=False)
    view_count: int = field(init=False)
    """``views`` for this run (1 while not given; see :meth:`with_cache_views`)."""
    view_augment: tuple[str, ...] = field(init=False)
    """``augment`` parsed (all augmentations when views > 1 and none were named)."""
    view_seed: int = field(init=False)
    """``augment_seed`` for this run (:data:`DEFAULT_SEED` while not given)."""
    tap_list: tuple[str, ...] = field(init=False)
    """``taps`` parsed: ``()`` (none, or not given), ``("auto",)`` or layer names."""

    def __post_init__(self) -> None:
        self._check_views()
        super().__post_init__()
        check_fields(self, _RUN_CHECKED)
        object.__setattr__(self, "tap_list", parse_taps(self.taps or ""))
        if self.tap_list and self.remote is not None:
            raise InvalidOptionError(
                "taps: a remote server embeds the last layer only; extract taps locally", "taps"
            )
        if self.tap_list and self.pooling in ("none", *TOKEN_POOLING):
            raise invalid(
                "taps",
                self.taps,
                f"taps are pooled as pooling says: avg or max, not {self.pooling}",
            )
        if self.engine != "ray" and self.ray_options is not None:
            raise InvalidOptionError("ray_options need engine='ray'")
        if self.engine == "ray" and self.remote is not None:
            raise InvalidOptionError("remote and engine='ray' cannot be combined")
        object.__setattr__(self, "ratios", parse_split(self.split))

    def _check_views(self) -> None:
        """Check the view settings given; those not given (None) are checked once
        :meth:`with_cache_views` has filled them in."""
        check_fields(self, ("views", "augment_seed"))
        views, seed = self.views, self.augment_seed
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

    def with_cache_taps(self, taps: Sequence[str]) -> ExtractOptions:
        """These options with ``taps`` not given (None) taken from an existing cache's."""
        if self.taps is not None:
            return self
        return replace(self, taps=",".join(taps) or "none")

    @property
    def threads(self) -> int:
        """Reader threads (``workers``, else cores + 1, at most 4)."""
        return self.workers or min(4, (os.cpu_count() or 1) + 1)

    @property
    def window(self) -> int:
        """Images read ahead of the batch being embedded."""
        return max(2 * self.batch_size, 16)


_RUN_CHECKED = (
    "dtype",
    "split_method",
    "engine",
    "batch_size",
    "workers",
    "max_pixels",
    "checkpoint_seconds",
    "shard",
    "taps",
)
"""The run options :class:`ExtractOptions` checks besides the backbone's and the views'."""
