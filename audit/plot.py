"""``plot_cache()``: a 2-D map of a cache's features (PCA, t-SNE or UMAP), coloured by label
or split: ``map.png`` (matplotlib), ``map.html`` (one self-contained page, thumbnails on
hover: :mod:`.plot_html`) and ``points.csv`` (every plotted row and its coordinates).

Features are read through :class:`~featcache.store.CacheReader` and L2-normalised
first (audit and search compare them by cosine too). A cache larger than ``max_points`` is
plotted from a seeded random sample; the result's notes say so.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..core.files import beside_cache, check_output_folder, fresh_file
from ..core.options import MAIN_TAP, check_choice, invalid
from ..core.progress import Status, progress_bar
from ..core.splits import SPLIT_NAMES
from ..errors import DatasetError, FeatcacheError
from ..store import CacheReader
from ..store import open_cache as store_open_cache
from ..store.format import first_line
from ..store.opening import with_tap
from ..store.search_index import normalize
from .map_points import UNLABELLED, MapPoints, palette
from .plot_options import AUTO_TSNE_MAX_POINTS, PCA_DIMS, PLOT_METHODS, UMAP_HINT, PlotOptions
from .tsne_progress import tsne_progress

__all__ = ["PlotOptions", "PlotResult", "check_method", "plot_cache", "write_run_map"]

MARKERS = ("o", "s", "^")
"""Marker of each split (train, val, test) in the PNG; the HTML draws the same shapes."""
_TITLES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


@dataclass
class PlotResult:
    """What :func:`plot_cache` wrote: ``files`` maps ``png``, ``html``, ``csv`` to paths."""

    cache: str
    rows: int
    points: int
    method: str
    color: str
    seed: int
    files: dict[str, str]
    thumbnails: int
    missing_thumbnails: int
    seconds: float
    notes: list[str]
    plotted_rows: np.ndarray = field(repr=False)
    coords: np.ndarray = field(repr=False)
    tap: str = MAIN_TAP
    """Whose features were mapped: ``main`` (the cache's features) or a tap's name
    (``extract --taps``; ``a+b``: side by side)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the arrays (``points.csv`` has them)."""
        out = asdict(self)
        del out["plotted_rows"], out["coords"]
        return out


def load_umap() -> ModuleType | None:
    """The ``umap`` module of umap-learn, or None when it is not installed."""
    try:
        import umap
    except ImportError:
        return None
    return umap


def check_method(method: str, parameter: str = "method") -> str:
    """``method`` when it is known and can run here (``umap`` needs umap-learn)."""
    check_choice(parameter, method, PLOT_METHODS)
    if method == "umap" and load_umap() is None:
        raise invalid(parameter, method, f"umap-learn is not installed; {UMAP_HINT}")
    return method


def resolve_method(method: str, points: int) -> str:
    """The method ``auto`` stands for: UMAP when umap-learn is installed, else t-SNE up to
    :data:`AUTO_TSNE_MAX_POINTS` points and PCA above."""
    check_method(method)
    if method != "auto":
        return method
    if load_umap() is not None:
        return "umap"
    return "tsne" if points <= AUTO_TSNE_MAX_POINTS else "pca"


def plot_cache(
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    options: PlotOptions | None = None,
    **values: Any,
) -> PlotResult:
    """Map the cache's features to 2-D and write ``map.png``, ``map.html`` and
    ``points.csv`` into the folder ``output`` (default: ``CACHE.plot/``).

    ``options`` (:class:`PlotOptions`), or keyword arguments of the same names, which
    override it: ``method`` (auto, pca, tsne, umap), ``color`` (label, split),
    ``max_points``, ``thumbnails`` (HTML points with a thumbnail), ``seed``, ``png``,
    ``html``, ``progress``, ``tap`` (the features of a tap of the cache, ``extract --taps``;
    the default folder is then ``CACHE@TAP.plot/`` and the title names the tap).

    >>> result = plot_cache("cache/mobilenet.h5", method="tsne")  # doctest: +SKIP
    >>> result.files["html"]  # doctest: +SKIP
    'cache/mobilenet.plot/map.html'
    """
    chosen = replace(options or PlotOptions(), **values)
    check_method(chosen.method)
    tap = chosen.tap.strip() if chosen.tap and chosen.tap.strip() else MAIN_TAP
    folder = Path(output) if output is not None else beside_cache(cache, ".plot", tap)
    check_folder(folder)
    started = time.monotonic()
    reader = open_cache(cache)
    if tap != MAIN_TAP:
        reader = with_tap(reader, tap)  # an unknown tap: refused before the folder is made
    created = make_folder(folder)
    try:
        points = project(
            reader, chosen.method, chosen.color, chosen.max_points, chosen.seed, chosen.progress
        )
        files, shown, missing = write_outputs(points, reader, folder, chosen)
    except BaseException:
        if created:  # nothing of this run is left in it: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return PlotResult(
        cache=str(cache),
        rows=len(reader),
        points=len(points.rows),
        method=points.method,
        color=chosen.color,
        seed=chosen.seed,
        files=files,
        thumbnails=shown,
        missing_thumbnails=missing,
        seconds=round(time.monotonic() - started, 3),
        notes=points.notes,
        plotted_rows=points.rows,
        coords=points.coords,
        tap=tap,
    )


OUTPUTS = {"png": "map.png", "html": "map.html", "csv": "points.csv"}
"""The files ``plot`` writes into its folder; a rerun replaces them and removes those it
no longer writes (``--no-html`` removes an earlier ``map.html``)."""
_PART = ".part-"
_LEFTOVER = re.compile(r"\.part-(?:[0-9a-f]{8}\.)?(map\.png|map\.html|points\.csv)")
"""A part an interrupted plot left (the names :func:`write_outputs` gives them, and the
fixed names of earlier versions); removed only when it is a regular file."""
"""Prefix of an output while it is written (renamed when every output is done)."""


def _owned(name: str) -> bool:
    plain = name.removeprefix(_PART)
    return plain in OUTPUTS.values() or _LEFTOVER.fullmatch(name) is not None


def check_folder(folder: Path) -> None:
    """Refuse ``folder`` unless it is new, empty or an earlier plot's (only files
    :data:`OUTPUTS` names): plot never replaces or removes files of another kind."""
    check_output_folder(
        folder,
        lambda p: _owned(p.name) and not p.is_dir(),
        "plot writes into a new or empty folder or an earlier plot's",
    )


def make_folder(folder: Path) -> bool:
    """Create ``folder`` (True when it did not exist) and check that files can be
    written there, before any feature is read."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=_PART, dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise invalid("output", str(folder), f"cannot write there ({first_line(exc)})") from None
    return created


def open_cache(cache: str | os.PathLike[str]) -> CacheReader:
    """The cache's reader (its errors' advice names ``featcache extract --overwrite``)."""
    return store_open_cache(cache)


def map_title(reader: CacheReader, points: MapPoints) -> str:
    """``c.h5: t-SNE of 300 rows``; a tap's: ``c.h5 (tap conv_pw_5_relu): ...`` (several
    side by side read as ``c@a+b``)."""
    tapped = f" (tap {reader.tap_name})" if reader.tap_name != MAIN_TAP else ""
    return f"{Path(reader.path).name}{tapped}: {_TITLES[points.method]} of {len(points.rows)} rows"


def write_outputs(
    points: MapPoints, reader: CacheReader, folder: Path, chosen: PlotOptions
) -> tuple[dict[str, str], int, int]:
    """Write the chosen outputs under temporary names, then rename them all and remove
    earlier outputs not written this time; (files, thumbnails shown, missing). On an
    error or Ctrl-C the folder keeps what it held."""
    title = map_title(reader, points)
    parts: dict[str, Path] = {}
    made: list[Path] = []
    shown = missing = 0

    def part(kind: str) -> Path:  # new, under a random name: nothing planted is followed
        made.append(fresh_file(folder, _PART, f".{OUTPUTS[kind]}"))  # keeps the extension
        return made[-1]

    try:
        try:
            if chosen.png:
                parts["png"] = write_png(points, part("png"), title, chosen.color)
            if chosen.html:
                from .plot_html import write_html

                parts["html"], shown, missing = write_html(
                    points, reader, part("html"), title, chosen
                )
            parts["csv"] = write_points(points, reader, part("csv"))
        except OSError as exc:
            raise FeatcacheError(
                f"could not write into {folder} ({first_line(exc)}); its earlier files are kept"
            ) from None
    except BaseException:
        for path in made:  # those written and the one being written
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    files = {}
    try:
        for kind, name in OUTPUTS.items():
            target = folder / name
            if kind in parts:
                os.replace(parts.pop(kind), target)
                files[kind] = str(target)
            else:  # an earlier run's output
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        for stale in folder.iterdir():  # a killed run's parts: plot's own, regular files
            if _LEFTOVER.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
                with contextlib.suppress(OSError):
                    stale.unlink()
    except OSError as exc:
        raise FeatcacheError(f"could not write into {folder} ({first_line(exc)})") from None
    return files, shown, missing


def project(
    reader: CacheReader,
    method: str,
    color: str,
    max_points: int,
    seed: int,
    progress: bool | None = False,
    split_of: np.ndarray | None = None,
) -> MapPoints:
    """Read (a sample of) the rows, normalise, and project them to 2-D; ``split_of`` (a
    split index per row) replaces the cache's splits."""
    n = len(reader)
    if n < 3:
        raise DatasetError(f"{reader.path}: {n} rows; a map needs at least 3")
    notes = []
    rng = np.random.default_rng(seed)
    if n > max_points:
        rows = np.sort(rng.choice(n, max_points, replace=False))
        notes.append(
            f"{max_points} of {n} rows plotted (a random sample, seed {seed}; "
            "max_points / --max-points plots more)"
        )
    else:
        rows = np.arange(n)
    x = np.empty((len(rows), reader.feature_dim), np.float32)
    bar = progress_bar(len(rows), progress, "plot: read")
    try:
        done = 0
        for _, block in reader.batches(rows, batch_size=4096):
            x[done : done + len(block)] = block
            done += len(block)
            bar.update(len(block))
    finally:
        bar.close()
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} rows with non-finite features left out")
        rows, x = rows[finite], x[finite]
        if len(rows) < 3:
            raise DatasetError(f"{reader.path}: fewer than 3 rows with finite features")
    used = resolve_method(method, len(rows))
    coords, more = _embed(normalize(x), used, seed, progress)
    splits = reader.split if split_of is None else np.asarray(split_of)
    labels, split = reader.labels[rows], splits[rows].astype(np.int64)
    if color == "split":
        groups, group = list(SPLIT_NAMES), split
    else:
        groups = list(reader.class_names)
        group = np.where(labels >= 0, labels, len(groups)).astype(np.int64)
        if (labels < 0).any():
            groups.append(UNLABELLED)
    return MapPoints(rows, coords, used, groups, group, split, notes + more)


def _embed(
    x: np.ndarray, method: str, seed: int, progress: bool | None = False
) -> tuple[np.ndarray, list[str]]:
    """(n x 2 float64 coordinates, notes) of unit-norm features ``x``; ``progress``: t-SNE's
    iterations on a bar (:mod:`.tsne_progress`), a status line with the time elapsed for
    PCA and UMAP (neither says how far it is)."""
    title = f"plot: {_TITLES[method]} of {len(x)} points"
    if method == "tsne":
        return _project(x, method, seed, progress)
    with Status(f"{title}…", progress):
        return _project(x, method, seed, progress)


def _project(
    x: np.ndarray, method: str, seed: int, progress: bool | None
) -> tuple[np.ndarray, list[str]]:
    from sklearn.decomposition import PCA

    n, dim = x.shape
    if method == "pca":
        k = min(2, dim, n)
        # exact (eigenvectors of the d x d covariance), not randomized: the map is the same
        # whatever the shape, and cheap for the rows a map holds
        pca = PCA(n_components=k, svd_solver="covariance_eigh")
        coords = pca.fit_transform(x)
        share = float(np.sum(pca.explained_variance_ratio_))
        note = f"PCA: the 2 components explain {share:.1%} of the variance"
        return _two_columns(coords), [note]
    notes = []
    if dim > PCA_DIMS and n > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
        notes.append(f"{_TITLES[method]} ran on the first {PCA_DIMS} principal components")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
        )
        with tsne_progress(tsne, progress, f"plot: t-SNE of {n} points"):
            coords = tsne.fit_transform(x)
        return _two_columns(coords), notes
    umap = load_umap()
    if umap is None:  # resolve_method checked; installed and removed since is unlikely
        raise invalid("method", method, f"umap-learn is not installed; {UMAP_HINT}")
    reducer = umap.UMAP(  # seeded, UMAP runs on one thread: n_jobs=1 says so (no warning)
        n_components=2, n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1
    )
    return _two_columns(reducer.fit_transform(x)), notes


def _two_columns(coords: np.ndarray) -> np.ndarray:
    coords = np.asarray(coords, np.float64)
    if coords.shape[1] < 2:  # one-dimensional features
        coords = np.column_stack([coords, np.zeros(len(coords))])
    return coords


LEGEND_MAX = 30
"""Legend entries the PNG shows at most (the HTML lists every group)."""


def legend_entries(
    points: MapPoints, color: str, colours: list[str] | None = None
) -> list[tuple[str, str, str]]:
    """(label, colour, marker) of each entry of the PNG's legend: the groups with points
    (at most :data:`LEGEND_MAX`, then one "+N more" entry), and when coloured by label
    and several splits are plotted, the marker of each split."""
    colours = colours or palette(points.groups)
    counts = np.bincount(points.group, minlength=len(points.groups))
    present = [g for g in range(len(points.groups)) if counts[g]]
    entries = [(f"{points.groups[g]} ({counts[g]})", colours[g], "o") for g in present[:LEGEND_MAX]]
    if len(present) > LEGEND_MAX:
        rest = present[LEGEND_MAX:]
        hidden = int(counts[rest].sum())
        entries.append((f"+{len(rest)} more ({hidden} points)", "#ffffff", ""))
    splits_present = sorted(set(points.split.tolist()))
    if color == "label" and len(splits_present) > 1:
        entries += [(SPLIT_NAMES[s], "#555555", MARKERS[s]) for s in splits_present]
    return entries


def write_png(points: MapPoints, path: Path, title: str, color: str = "label") -> Path:
    """The map as a PNG: a colour per group, a marker per split, the legend on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = palette(points.groups)
    n = len(points.rows)
    size = float(np.clip(4000 / max(n, 1), 3, 40))
    figure, axis = plt.subplots(figsize=(9, 7))
    splits_present = sorted(set(points.split.tolist()))
    for g in range(len(points.groups)):
        for s in splits_present:
            mask = (points.group == g) & (points.split == s)
            if mask.any():
                axis.scatter(
                    points.coords[mask, 0],
                    points.coords[mask, 1],
                    s=size,
                    c=colours[g],
                    marker=MARKERS[s % len(MARKERS)],
                    alpha=0.8,
                    linewidths=0,
                )
    handles = [
        Line2D([], [], ls="", marker=marker, color=colour, label=label)
        for label, colour, marker in legend_entries(points, color, colours)
    ]
    axis.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=8,
        frameon=False,
        title=color,
    )
    name = _TITLES[points.method]
    axis.set_xlabel(f"{name} 1")
    axis.set_ylabel(f"{name} 2")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_points(points: MapPoints, reader: CacheReader, path: Path) -> Path:
    """``points.csv``: row, path, class, split, x, y of every plotted row."""
    names = reader.label_names(points.rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "class", "split", "x", "y"])
        for i, row in enumerate(points.rows.tolist()):
            writer.writerow(
                [
                    row,
                    reader.paths[row],
                    names[i],
                    SPLIT_NAMES[int(points.split[i])],
                    f"{points.coords[i, 0]:.6g}",
                    f"{points.coords[i, 1]:.6g}",
                ]
            )
    return path


def write_run_map(
    reader: CacheReader,
    run_dir: Path,
    method: str,
    seed: int,
    split: np.ndarray | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """``map.png`` of a head's run folder (coloured by label, markers by split); returns
    what ``report.json`` records under ``map``.

    ``split`` (a split index per row of ``reader``) overrides the cache's own, so that rows
    train-head carved into val are marked val."""
    from .plot_options import DEFAULT_MAX_POINTS

    points = project(reader, method, "label", DEFAULT_MAX_POINTS, seed, progress, split)
    run_dir.mkdir(parents=True, exist_ok=True)
    title = map_title(reader, points)
    write_png(points, run_dir / "map.png", title)
    return {
        "png": "map.png",
        "method": points.method,
        "points": len(points.rows),
        "splits": {name: int((points.split == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        "notes": points.notes,
    }
