"""Extraction and inspection: ``extract``, ``inspect`` and ``backbones``."""

from __future__ import annotations

from typing import Any

import click

from ..core import options as extract_defaults
from ..core.options import DTYPES, ENGINES, POOLING_MODES, PRECISIONS, RESIZE_MODES
from ..errors import InvalidOptionError
from ._output import render_backbones, render_cache_info, render_extract_summary, render_json
from ._shared import (
    client_tls_options,
    handle_errors,
    json_option,
    output_option,
    quiet_option,
    seed_option,
)


@click.command("extract")
@click.argument("data", type=click.Path())
@click.option(
    "--backbone",
    "-b",
    default=extract_defaults.DEFAULT_BACKBONE,
    show_default=True,
    help="Registry name (see `featcache backbones`), a saved .keras/.h5 model, or a keras-hub "
    "preset: hub:NAME, a preset folder, hf://... or kaggle://... (pip install 'featcache[hub]').",
)
@click.option(
    "--weights",
    "-w",
    default=extract_defaults.DEFAULT_WEIGHTS,
    show_default=True,
    help="imagenet (keras-hub: the preset's own), none (random, seeded) or a weights file.",
)
@output_option("Cache file to write. [default: cache/<backbone>.h5]")
@click.option(
    "--pooling",
    type=click.Choice(POOLING_MODES),
    default=extract_defaults.DEFAULT_POOLING,
    show_default=True,
    help="Global pooling of the feature map (avg, max; none keeps it whole, flattened); "
    "keras-hub transformers: cls, mean (avg: the same; class and register tokens skipped), "
    "cls+mean or none.",
)
@click.option(
    "--blocks",
    type=int,
    default=extract_defaults.DEFAULT_BLOCKS,
    show_default=True,
    help="Transformers: concatenate the pooled output of the last N blocks (DINOv2 linear eval).",
)
@click.option(
    "--projection/--no-projection",
    default=False,
    show_default=True,
    help="CLIP: features after the image projection; SigLIP: its attention-pooling head.",
)
@click.option("--layer", default=None, help="Take features from this inner layer.")
@click.option("--image-size", default=None, help="N or H,W. [default: the backbone's own size]")
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default=extract_defaults.DEFAULT_RESIZE,
    show_default=True,
    help="stretch, pad (resize_with_pad) or crop (centre crop to the aspect ratio).",
)
@click.option(
    "--preprocessing",
    default=extract_defaults.DEFAULT_PREPROCESSING,
    show_default=True,
    help="auto (the backbone's preprocess_input), none, or a backbone name.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=extract_defaults.DEFAULT_DTYPE,
    show_default=True,
    help="Storage type of the features.",
)
@click.option(
    "--precision",
    metavar="|".join(PRECISIONS),
    default=extract_defaults.DEFAULT_PRECISION,
    show_default=True,
    help="Compute precision of the backbone (Keras mixed precision); features stay float32 "
    "(stored as --dtype).",
)
@click.option(
    "--split",
    default=extract_defaults.DEFAULT_SPLIT,
    show_default=True,
    help="train,val[,test] ratios, from each image's content hash and --seed.",
)
@seed_option(extract_defaults.DEFAULT_SEED, "Seed of the split (and of random weights).")
@click.option(
    "--labels", type=click.Path(), default=None, help="Integer labels .npy for an .npy image array."
)
@click.option(
    "--batch-size", type=int, default=extract_defaults.DEFAULT_BATCH_SIZE, show_default=True
)
@click.option("--workers", type=int, default=None, help="Image decoding threads.")
@click.option(
    "--max-pixels",
    type=int,
    default=extract_defaults.DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Larger images are recorded as bad (decompression bombs).",
)
@click.option(
    "--checkpoint-seconds",
    type=float,
    default=extract_defaults.DEFAULT_CHECKPOINT_SECONDS,
    show_default=True,
    help="Commit finished rows to the cache at least this often.",
)
@click.option(
    "--views",
    type=int,
    default=None,
    help="Embeddings per image: view 0 the plain image, the rest augmented (cached views). "
    "[default: the cache's, else 1]",
)
@click.option(
    "--augment",
    default=None,
    metavar="LIST",
    help="Augmentations of views 1+: flip,crop,color (any subset). [default: the cache's, "
    "else with --views above 1 all]",
)
@click.option(
    "--augment-seed",
    type=int,
    default=None,
    help="Seed of the view augmentations (with each image's SHA-256 and view index). "
    f"[default: the cache's, else {extract_defaults.DEFAULT_SEED}]",
)
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other settings.")
@click.option(
    "--rehash",
    is_flag=True,
    help="Read and hash every file; by default a cached file whose size, mtime, ctime and "
    "inode are unchanged is not read again.",
)
@click.option(
    "--remote",
    metavar="HOST:PORT",
    default=None,
    help="Embed on a `featcache serve` server; images are read and the cache written here.",
)
@client_tls_options("--remote")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=ENGINES[0],
    show_default=True,
    help="ray: embed on a Ray actor pool (pip install 'featcache[ray]').",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    default=None,
    help="Ray cluster to join. [default: $RAY_ADDRESS, else a local Ray instance]",
)
@click.option(
    "--actors",
    type=int,
    default=None,
    help="Ray actors (each loads the backbone once). [default: as many as the cluster holds]",
)
@click.option("--cpus-per-actor", type=float, default=None, help="[default: 1]")
@click.option("--gpus-per-actor", type=float, default=None, help="[default: 0]")
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
    ray_address: str | None,
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
    from ..core.options import ExtractOptions, RayOptions
    from ..extraction import extract

    ray_options = None
    asked = (ray_address, actors, cpus_per_actor, gpus_per_actor)
    if options["engine"] == "ray":
        default = RayOptions()
        cpus = default.cpus_per_actor if cpus_per_actor is None else cpus_per_actor
        gpus = default.gpus_per_actor if gpus_per_actor is None else gpus_per_actor
        ray_options = RayOptions(ray_address, actors, cpus, gpus)
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
    try:
        settings = ExtractOptions(
            progress=progress, remote=client, ray_options=ray_options, **options
        )
        summary = extract(data, settings)
    finally:
        if client is not None:
            client.close()
    if as_json:
        click.echo(render_json(summary.to_dict()))
    elif not quiet:
        click.echo(render_extract_summary(summary))


@click.command("inspect")
@click.argument("cache", type=click.Path())
@json_option("Print everything as JSON.")
@handle_errors
def inspect_command(cache: str, as_json: bool) -> None:
    """Rows, dimension, classes per split, bad files and settings of a CACHE file."""
    from ..store import cache_info

    info = cache_info(cache)
    click.echo(render_json(info) if as_json else render_cache_info(info))


@click.command("backbones")
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
