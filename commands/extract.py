"""Extraction and inspection: ``extract``, ``inspect``, ``manifest`` and ``backbones``."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from ..core.interrupt import ctrl_c_sets
from ..core.options import ExtractOptions, RayOptions
from ..errors import ExtractionCancelled, InvalidOptionError
from ._options import flags
from ._output import (
    render_backbones,
    render_cache_info,
    render_extract_summary,
    render_json,
    render_verify,
)
from ._shared import (
    CONTEXT,
    client_tls_options,
    handle_errors,
    interrupted,
    json_option,
    quiet_option,
)


@click.command("extract", context_settings=CONTEXT)
@click.argument("data", type=click.Path())
@flags(ExtractOptions)
@client_tls_options("--remote")
@flags(  # None: not asked for (they need --engine ray); RayOptions' defaults apply
    RayOptions,
    cpus_per_actor={"default": None},
    gpus_per_actor={"default": None},
)
@quiet_option("No progress bar and no summary.")
@json_option("Print the summary as JSON.")
@handle_errors
def extract_command(
    data: str,
    quiet: bool,
    as_json: bool,
    remote: str | None,
    token_file: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    address: str | None,
    actors: int | None,
    cpus_per_actor: float | None,
    gpus_per_actor: float | None,
    **options: Any,
) -> None:
    """Embed every image of DATA into an HDF5 cache (resumable, incremental).

    DATA is a folder of class sub-folders, a flat folder, a folder with train/,
    val/ and test/ at its top, or an .npy array of images. With --remote, --weights
    and a saved-model --backbone name files under the server's --weights-root.
    With --engine ray, images are embedded on a Ray actor pool; every node must see
    DATA and the weights file at the same paths.
    """
    from ..extraction import extract

    ray_options = None
    asked = (address, actors, cpus_per_actor, gpus_per_actor)
    if options["engine"] == "ray":
        default = RayOptions()
        cpus = default.cpus_per_actor if cpus_per_actor is None else cpus_per_actor
        gpus = default.gpus_per_actor if gpus_per_actor is None else gpus_per_actor
        ray_options = RayOptions(address, actors, cpus, gpus)
    elif any(value is not None for value in asked):
        raise InvalidOptionError("--ray-address, --actors and --*-per-actor need --engine ray")

    client = None
    if remote is not None:
        from ..service.client import Client

        client = Client(
            remote, token_file=token_file, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
        )
    elif token_file or tls_ca or tls_cert or tls_key:
        raise InvalidOptionError("--token-file and --tls-* apply to --remote only")
    progress = False if quiet or as_json else None
    stop = threading.Event()
    try:
        settings = ExtractOptions(
            progress=progress, remote=client, ray_options=ray_options, **options
        )
        if options["engine"] == "ray":  # it checks between shards only: Ctrl-C at once
            summary = extract(data, settings)
        else:
            with ctrl_c_sets(stop, "stopping after the current batch (Ctrl-C again: at once)"):
                summary = extract(data, settings, cancel=stop)
    except ExtractionCancelled:
        if not stop.is_set():
            raise
        interrupted("finished batches were saved; rerun to resume")
    except KeyboardInterrupt:  # a second Ctrl-C: at once
        interrupted("finished batches were saved; rerun to resume")
    finally:
        if client is not None:
            client.close()
    if as_json:
        click.echo(render_json(summary.to_dict()))
    elif not quiet:
        click.echo(render_extract_summary(summary))


@click.command("inspect", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option(
    "--verify",
    is_flag=True,
    help="Re-read every row's file and compare its SHA-256 with the cache's (exit status 1 "
    "when some changed or cannot be read).",
)
@click.option(
    "--verify-sample",
    type=int,
    default=None,
    metavar="N",
    help="With --verify: a seeded random sample of N rows instead of all.",
)
@json_option("Print everything as JSON.")
@quiet_option("No progress bar (--verify).")
@handle_errors
def inspect_command(
    cache: str, verify: bool, verify_sample: int | None, as_json: bool, quiet: bool
) -> None:
    """Rows, dimension, classes per split, bad files and settings of a CACHE file (of a
    manifest: the whole dataset, then its caches); with --verify, whether the files behind
    its rows still hold what was embedded."""
    from ..store import cache_info

    if verify_sample is not None and not verify:
        raise InvalidOptionError("--verify-sample needs --verify")
    if not verify:
        info = cache_info(cache)
        click.echo(render_json(info) if as_json else render_cache_info(info))
        return
    from ..extractor.verify import verify_cache

    result = verify_cache(cache, verify_sample, progress=False if quiet or as_json else None)
    click.echo(render_json(result.to_dict()) if as_json else render_verify(result))
    if not result.ok:
        sys.exit(1)


@click.command("manifest", context_settings=CONTEXT)
@click.argument("output", type=click.Path())
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option(
    "--joint",
    is_flag=True,
    help="The caches hold the same images under other backbones: join their features by "
    "content hash (as train-head A.h5 B.h5 does) instead of concatenating their rows.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@json_option("Print the dataset as inspect --json does.")
@handle_errors
def manifest_command(
    output: str, caches: tuple[str, ...], joint: bool, overwrite: bool, as_json: bool
) -> None:
    """Write OUTPUT, a manifest naming CACHES as one dataset: shards of one dataset (rows
    concatenated; they must agree on settings and hold no row twice), or with --joint the
    same images under several backbones. search, audit, train-head, compare, predict,
    plot, export-features, inspect and the Search RPC take the manifest as a cache."""
    from ..store.opening import cache_info, create_manifest

    created = create_manifest(output, caches, "joint" if joint else "shards", overwrite)
    info = cache_info(created.path)
    click.echo(render_json(info) if as_json else render_cache_info(info))


@click.command("backbones", context_settings=CONTEXT)
@json_option("Print the registry as JSON.")
def backbones_command(as_json: bool) -> None:
    """List the registered backbones: keras.applications, then keras-hub presets."""
    from ..backbones.hub import list_hub_backbones
    from ..backbones.registry import list_backbones

    rows = [
        {
            "name": s.name,
            "class": s.class_name,
            "family": s.module,
            "default_size": s.default_size,
            "feature_dim": s.feature_dim,
            "min_size": s.min_size,
            "preprocessing": s.preprocessing,
            "source": "keras.applications",
        }
        for s in list_backbones()
    ]
    rows += [
        {
            "name": h.name,
            "family": h.family,
            "default_size": h.default_size,
            "feature_dim": h.feature_dim,
            "min_size": h.min_size,
            "preprocessing": "the preset's ImageConverter",
            "source": h.source,
        }
        for h in list_hub_backbones()
    ]
    click.echo(render_json(rows) if as_json else render_backbones(rows))
