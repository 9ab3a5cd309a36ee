"""Dataset tools on a cache: ``audit``, ``search``, ``plot`` and ``export-features``."""

from __future__ import annotations

from typing import Any

import click

from ..audit import options as audit_defaults
from ..audit.options import AuditOptions
from ..audit.plot_options import PlotOptions
from ..errors import InvalidOptionError
from ..store.ann_plan import IndexChoice
from ._options import flags
from ._output import (
    render_audit_summary,
    render_export_features,
    render_json,
    render_plot,
    render_search,
)
from ._shared import (
    CONTEXT,
    handle_errors,
    interrupted,
    json_option,
    output_option,
    quiet_option,
)


@click.command("audit", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@output_option("Report folder. [default: CACHE.audit/]")
@flags(AuditOptions)
@click.option(
    "--fix-splits",
    is_flag=True,
    help="Move each leaking duplicate group into the split of its first row, in the cache.",
)
@json_option("Print the summary as JSON.")
@quiet_option("No progress bar.")
@handle_errors
def audit_command(
    cache: str,
    output: str | None,
    fix_splits: bool,
    as_json: bool,
    quiet: bool,
    **chosen: Any,
) -> None:
    """Duplicates, near-duplicates, split leakage, outliers and likely label errors of a
    CACHE: report.json, CSV lists and report.html (thumbnails) in the report folder.

    With --tap, in the space of that tap's features (extract --taps); the report folder
    is then CACHE@TAP.audit/ unless -o names one."""
    from pathlib import Path

    from ..audit.audit import audit_cache
    from ..audit.audit import fix_splits as fix
    from ..audit.output import check_report_folder, default_report_folder, write_audit_report
    from ..store.manifest import is_manifest

    options = AuditOptions(progress=False if quiet else None, **chosen)
    if fix_splits and is_manifest(cache):
        raise InvalidOptionError(
            f"--fix-splits rewrites one cache file and {cache} is a manifest; audit each "
            "cache it names with --fix-splits"
        )
    out = Path(output) if output else default_report_folder(cache, options.tap)
    check_report_folder(out)  # refused before the audit runs, not after
    report = audit_cache(cache, options)
    write_audit_report(report, out)
    summary = report.summary()
    summary["report"] = str(out)
    if fix_splits:
        summary["moved_rows"] = len(fix(report))
    click.echo(render_json(summary) if as_json else render_audit_summary(summary))


@click.command("search", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.argument("image", required=False, type=click.Path())
@click.option("--row", type=int, default=None, help="Search with the features of this row.")
@click.option(
    "--text",
    default=None,
    help="Search with a text, through the text tower of the cache's CLIP or SigLIP preset.",
)
@click.option(
    "-k", "--k", "k", type=int, default=audit_defaults.DEFAULT_SEARCH_K, show_default=True
)
@click.option(
    "--tap",
    default=None,
    metavar="NAME",
    help="Search a tap's features (extract --taps): its layer name, main (the features), "
    "or a+b side by side; an image is embedded up to that layer (each of a+b's). Not with "
    "--text.",
)
@click.option("--rebuild", is_flag=True, help="Rebuild the index from scratch first.")
@click.option(
    "--exact",
    is_flag=True,
    help="Scan every row (CACHE.search.npy), even where the approximate index would answer.",
)
@flags(IndexChoice)
@json_option("Print the hits as JSON.")
@quiet_option("No progress bar.")
@handle_errors
def search_command(
    cache: str,
    image: str | None,
    row: int | None,
    text: str | None,
    k: int,
    tap: str | None,
    rebuild: bool,
    exact: bool,
    index_memory: str,
    exact_below: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """The k rows of CACHE most similar (cosine) to IMAGE, to --row N or to --text WORDS.

    IMAGE is embedded with the cache's own backbone settings; a text with the text tower
    of its CLIP or SigLIP preset (a cache extracted with --projection). The index is built on first
    use and kept up to date as the cache changes: exact (CACHE.search.npy) under
    --exact-below rows, else a faiss IVF index (CACHE.search.faiss, recall@10 >= 0.95)
    to which later extracts only add or remove rows. A tap (--tap) has an index of its
    own (CACHE.search@TAP.npy, ...).
    """
    from ..audit.search import search

    result = search(
        cache,
        image,
        row,
        k,
        rebuild,
        progress=False if quiet else None,
        exact=exact,
        index_memory=index_memory,
        exact_below=exact_below,
        text=text,
        tap=tap,
    )
    click.echo(render_json(result.to_dict()) if as_json else render_search(result))


@click.command("plot", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@output_option(
    "Folder: new, empty or an earlier plot's (whose outputs are replaced). [default: CACHE.plot/]"
)
@flags(PlotOptions)
@json_option("Print the result as JSON.")
@quiet_option("No progress bar.")
@handle_errors
def plot_command(
    cache: str, output: str | None, as_json: bool, quiet: bool, **options: Any
) -> None:
    """A 2-D map of the features of CACHE (PCA, t-SNE or UMAP), coloured by label or split:
    map.png, an interactive map.html (image on hover) and points.csv in the output folder
    (with --tap: of that tap's features, in CACHE@TAP.plot/ unless -o names one)."""
    from ..audit.plot import plot_cache

    try:
        result = plot_cache(cache, output, progress=False if quiet else None, **options)
    except KeyboardInterrupt:
        interrupted("no map written; the output folder keeps what it held")
    click.echo(render_json(result.to_dict()) if as_json else render_plot(result))


@click.command("export-features", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option(
    "--format",
    "format_",
    type=click.Choice(("parquet", "npy", "lance")),
    default="parquet",
    show_default=True,
    help="parquet: one file, features a fixed-size list column; npy: clip-retrieval's "
    "img_emb/ + metadata/ folders (embedding-reader); lance: a Lance dataset (the lance extra).",
)
@output_option("[default: CACHE.parquet, CACHE-npy/ or CACHE.lance next to the cache]")
@click.option(
    "--dtype",
    type=click.Choice(("float32", "float16")),
    default="float32",
    show_default=True,
    help="Type of the exported features.",
)
@click.option(
    "--normalize/--no-normalize",
    default=None,
    help="Scale each feature vector to unit L2 norm.  [default: on for npy, as clip-retrieval "
    "writes it; off for parquet and lance]",
)
@click.option(
    "--absolute-paths/--relative-paths",
    default=None,
    help="The path column as dataset_root/path, or as stored in the cache.  [default: "
    "absolute for npy, so clip-back can open the images; relative for parquet and lance]",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output, only if it is an earlier export of this format.",
)
@click.option(
    "--tap",
    default=None,
    metavar="NAME",
    help="Write the features of this tap of the cache (extract --taps; a+b side by side).",
)
@json_option("Print the summary as JSON.")
@quiet_option("No progress bar.")
@handle_errors
def export_features_command(
    cache: str,
    format_: str,
    output: str | None,
    dtype: str,
    normalize: bool | None,
    absolute_paths: bool | None,
    overwrite: bool,
    tap: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write the rows of CACHE (path, label, class, split, sha256, features) as Parquet,
    as clip-retrieval's npy + parquet layout, or as Lance, in row order."""
    from ..store.export import export_features

    try:
        summary = export_features(
            cache,
            output,
            format_,
            dtype,
            overwrite,
            progress=False if quiet else None,
            normalize=normalize,
            absolute_paths=absolute_paths,
            tap=tap,
        )
    except KeyboardInterrupt:
        interrupted("nothing was exported; an existing output is unchanged")
    click.echo(render_json(summary.to_dict()) if as_json else render_export_features(summary))
