"""The ``auto`` fine-tuning recipe's image size: the images' own resolution when it is larger
than the cache's and the time allows.

The images' size is read from the headers of a sample of train files (no decoding); a
training step's time at the cache's size (timed, :mod:`.finetune_plan`) is scaled by the
pixel count to estimate the run at each larger side, from the images' own (capped) down.
Reading a batch (decoding, resizing, augmenting) is timed at the cache's side and at the
largest side tried, and added in between by pixel count (on a CPU the same cores read and
train; on an accelerator a step takes the longer of the two).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .finetune_plan import duration

CAP_FACTOR = 2.0
"""Never train at more than this times the cache's side..."""
CAP_SIDE = 320
"""...nor above this side (the cost grows with the pixels: 2x the side, 4x the time)."""
MULTIPLE = 16
"""Sides tried are multiples of this."""
MIN_GAIN = 1.25
"""The images must be at least this times the cache's side to be worth the time."""
BUDGET_SHARE = 0.5
"""With a time budget, training at the larger side may take this share of what is left (the
rest: the augmentation and range tests, the timed steps, validation and the final
evaluation; measured: with 0.8, a 4 min budget chose 96 px over 48 and then no epoch fit)."""
SAMPLE = 64
"""Train files whose headers are read."""


@dataclass
class Cost:
    """A run's estimated training time at the cache's side, split into what grows with the
    pixel count (the steps' compute and the traces) and reading the batches, timed at the
    cache's side and at ``read_side``."""

    compute_seconds: float
    """The steps and traces at the cache's side."""
    read_seconds: float = 0.0
    """Reading every batch of the run at the cache's side."""
    read_side: int | None = None
    """The larger side reading was also timed at (None: reading not timed there)."""
    read_side_seconds: float = 0.0
    """Reading every batch at ``read_side``."""
    overlaps: bool = False
    """Reading overlaps the steps (an accelerator): the longer of the two counts."""

    def seconds(self, side: int, cache_side: int) -> float:
        """The estimate at ``side``: compute scaled by the pixels; reading between the
        sides it was timed at, by the pixels (held at the nearest beyond them)."""
        pixels = (side / cache_side) ** 2
        read = self.read_seconds
        if self.read_side is not None and self.read_side > cache_side:
            share = (side**2 - cache_side**2) / (self.read_side**2 - cache_side**2)
            share = min(max(share, 0.0), 1.0)
            read += share * (self.read_side_seconds - self.read_seconds)
        compute = self.compute_seconds * pixels
        return max(compute, read) if self.overlaps else compute + read


@dataclass
class SideChoice:
    """The side chosen and the numbers behind it."""

    side: int
    cache_side: int
    native_side: int | None
    estimated_seconds: float | None = None
    """Estimated training time at ``side``."""
    cache_seconds: float | None = None
    """Estimated training time at the cache's side."""
    reason: str = ""

    @property
    def summary(self) -> str:
        native = "unknown" if self.native_side is None else f"{self.native_side} px"
        if self.side == self.cache_side:
            return f"{self.side} px, the cache's (images {native}: {self.reason})"
        return (
            f"{self.side} px (images {native}, cache {self.cache_side} px; training about "
            f"{duration(self.estimated_seconds or 0)} instead of "
            f"{duration(self.cache_seconds or 0)}: {self.reason})"
        )

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.side,
            "by": "image headers and timed steps",
            "summary": self.summary,
            "cache_side": self.cache_side,
            "native_side": self.native_side,
            "estimated_seconds": None
            if self.estimated_seconds is None
            else round(self.estimated_seconds, 1),
            "cache_estimated_seconds": None
            if self.cache_seconds is None
            else round(self.cache_seconds, 1),
            "reason": self.reason,
        }


def native_side(contents: Iterable[bytes | np.ndarray]) -> int | None:
    """The median shorter side of the images in ``contents`` (file bytes, read from their
    headers, or pixel arrays); None when none can be read."""
    from PIL import Image

    sides = []
    for content in contents:
        if isinstance(content, np.ndarray):
            if content.ndim >= 2:
                sides.append(min(content.shape[:2]))
            continue
        try:
            with Image.open(io.BytesIO(content)) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: BLE001 - Pillow raises many kinds on a bad header
            continue
    return int(np.median(sides)) if sides else None


def largest_side(native: int, cache_side: int) -> int:
    """The largest side tried for images of shorter side ``native``: capped
    (:data:`CAP_FACTOR`, :data:`CAP_SIDE`) and rounded down to :data:`MULTIPLE`."""
    return min(native, int(CAP_FACTOR * cache_side), CAP_SIDE) // MULTIPLE * MULTIPLE


def larger_side_is_worth(native: int | None, cache_side: int) -> bool:
    """Whether images of shorter side ``native`` are enough larger than the cache's side
    for the recipe to consider them (and time a step)."""
    return (
        native is not None
        and native >= MIN_GAIN * cache_side
        and largest_side(native, cache_side) > cache_side
    )


def choose_side(
    native: int | None,
    cache_side: int,
    train_seconds: float | Cost,
    remaining: float | None = None,
) -> SideChoice:
    """The side to train at: the images' own (``native``), capped at :data:`CAP_FACTOR`
    times ``cache_side`` and :data:`CAP_SIDE`, rounded down to :data:`MULTIPLE`, or the
    largest smaller one whose estimated training time (``train_seconds``: the :class:`Cost`
    at the cache's side, or seconds that all scale with the pixel count) fits
    :data:`BUDGET_SHARE` of ``remaining`` seconds (None: no budget). The cache's side when
    the images are not :data:`MIN_GAIN` times larger or nothing larger fits."""
    cost = train_seconds if isinstance(train_seconds, Cost) else Cost(train_seconds)
    at_cache = cost.seconds(cache_side, cache_side)
    if native is None:
        return SideChoice(cache_side, cache_side, None, reason="image sizes unreadable")
    if not larger_side_is_worth(native, cache_side):
        return SideChoice(
            cache_side, cache_side, native,
            reason=f"not {MIN_GAIN:g}x larger than the cache's, in steps of {MULTIPLE} px",
        )  # fmt: skip
    cap = min(native, int(CAP_FACTOR * cache_side), CAP_SIDE)
    top = largest_side(native, cache_side)
    for side in range(top, cache_side, -MULTIPLE):
        estimate = cost.seconds(side, cache_side)
        if remaining is None or estimate <= BUDGET_SHARE * remaining:
            why = (
                "no time budget"
                if remaining is None
                else f"fits the time budget ({duration(remaining)} left)"
            )
            capped = f"capped at {cap} px, " if cap < native else ""
            return SideChoice(side, cache_side, native, estimate, at_cache, capped + why)
    return SideChoice(
        cache_side, cache_side, native, None, at_cache,
        f"no larger side fits the time budget ({duration(remaining or 0)} left)",
    )  # fmt: skip
