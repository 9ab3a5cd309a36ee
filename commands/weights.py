"""``weights``: which ImageNet weights files Keras has, where it keeps them, and fetching
the missing ones."""

from __future__ import annotations

import click

from ._output import render_json, render_weights
from ._shared import CONTEXT, handle_errors, json_option, quiet_option


@click.command("weights", context_settings=CONTEXT)
@click.argument("backbones", nargs=-1)
@click.option(
    "--image-size",
    type=click.IntRange(1, 4096),
    default=None,
    help="Input side; MobileNet and MobileNetV2 have one file per side (default 224).",
)
@click.option("--fetch", is_flag=True, help="Download the missing files into Keras's cache.")
@json_option("Print the files as JSON (with their URLs and hashes).")
@quiet_option("No progress bar while fetching.")
@handle_errors
def weights_command(
    backbones: tuple[str, ...], image_size: int | None, fetch: bool, as_json: bool, quiet: bool
) -> None:
    """List and fetch the ImageNet weights files Keras uses.

    For each of BACKBONES (default: every keras.applications backbone), the file name
    Keras caches its ImageNet weights under, whether it is there, and its size. Offline,
    copy a file into the folder shown under that name (its URL: --json), or give extract
    a weights file with --weights FILE. Given a weights file (.h5), it says which
    backbone the file was saved from.
    """
    from ..backbones.weights_files import fetch_missing, keras_cache_dir, weights_rows

    files = [name for name in backbones if name.lower().endswith((".h5", ".hdf5"))]
    if files:
        from ..extractor.weights_check import describe_weights_file

        for file in files:
            click.echo(f"{file}: {describe_weights_file(file)}")
        if len(files) == len(backbones):
            return
    names = [name for name in backbones if name not in files]
    size = (image_size, image_size) if image_size else None
    if fetch:
        for fetched in fetch_missing(names, size, progress=False if quiet else None):
            click.echo(f"fetched {fetched}", err=True)
    rows = weights_rows(names, size)
    if as_json:
        click.echo(render_json({"folder": str(keras_cache_dir()), "files": rows}))
    else:
        click.echo(render_weights(rows, str(keras_cache_dir())))
