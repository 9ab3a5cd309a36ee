"""Fine-tuning: ``fine-tune`` unfreezes the top of the backbone under a trained head."""

from __future__ import annotations

from typing import Any

import click

from ..core.interrupt import StopRequest, ctrl_c_sets
from ..heads.options import FineTuneOptions
from ._options import flags
from ._output import render_fine_tune_report, render_json
from ._shared import (
    CONTEXT,
    handle_errors,
    interrupted,
    json_option,
    output_option,
    overwrite_option,
)

STOPPING = (
    "fine-tune: stopping at the end of this epoch; the best model so far is then evaluated "
    "and saved (Ctrl-C again: stop at once, without a report)"
)


@click.command("fine-tune", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option("--head", "head", type=click.Path(), required=True, help="A dense head run folder.")
@output_option("Run folder to write.")
@overwrite_option("Write the run into an -o folder that already holds files.")
@flags(FineTuneOptions)
@json_option("Print the report as JSON.")
@handle_errors
def fine_tune_command(cache: str, as_json: bool, **options: Any) -> None:
    """Unfreeze the top of the backbone under a trained head and train on CACHE's images."""
    from ..heads.finetune import fine_tune

    stop = StopRequest()  # armed while epochs train; any other time Ctrl-C stops at once
    with ctrl_c_sets(stop, STOPPING):
        # featcache's bars on stderr (Keras' own, verbose=1, would print to stdout)
        result = fine_tune(cache, progress=False if as_json else None, stop=stop, **options)
    if as_json:
        click.echo(render_json(result.report))
    else:
        click.echo(render_fine_tune_report(result.report, result.run_dir, result.skipped))
    if result.report["stopped_early"]:
        interrupted(f"training stopped early; the best model so far is in {result.run_dir}")
    elif stop.is_set():
        interrupted(f"Ctrl-C came in the last epoch, nothing was cut: {result.run_dir}")
