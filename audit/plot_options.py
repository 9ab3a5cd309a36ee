"""``plot`` defaults and option checks (light: the CLI's ``--help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import check_seed
from ..core.schema import Range, check_fields, invalid, option

PLOT_METHODS = ("auto", "pca", "tsne", "umap")
"""``auto``: UMAP when umap-learn is installed, else t-SNE up to
:data:`AUTO_TSNE_MAX_POINTS` points and PCA above."""
PLOT_COLORS = ("label", "split")
DEFAULT_MAX_POINTS = 5000
"""Points plotted at most: a larger cache is plotted from a seeded random sample."""
AUTO_TSNE_MAX_POINTS = 3000
"""``auto`` without umap-learn runs t-SNE up to this many points, PCA above (t-SNE's
cost: see docs/commands.md, plot)."""
DEFAULT_THUMBNAILS = 500
"""Points of the HTML map that carry a thumbnail (a seeded random choice)."""
MAX_THUMBNAILS = 5000
MAX_POINTS = 200_000
"""Most points a map holds: the page's script scans them all on each pointer move."""
PCA_DIMS = 50
"""t-SNE and UMAP run on the features reduced to this many principal components."""
UMAP_HINT = "pip install umap-learn (or featcache[umap])"


@dataclass(frozen=True)
class PlotOptions:
    """How :func:`~featcache.audit.plot.plot_cache` maps a cache."""

    method: str = option(
        "auto",
        choices=PLOT_METHODS,
        help="auto: umap when umap-learn is installed, else tsne up to "
        f"{AUTO_TSNE_MAX_POINTS} points, pca above.",
    )
    color: str = option(
        "label",
        choices=PLOT_COLORS,
        help="Colour the points by class or by split (the marker always shows the split).",
    )
    max_points: int = option(
        DEFAULT_MAX_POINTS,
        range=Range(3, MAX_POINTS),
        help="Plot a seeded random sample of this many rows when the cache has more.",
    )
    thumbnails: int = option(
        DEFAULT_THUMBNAILS,
        range=Range(0, MAX_THUMBNAILS),
        help="Points of map.html that show their image on hover.",
    )
    seed: int = option(0, parse=check_seed)
    tap: str | None = option(
        None,
        kind=str,
        metavar="NAME",
        help="Map a tap's features (extract --taps): its layer name, main (the features), or "
        "a+b side by side.",
    )
    """A tap of the cache (``extract --taps``) whose features are mapped: its layer name,
    ``main``, or ``a+b`` (side by side). None: the features."""
    png: bool = option(True, cli=False)
    html: bool = option(
        True, negatable=True, help="Write map.html too (--no-html: map.png and points.csv only)."
    )
    progress: bool | None = option(None, cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if not (self.png or self.html):
            raise invalid("png", self.png, "nothing to write: both png and html are off")
