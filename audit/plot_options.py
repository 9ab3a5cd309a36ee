"""``plot`` defaults and option checks (light: the CLI's ``--help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import check_choice, check_seed, invalid

PLOT_METHODS = ("auto", "pca", "tsne", "umap")
"""``auto``: UMAP when umap-learn is installed, else t-SNE up to
:data:`AUTO_TSNE_MAX_POINTS` points and PCA above."""
PLOT_COLORS = ("label", "split")
DEFAULT_MAX_POINTS = 5000
"""Points plotted at most: a larger cache is plotted from a seeded random sample."""
AUTO_TSNE_MAX_POINTS = 3000
"""``auto`` without umap-learn runs t-SNE up to this many points, PCA above (t-SNE's
cost: see README, plot)."""
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

    method: str = "auto"
    color: str = "label"
    max_points: int = DEFAULT_MAX_POINTS
    thumbnails: int = DEFAULT_THUMBNAILS
    seed: int = 0
    png: bool = True
    html: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_choice("method", self.method, PLOT_METHODS)
        check_choice("color", self.color, PLOT_COLORS)
        if isinstance(self.max_points, bool) or not 3 <= self.max_points <= MAX_POINTS:
            raise invalid("max_points", self.max_points, f"expected 3 to {MAX_POINTS}")
        if isinstance(self.thumbnails, bool) or not 0 <= self.thumbnails <= MAX_THUMBNAILS:
            raise invalid("thumbnails", self.thumbnails, f"expected 0 to {MAX_THUMBNAILS}")
        check_seed(self.seed)
        if not (self.png or self.html):
            raise invalid("png", self.png, "nothing to write: both png and html are off")
