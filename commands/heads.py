"""Heads on cached features: ``train-head``, ``compare``, ``predict`` and ``export``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..audit.plot_options import PLOT_METHODS
from ..heads.options import (
    DEFAULT_FEATURE_AUGMENT,
    DEFAULT_PROTOCOL,
    CompareOptions,
    HeadOptions,
    PredictOptions,
    ZeroShotOptions,
)
from ._options import flags
from ._output import (
    render_compare,
    render_compare_json,
    render_json,
    render_predictions,
    render_train_report,
    render_wrote,
    render_zero_shot_report,
)
from ._shared import (
    CONTEXT,
    handle_errors,
    json_option,
    output_option,
    overwrite_option,
    quiet_option,
)


class _Strength(click.ParamType):
    """``--feature-augment``'s optional number: a word after it is named as such."""

    name = "strength"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(
                f"{value!r} is not a strength: the option takes an optional number; give it "
                f"one (--feature-augment {DEFAULT_FEATURE_AUGMENT}) or put the "
                "option after the caches",
                param,
                ctx,
            )


@click.command("train-head", context_settings=CONTEXT)
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@output_option("Run folder. [default: runs/<cache-stem>-<head>-<timestamp>/]")
@overwrite_option("Write the run into an -o folder that already holds files.")
@flags(
    HeadOptions,
    feature_augment={
        "type": _Strength(),
        "is_flag": False,
        "flag_value": DEFAULT_FEATURE_AUGMENT,
        "show_default": False,
    },
)
@click.option(
    "--plot",
    type=click.Choice(PLOT_METHODS),
    default=None,
    help="Also write map.png, a 2-D map of the features by this method (see plot).",
)
@json_option("Print the report as JSON.")
@handle_errors
def train_head_command(
    caches: tuple[str, ...], head: str, hidden: str, as_json: bool, **options: Any
) -> None:
    """Train a classification head on the features of CACHES and report val and test metrics.

    Several caches train on their features concatenated, over the images in every cache
    (matched by content hash)."""
    from ..heads.train import train_head

    cache = caches[0] if len(caches) == 1 else ", ".join(caches)
    result = train_head(
        caches[0] if len(caches) == 1 else list(caches),
        head,
        hidden=hidden,
        progress=False if as_json else None,
        **options,
    )
    report = result.report
    if as_json:
        click.echo(render_json({**report, "run_dir": str(result.run_dir)}))
    else:
        click.echo(render_train_report(head, cache, report, result.run_dir))


@click.command("zero-shot", context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@output_option("Run folder. [default: runs/<cache-stem>-zero-shot-<timestamp>/]")
@flags(ZeroShotOptions)
@json_option("Print the report as JSON.")
@handle_errors
def zero_shot_command(cache: str, output: str | None, as_json: bool, **options: Any) -> None:
    """Classify CACHE's images from class names alone, with the text tower of its CLIP or
    SigLIP preset, and write a run folder that predict and export take.

    The cache must hold the preset's image embeddings (extract --projection; a CLIP cache
    of class tokens is projected here)."""
    from ..heads.zeroshot import zero_shot

    result = zero_shot(cache, output, progress=False if as_json else None, **options)
    if as_json:
        click.echo(render_json({**result.report, "run_dir": str(result.run_dir)}))
    else:
        click.echo(render_zero_shot_report(cache, result.report, result.run_dir))


@click.command("compare", context_settings=CONTEXT)
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@output_option("Folder. [default: runs/<cache-stem>-compare-<timestamp>/]")
@overwrite_option("Write into an -o folder that already holds files.")
@flags(CompareOptions, only=("protocol", "heads", "cv"))
@flags(HeadOptions, only=("epochs", "seed"))
@flags(CompareOptions, skip=("protocol", "heads", "cv"))
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="Also write the CSV here.")
@click.option("--plot", type=click.Path(), default=None, help="Bar chart PNG with the intervals.")
@json_option("Print the leaderboard as JSON.")
@handle_errors
def compare_command(
    caches: tuple[str, ...],
    output: str | None,
    overwrite: bool,
    protocol: str,
    heads: str,
    cv: int | None,
    epochs: int,
    seed: int,
    csv_path: str | None,
    plot: str | None,
    as_json: bool,
    **probe_options: Any,
) -> None:
    """Fit every head kind with a small search (or a probe protocol) on CACHES and print a
    leaderboard. Several caches: each one and their concatenation, on the images in every
    cache (matched by content hash)."""
    from ..heads.compare import compare
    from ..heads.probe import ProbeSettings

    taps = probe_options.pop("taps", None)
    given = {k: v for k, v in probe_options.items() if v is not None and v is not False}
    probe = None
    if given or protocol != DEFAULT_PROTOCOL:
        probe = ProbeSettings(**given, seed=seed, epochs=epochs)
    board = compare(
        caches[0] if len(caches) == 1 else list(caches),
        output,
        heads,
        cv,
        epochs,
        seed,
        protocol=protocol,
        probe=probe,
        csv_path=csv_path,
        plot=plot,
        progress=False if as_json else None,
        overwrite=overwrite,
        taps=taps,
    )
    if as_json:
        click.echo(render_compare_json(board, protocol, probed=probe is not None))
    else:
        several = len(caches) > 1 or taps is not None
        click.echo(render_compare(board, probe is not None, several, cv, plot))


@click.command("predict", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@output_option("CSV file. [default: predictions.csv; RUN/predictions.csv for a cache]")
@overwrite_option("Replace an existing output file.")
@flags(PredictOptions, only=("top_k", "batch_size"))
@quiet_option("No progress bar and no table.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load a head.joblib (a pickle: it can run code) from a run folder you trust.",
)
@handle_errors
def predict_command(
    model: str,
    images: tuple[str, ...],
    output: str | None,
    overwrite: bool,
    top_k: int,
    batch_size: int,
    quiet: bool,
    trust_pickle: bool,
) -> None:
    """Classify IMAGES (files, folders or globs) with MODEL; write predictions.csv.

    MODEL is a model.keras from `export` or `fine-tune`, or a head run of any kind (its
    backbone is rebuilt from the head's cache settings). `predict RUN CACHE.h5` (or a
    manifest of caches) applies a head run to the features of another cache instead.
    Heads without probabilities (linear-svm, ridge) write a `score` column: the softmax of
    their decision scores. An existing output file is refused unless --overwrite.
    """
    from pathlib import Path

    from ..heads.train import trusted_pickles
    from ..store.manifest import is_manifest

    PredictOptions(top_k=top_k, batch_size=batch_size)  # checked before any model loads
    one = images[0] if len(images) == 1 and Path(images[0]).is_file() else ""
    if one.endswith(".h5") or (one and is_manifest(one)):
        from ..heads.predict import predict_cache

        with trusted_pickles(trust_pickle):
            written = predict_cache(model, images[0], output, top_k, overwrite=overwrite)
        click.echo(render_wrote(written))
        return
    from ..heads.images import predict_images

    out = Path(output or "predictions.csv")
    with trusted_pickles(trust_pickle):
        results = predict_images(
            model,
            list(images),
            out,
            top_k,
            batch_size,
            progress=False if quiet else None,
            overwrite=overwrite,
        )
    click.echo(render_predictions(results, out, listed=not quiet and sys.stdout.isatty()))


@click.command("export", context_settings=CONTEXT)
@click.argument("run", type=click.Path())
@output_option("model.keras or a folder.", required=True)
@overwrite_option("Replace an existing model file or folder.")
@flags(PredictOptions, only=("format", "test_views"))
@handle_errors
def export_command(run: str, output: str, format: str, test_views: str, overwrite: bool) -> None:
    """Turn the head of RUN into one model taking images (resize, preprocessing, frozen
    backbone, head): a dense head, or a linear one (logreg, linear-svm, ridge) as one Dense
    layer. svm, knn and random-forest heads cannot be one model: `predict RUN IMAGES`."""
    from ..heads.endtoend import export

    click.echo(
        render_wrote(export(run, output, format, overwrite=overwrite, test_views=test_views))
    )
