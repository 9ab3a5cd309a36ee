"""Train/val/test assignment from each image's content hash and a seed."""

from __future__ import annotations

import hashlib

SPLIT_NAMES = ("train", "val", "test")
"""Split codes 0, 1, 2 as stored in the cache's ``split`` column."""

SPLIT_FOLDERS = {"train": 0, "val": 1, "validation": 1, "test": 2}
"""Top-level folder names that set the split from the dataset's layout."""


def assign_split(sha256_hex: str, ratios: tuple[float, float, float], seed: int) -> int:
    """Split code (0 train, 1 val, 2 test) of an image with this content hash.

    Depends only on the content and the seed, so adding images never moves old
    ones and identical images always land in the same split.
    """
    digest = hashlib.sha256(f"{seed}:{sha256_hex}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < ratios[0]:
        return 0
    if position < ratios[0] + ratios[1]:
        return 1
    return 2 if ratios[2] > 0 else (1 if ratios[1] > 0 else 0)
