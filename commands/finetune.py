"""Fine-tuning: ``fine-tune`` unfreezes the top of the backbone under a trained head."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..heads import options as head_defaults
from ..heads.options import AUGMENTATIONS, OPTIMIZERS
from ._output import render_fine_tune_report, render_json
from ._shared import handle_errors, json_option, output_option, seed_option


@click.command("fine-tune")
@click.argument("cache", type=click.Path())
@click.option("--head", "head", type=click.Path(), required=True, help="A dense head run folder.")
@output_option("Run folder to write.")
@click.option(
    "--schedule",
    type=click.Choice(head_defaults.SCHEDULES),
    default=head_defaults.FINE_TUNE_SCHEDULE,
    show_default=True,
    help="auto: from the head, the top layers, then more, warm-up + cosine and layer-wise "
    "learning rates, the best epoch by val (never below the head); fixed: one run with the "
    "options given (as before).",
)
@click.option(
    "--unfreeze",
    default=None,
    help="Number of top backbone layers to train, or all (auto: the deepest phase's). "
    f"[default: auto {head_defaults.FINE_TUNE_AUTO_UNFREEZE}, "
    f"fixed {head_defaults.FINE_TUNE_UNFREEZE}]",
)
@click.option("--unfreeze-from", default=None, help="Train from this backbone layer up.")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Learning rate (auto: the peak of the head and the top layers). "
    f"[default: auto {head_defaults.FINE_TUNE_AUTO_LR:g}, fixed {head_defaults.FINE_TUNE_LR:g}]",
)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default=head_defaults.FINE_TUNE_OPTIMIZER,
    show_default=True,
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Epochs (auto: of all phases). [default: auto "
    f"{head_defaults.FINE_TUNE_AUTO_EPOCHS}, fixed {head_defaults.FINE_TUNE_EPOCHS}]"
    if head_defaults.FINE_TUNE_AUTO_EPOCHS != head_defaults.FINE_TUNE_EPOCHS
    else f"Epochs (auto: of all phases). [default: {head_defaults.FINE_TUNE_EPOCHS}]",
)
@click.option(
    "--batch-size", type=int, default=head_defaults.FINE_TUNE_BATCH_SIZE, show_default=True
)
@click.option(
    "--patience",
    type=int,
    default=None,
    help="auto: epochs of a phase without a better val accuracy; fixed: EarlyStopping on "
    f"val loss. [default: auto {head_defaults.FINE_TUNE_AUTO_PATIENCE}, "
    f"fixed {head_defaults.FINE_TUNE_PATIENCE}]",
)
@click.option(
    "--augment",
    default=None,
    help=f"Some of {','.join(AUGMENTATIONS)} (training only; fixed: the first five). "
    f"[default: auto {head_defaults.FINE_TUNE_AUTO_AUGMENT}, fixed none]",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="auto: train at this side instead of the cache's (BatchNorm stays frozen; needs a "
    "global pooling). [default: the cache's]",
)
@click.option(
    "--balance",
    type=click.Choice(head_defaults.BALANCES),
    default=head_defaults.FINE_TUNE_BALANCE,
    show_default=True,
    help="auto schedule: weights: balanced class weights in the loss; auto: weights when "
    f"the largest train class has {head_defaults.BALANCE_RATIO:g}x the rows of the smallest.",
)
@click.option(
    "--warmup",
    type=float,
    default=head_defaults.FINE_TUNE_WARMUP,
    show_default=True,
    help="auto: share of each phase's steps warming the learning rate up.",
)
@click.option(
    "--lr-decay",
    type=float,
    default=head_defaults.FINE_TUNE_LR_DECAY,
    show_default="1/2.6",
    help="auto: learning-rate factor between successive backbone layer groups (1: none).",
)
@seed_option(head_defaults.DEFAULT_SEED)
@json_option("Print the report as JSON.")
@handle_errors
def fine_tune_command(cache: str, as_json: bool, **options: Any) -> None:
    """Unfreeze the top of the backbone under a trained head and train on CACHE's images."""
    from ..heads.finetune import fine_tune

    verbose = 0 if as_json or not sys.stderr.isatty() else 1
    result = fine_tune(cache, verbose=verbose, **options)
    if as_json:
        click.echo(render_json(result.report))
    else:
        click.echo(render_fine_tune_report(result.report, result.run_dir, result.skipped))
