"""Audit and search defaults and option checks (light: the CLI's ``--help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import MAIN_TAP, check_seed
from ..core.schema import Range, check_fields, invalid, option
from ..store.ann_plan import DEFAULT_EXACT_BELOW, DEFAULT_INDEX_MEMORY
from ..store.search_index import DEFAULT_SEARCH_K, MAX_SEARCH_K

__all__ = [
    "DEFAULT_EXACT_BELOW",
    "DEFAULT_INDEX_MEMORY",
    "DEFAULT_SEARCH_K",
    "MAX_SEARCH_K",
    "AuditOptions",
]

DEFAULT_FOLDS = 5
"""Folds of the out-of-fold label check."""
DEFAULT_BLOCK_BYTES = 256 << 20
"""Bytes of one block of float32 similarities: 256 MiB."""
DEFAULT_LABEL_THRESHOLD = 0.05
"""Self-confidence (out-of-fold probability of the given label) under which a label is
flagged: on MobileNet features of 3,000 Fashion-MNIST images with 5% of the labels flipped
at random, 90% of the flags were flipped labels and 81% of the flips were flagged; on the
clean labels 0.5% of rows were flagged (benchmarks/bench_audit_labels.py)."""
DEFAULT_THRESHOLD = 0.95
"""Cosine similarity from which two rows are near-duplicates (see docs/commands.md: audit)."""
THRESHOLD_TABLE = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
"""Thresholds whose pair counts the report lists, to show the threshold's effect."""
DEFAULT_NEIGHBORS = 10
"""Neighbours kept per row: near-duplicate candidates and the outlier score's k."""
DEFAULT_OUTLIER_FRACTION = 0.01
DEFAULT_APPROXIMATE_FROM = 30_000
"""Rows from which the neighbours come from the approximate index (exact below: 27 s at
30,000 rows of width 1,024 on two cores, growing as the square of the rows)."""
DEFAULT_PROBES = 1
"""Cells of the approximate index whose rows each row is compared with (its own first, then
the nearest); every row is listed in its two nearest cells, so one probe already compares
a row with its neighbours across its cell's border."""
DEFAULT_ZERO_SHOT_THRESHOLD = 0.05
"""Zero-shot probability of the given label under which (its top class being another) the
zero-shot classifier strongly disagrees with a label."""
DEFAULT_LABEL_FIT_ROWS = 20_000
"""Rows each fold's classifier of the label check is fitted on at most (a seeded sample of
the other folds); every row is still predicted by a model that never saw it."""


@dataclass(frozen=True)
class AuditOptions:
    """What :func:`~featcache.audit.audit.audit_cache` is asked, checked when made."""

    threshold: float = option(
        DEFAULT_THRESHOLD,
        range=Range(0, 1, "expected a cosine in (0, 1]", low_open=True),
        help="Cosine similarity from which two rows are near-duplicates.",
    )
    neighbors: int = option(
        DEFAULT_NEIGHBORS, range=Range(1, 1000), help="Neighbours kept per row."
    )
    outlier_fraction: float = option(
        DEFAULT_OUTLIER_FRACTION,
        range=Range(0, 0.5),
        help="Fraction of rows reported as outliers.",
    )
    label_issues: bool = option(
        True, negatable=True, help="The out-of-fold label check (--no-label-issues skips it)."
    )
    folds: int = option(DEFAULT_FOLDS, range=Range(2, 20), help="Folds of the label check.")
    label_threshold: float = option(
        DEFAULT_LABEL_THRESHOLD,
        range=Range(0, 1, "expected a probability in (0, 1]", low_open=True),
        help="Flag a label when a classifier trained without its row gives it less than "
        "this probability.",
    )
    exact: bool = option(
        False,
        help="Exact neighbours of every row, whatever the cache's size (hours at a million "
        "rows) instead of the approximate index used from --approximate-from rows.",
    )
    approximate_from: int = option(
        DEFAULT_APPROXIMATE_FROM,
        range=Range(2),
        help="Rows from which an approximate index finds the neighbours (exact below).",
    )
    probes: int = option(
        DEFAULT_PROBES,
        range=Range(1, 1024),
        help="Cells of the approximate index whose rows each row is compared with: more "
        "finds more pairs, slower.",
    )
    label_fit_rows: int = option(
        DEFAULT_LABEL_FIT_ROWS,
        range=Range(100),
        help="Rows each fold's classifier of the label check is fitted on at most.",
    )
    zero_shot: bool = option(
        False,
        help="Also the zero-shot classifier's opinion (a CLIP or SigLIP cache, extract "
        "--projection): labels it strongly disagrees with join the label issues, with its "
        "class and probability as columns.",
    )
    zero_shot_threshold: float = option(
        DEFAULT_ZERO_SHOT_THRESHOLD,
        range=Range(0, 1, "expected a probability in (0, 1]", low_open=True),
        help="The zero-shot classifier disagrees strongly when it gives the label less than "
        "this probability and prefers another class.",
    )
    tap: str | None = option(
        None,
        kind=str,
        metavar="NAME",
        help="Audit a tap's features (extract --taps): its layer name, main (the features), "
        "or a+b side by side.",
    )
    """A tap of the cache (``extract --taps``) whose features are audited: its layer name,
    ``main``, or ``a+b`` (side by side). None: the features."""
    seed: int = option(0, parse=check_seed, cli=False)
    block_bytes: int = option(
        DEFAULT_BLOCK_BYTES, range=Range(1 << 16, wording="expected at least 65536"), cli=False
    )
    progress: bool | None = option(None, cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.zero_shot and self.tapped:
            raise invalid(
                "tap",
                self.tap,
                "the zero-shot opinion compares features with texts in the image-text "
                "space of a CLIP or SigLIP cache, which a tap is not in; audit the tap "
                "without it",
            )

    @property
    def tapped(self) -> bool:
        """Whether a tap's features are audited rather than the cache's ``features``."""
        return bool(self.tap and self.tap.strip() and self.tap.strip() != MAIN_TAP)

    def approximate(self, rows: int) -> bool:
        """Whether ``rows`` rows get their neighbours from the approximate index."""
        return not self.exact and rows >= self.approximate_from
