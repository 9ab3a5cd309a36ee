"""Train/val/test assignment: from each image's content hash and a seed (``hash``), or
balanced per class as images arrive (``stratified``).

Both never move a row already in a cache and put identical content in one split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLIT_NAMES = ("train", "val", "test")
"""Split codes 0, 1, 2 as stored in the cache's ``split`` column."""

SPLIT_FOLDERS = {"train": 0, "val": 1, "validation": 1, "test": 2}
"""Top-level folder names that set the split from the dataset's layout."""

SPLIT_METHODS = ("stratified", "hash")
"""``stratified``: each labelled image goes to the split furthest below its share of the
image's class (rows already cached counted, ties by the hash); unlabelled images and
``hash``: the split from the content hash and seed alone."""
DEFAULT_SPLIT_METHOD = "stratified"
"""The split method of new caches; caches from before the method was recorded read as
``hash`` (:data:`LEGACY_SPLIT_METHOD`)."""
LEGACY_SPLIT_METHOD = "hash"
GLOBAL_WEIGHT = 0.5
"""Weight of the shortfall over all rows against the class's own (see
:class:`SplitAssigner`): 0.5 keeps every class within one row of its share in tests of
classes of 2 to 40 rows, and the whole split within one row of the ratios."""


def hash_position(sha256_hex: str, seed: int) -> float:
    """Where an image with this content hash falls in [0, 1) for this seed."""
    digest = hashlib.sha256(f"{seed}:{sha256_hex}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(sha256_hex: str, ratios: tuple[float, float, float], seed: int) -> int:
    """Split code (0 train, 1 val, 2 test) of an image with this content hash.

    Depends only on the content and the seed, so adding images never moves old
    ones and identical images always land in the same split.
    """
    position = hash_position(sha256_hex, seed)
    if position < ratios[0]:
        return 0
    if position < ratios[0] + ratios[1]:
        return 1
    return 2 if ratios[2] > 0 else (1 if ratios[1] > 0 else 0)


class SplitAssigner:
    """The split of each new row of a cache, given the rows it already has.

    ``rows``: ``(path, sha256, class, split)`` of the rows kept. With ``stratified``, each
    new labelled row, in the order given (the dataset's order: every engine reports rows in
    it), goes to the split furthest below its share: the class's shortfall
    ``ratio * (rows of the class + 1) - rows of the class there`` plus half the same
    shortfall over all rows (so that classes too small for a test row each still fill the
    test split together); ties go by the image's hash position, weighted by the ratios. So the
    splits depend on the folder and the seed only, not on batch sizes, and a run resumed
    after an interruption assigns what the uninterrupted run would have. Content already
    cached (or assigned in this run) takes that row's split; unlabelled rows take the hash
    rule.
    """

    def __init__(
        self,
        ratios: tuple[float, float, float],
        seed: int,
        method: str,
        rows: Iterable[tuple[str, str, str | None, int]] = (),
    ) -> None:
        self.ratios = ratios
        self.seed = seed
        self.method = method
        self._rows: dict[str, tuple[str | None, int]] = {}
        self._counts: dict[str | None, list[int]] = {}
        self._total = [0, 0, 0]
        self._content: dict[str, int] = {}
        for path, sha, name, split in rows:
            self._add(path, sha, name, split)

    def _add(self, path: str, sha256: str, name: str | None, split: int) -> None:
        self.drop(path)
        self._rows[path] = (name, split)
        self._counts.setdefault(name, [0, 0, 0])[split] += 1
        self._total[split] += 1
        self._content.setdefault(sha256, split)

    def drop(self, path: str) -> None:
        """The row of ``path`` left the cache (its file changed, went bad or is gone)."""
        old = self._rows.pop(path, None)
        if old is not None:
            self._counts[old[0]][old[1]] -= 1
            self._total[old[1]] -= 1

    def counts(self, name: str | None) -> tuple[int, int, int]:
        """Rows of class ``name`` per split (train, val, test), this run's included."""
        train, val, test = self._counts.get(name, [0, 0, 0])
        return (train, val, test)

    def assign(
        self,
        paths: Sequence[str],
        sha256: Sequence[str],
        classes: Sequence[str | None],
        fixed: Sequence[int | None],
    ) -> list[int]:
        """Splits of new rows (in the order given); ``fixed``: a split the dataset's
        layout sets (train/val/test folders), or None."""
        out = []
        for path, sha, name, split in zip(paths, sha256, classes, fixed):
            if split is None:
                split = self._content.get(sha)
            if split is None:
                split = self._choose(name, sha)
            out.append(split)
            self._add(path, sha, name, split)
        return out

    def _choose(self, name: str | None, sha256: str) -> int:
        if self.method != "stratified" or name is None:
            return assign_split(sha256, self.ratios, self.seed)
        position = hash_position(sha256, self.seed)
        counts, every = self.counts(name), self._total
        rows, all_rows = sum(counts) + 1, sum(every) + 1
        open_ = [s for s in range(3) if self.ratios[s] > 0]
        deficit = {
            s: self.ratios[s] * rows
            - counts[s]
            + GLOBAL_WEIGHT * (self.ratios[s] * all_rows - every[s])
            for s in open_
        }
        best = max(deficit.values())
        tied = [s for s in open_ if deficit[s] >= best - 1e-9]
        weight = sum(self.ratios[s] for s in tied)
        edge = 0.0
        for s in tied:
            edge += self.ratios[s] / weight
            if position < edge:
                return s
        return tied[-1]
