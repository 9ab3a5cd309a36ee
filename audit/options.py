"""Audit and search defaults and option checks (light: the CLI's ``--help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import invalid
from ..store.search_index import DEFAULT_SEARCH_K, MAX_SEARCH_K

__all__ = ["DEFAULT_SEARCH_K", "MAX_SEARCH_K", "AuditOptions"]

DEFAULT_FOLDS = 5
"""Folds of the out-of-fold label check."""
DEFAULT_BLOCK_BYTES = 256 << 20
"""Bytes of one block of float32 similarities: 256 MiB."""
DEFAULT_THRESHOLD = 0.95
"""Cosine similarity from which two rows are near-duplicates (see README: audit)."""
THRESHOLD_TABLE = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
"""Thresholds whose pair counts the report lists, to show the threshold's effect."""
DEFAULT_NEIGHBORS = 10
"""Neighbours kept per row: near-duplicate candidates and the outlier score's k."""
DEFAULT_OUTLIER_FRACTION = 0.01


@dataclass(frozen=True)
class AuditOptions:
    threshold: float = DEFAULT_THRESHOLD
    neighbors: int = DEFAULT_NEIGHBORS
    outlier_fraction: float = DEFAULT_OUTLIER_FRACTION
    label_issues: bool = True
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    block_bytes: int = DEFAULT_BLOCK_BYTES
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise invalid("threshold", self.threshold, "expected a cosine in (0, 1]")
        if not 1 <= self.neighbors <= 1000:
            raise invalid("neighbors", self.neighbors, "expected 1 to 1000")
        if not 0.0 <= self.outlier_fraction <= 0.5:
            raise invalid("outlier_fraction", self.outlier_fraction, "expected 0 to 0.5")
        if not 2 <= self.folds <= 20:
            raise invalid("folds", self.folds, "expected 2 to 20")
        if self.block_bytes < 1 << 16:
            raise invalid("block_bytes", self.block_bytes, "expected at least 65536")
