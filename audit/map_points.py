"""The projected points of a map and their colours, shared by the PNG (:mod:`.plot`) and
the HTML page (:mod:`.plot_html`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNLABELLED = "(unlabelled)"


@dataclass
class MapPoints:
    """The projected points: ``rows`` of the cache and their ``coords`` (n x 2)."""

    rows: np.ndarray
    coords: np.ndarray
    method: str
    groups: list[str]
    """Legend entries: class names (and :data:`UNLABELLED`), or the split names."""
    group: np.ndarray
    """Index into :attr:`groups` of each point."""
    split: np.ndarray
    notes: list[str] = field(default_factory=list)


def palette(groups: list[str]) -> list[str]:
    """A hex colour per group: tab10 / tab20 when they suffice, else spread over turbo;
    :data:`UNLABELLED` is grey."""
    import matplotlib
    from matplotlib.colors import to_hex

    named = [g for g in groups if g != UNLABELLED]
    if len(named) <= 20:  # qualitative maps: integer i is the i-th colour
        table = matplotlib.colormaps["tab10" if len(named) <= 10 else "tab20"]
        colours = [to_hex(table(i)) for i in range(len(named))]
    else:
        turbo = matplotlib.colormaps["turbo"]
        colours = [to_hex(turbo(v)) for v in np.linspace(0.05, 0.95, len(named))]
    picked = iter(colours)
    return ["#999999" if g == UNLABELLED else next(picked) for g in groups]
