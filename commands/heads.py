"""Heads on cached features: ``train-head``, ``compare``, ``predict`` and ``export``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..audit import plot_options as plot_defaults
from ..heads import options as head_defaults
from ..heads.options import (
    EXPORT_FORMATS,
    HEAD_KINDS,
    MONITORS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PROTOCOLS,
)
from ._output import (
    render_compare,
    render_compare_json,
    render_json,
    render_predictions,
    render_train_report,
    render_wrote,
)
from ._shared import handle_errors, json_option, output_option, quiet_option, seed_option


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
                f"one (--feature-augment {head_defaults.DEFAULT_FEATURE_AUGMENT}) or put the "
                "option after the caches",
                param,
                ctx,
            )


@click.command("train-head")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option(
    "--head",
    "kind",
    default=head_defaults.DEFAULT_HEAD,
    show_default=True,
    type=click.Choice(HEAD_KINDS),
    help="Keras dense head or a scikit-learn baseline.",
)
@output_option("Run folder. [default: runs/<cache-stem>-<head>-<timestamp>/]")
@click.option(
    "--hidden",
    default=",".join(str(w) for w in head_defaults.DEFAULT_HIDDEN),
    show_default=True,
    help="Hidden layer widths, e.g. 512,128 (none: a linear softmax).",
)
@click.option("--dropout", type=float, default=head_defaults.DEFAULT_DROPOUT, show_default=True)
@click.option("--batchnorm", is_flag=True, help="BatchNormalization after each hidden Dense.")
@click.option("--activation", default=head_defaults.DEFAULT_ACTIVATION, show_default=True)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default=head_defaults.DEFAULT_OPTIMIZER,
    show_default=True,
)
@click.option(
    "--lr", type=float, default=head_defaults.DEFAULT_LR, show_default=True, help="Learning rate."
)
@click.option("--momentum", type=float, default=head_defaults.DEFAULT_MOMENTUM, show_default=True)
@click.option("--epochs", type=int, default=head_defaults.DEFAULT_EPOCHS, show_default=True)
@click.option("--batch-size", type=int, default=head_defaults.DEFAULT_BATCH_SIZE, show_default=True)
@click.option(
    "--patience",
    type=int,
    default=head_defaults.DEFAULT_PATIENCE,
    show_default=True,
    help="EarlyStopping patience (best weights restored); 0 disables it.",
)
@click.option(
    "--monitor",
    type=click.Choice(MONITORS),
    default=head_defaults.DEFAULT_MONITOR,
    show_default=True,
)
@click.option("--from-logits", is_flag=True, help="Linear output and a from_logits loss.")
@click.option("--class-weight", type=click.Choice(("balanced",)), default=None)
@click.option(
    "--C",
    "C",
    type=float,
    default=head_defaults.DEFAULT_C,
    show_default=True,
    help="Inverse regularisation of logreg, linear-svm and svm.",
)
@click.option(
    "--k", type=int, default=head_defaults.DEFAULT_K, show_default=True, help="Neighbours of knn."
)
@click.option(
    "--n-estimators",
    type=int,
    default=head_defaults.DEFAULT_N_ESTIMATORS,
    show_default=True,
    help="Trees of random-forest.",
)
@click.option(
    "--max-depth",
    type=int,
    default=head_defaults.DEFAULT_MAX_DEPTH,
    help="Tree depth of random-forest.",
)
@click.option(
    "--alpha",
    type=float,
    default=head_defaults.DEFAULT_ALPHA,
    show_default=True,
    help="Ridge penalty.",
)
@click.option(
    "--standardize/--no-standardize",
    default=None,
    help="Standardise features. [default: on for logreg, svm, knn, ridge]",
)
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Stream the dense head's features from disk. [default: when large]",
)
@click.option(
    "--views",
    type=click.Choice(head_defaults.VIEW_MODES),
    default=head_defaults.DEFAULT_VIEWS,
    show_default=True,
    help="Cached views (extract --views) to train on: plain (view 0), one (a random view "
    "per row and epoch, dense), all (every view a row), mean (their mean). Val and test "
    "use view 0.",
)
@click.option(
    "--feature-augment",
    type=_Strength(),
    default=0.0,
    is_flag=False,
    flag_value=head_defaults.DEFAULT_FEATURE_AUGMENT,
    metavar="[STRENGTH]",
    help="Dense head: FroFA-style feature augmentation, per-channel scale and shift "
    f"redrawn every epoch. [alone: {head_defaults.DEFAULT_FEATURE_AUGMENT}]",
)
@click.option(
    "--val-fraction",
    type=float,
    default=head_defaults.DEFAULT_VAL_FRACTION,
    show_default=True,
    help="Share of train carved into val when the cache has no val split.",
)
@seed_option(head_defaults.DEFAULT_SEED)
@click.option(
    "--plot",
    type=click.Choice(plot_defaults.PLOT_METHODS),
    default=None,
    help="Also write map.png, a 2-D map of the features by this method (see plot).",
)
@json_option("Print the report as JSON.")
@handle_errors
def train_head_command(
    caches: tuple[str, ...], kind: str, hidden: str, as_json: bool, **options: Any
) -> None:
    """Train a classification head on the features of CACHES and report val and test metrics.

    Several caches train on their features concatenated, over the images in every cache
    (matched by content hash)."""
    from ..heads.train import train_head

    cache = caches[0] if len(caches) == 1 else ", ".join(caches)
    result = train_head(
        caches[0] if len(caches) == 1 else list(caches), kind, hidden=hidden, **options
    )
    report = result.report
    if as_json:
        click.echo(render_json({**report, "run_dir": str(result.run_dir)}))
    else:
        click.echo(render_train_report(kind, cache, report, result.run_dir))


@click.command("compare")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@output_option("Folder. [default: runs/<cache-stem>-compare-<timestamp>/]")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default=head_defaults.DEFAULT_PROTOCOL,
    show_default=True,
    help="quick: every head kind's small grid; linear-probe: L-BFGS logistic regression "
    "over a C sweep; knn: cosine-weighted kNN; full: both and the dense head grid.",
)
@click.option("--heads", default=",".join(HEAD_KINDS), show_default=True)
@click.option("--cv", type=int, default=None, help="Select by K-fold CV on train+val.")
@click.option("--epochs", type=int, default=head_defaults.DEFAULT_EPOCHS, show_default=True)
@seed_option(head_defaults.DEFAULT_SEED)
@click.option(
    "--c-grid",
    default=None,
    help="linear-probe: C values, LOW:HIGH:N log-spaced or a comma list. "
    f"[default: {head_defaults.DEFAULT_C_GRID}]",
)
@click.option(
    "--knn-ks",
    default=None,
    help="knn: neighbour counts chosen from on val. "
    f"[default: {','.join(str(k) for k in head_defaults.KNN_KS)}]",
)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help=f"knn: votes weigh exp(cosine/T). [default: {head_defaults.KNN_TEMPERATURE}]",
)
@click.option(
    "--normalize",
    type=click.Choice(NORMALIZATIONS),
    default=None,
    help="Feature transform fitted on train. [default: standardize for linear-probe, "
    "l2 for knn, none for dense]",
)
@click.option("--shots", type=int, default=None, help="Few-shot: K training images per class.")
@click.option(
    "--seeds",
    type=int,
    default=None,
    help=f"Few-shot draws. [default: {head_defaults.DEFAULT_FEW_SHOT_SEEDS}]",
)
@click.option(
    "--bootstrap",
    type=int,
    default=None,
    help="Test resamples of the 95% intervals (0: none). "
    f"[default: {head_defaults.DEFAULT_BOOTSTRAP}]",
)
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="Also write the CSV here.")
@click.option("--plot", type=click.Path(), default=None, help="Bar chart PNG with the intervals.")
@json_option("Print the leaderboard as JSON.")
@handle_errors
def compare_command(
    caches: tuple[str, ...],
    output: str | None,
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

    given = {name: value for name, value in probe_options.items() if value is not None}
    probe = None
    if given or protocol != head_defaults.DEFAULT_PROTOCOL:
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
    )
    if as_json:
        click.echo(render_compare_json(board, protocol, probed=probe is not None))
    else:
        click.echo(render_compare(board, probe is not None, len(caches) > 1, cv, plot))


@click.command("predict")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@output_option("CSV file. [default: predictions.csv; RUN/predictions.csv for a cache]")
@click.option("--top-k", type=int, default=head_defaults.DEFAULT_TOP_K, show_default=True)
@click.option(
    "--batch-size", type=int, default=head_defaults.DEFAULT_PREDICT_BATCH_SIZE, show_default=True
)
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
    top_k: int,
    batch_size: int,
    quiet: bool,
    trust_pickle: bool,
) -> None:
    """Classify IMAGES (files, folders or globs) with MODEL; write predictions.csv.

    MODEL is a model.keras from `export` or `fine-tune`, or a dense head run (its
    backbone is rebuilt from the head's cache settings). `predict RUN CACHE.h5` applies
    a head run to the features of another cache instead.
    """
    from pathlib import Path

    from ..heads.train import trusted_pickles

    head_defaults.check_options({"top_k": top_k, "batch_size": batch_size})
    if len(images) == 1 and images[0].endswith(".h5") and Path(images[0]).is_file():
        from ..heads.predict import predict_cache

        with trusted_pickles(trust_pickle):
            written = predict_cache(model, images[0], output, top_k)
        click.echo(render_wrote(written))
        return
    from ..heads.images import predict_images

    out = Path(output or "predictions.csv")
    with trusted_pickles(trust_pickle):
        results = predict_images(
            model, list(images), out, top_k, batch_size, progress=False if quiet else None
        )
    click.echo(render_predictions(results, out, listed=not quiet and sys.stdout.isatty()))


@click.command("export")
@click.argument("run", type=click.Path())
@output_option("model.keras or a folder.", required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default=head_defaults.DEFAULT_EXPORT_FORMAT,
    show_default=True,
    help="savedmodel: a TensorFlow SavedModel folder for TF Serving.",
)
@handle_errors
def export_command(run: str, output: str, fmt: str) -> None:
    """Turn the dense head of RUN into one model taking images (resize, preprocessing,
    frozen backbone, head)."""
    from ..heads.endtoend import export

    click.echo(render_wrote(export(run, output, fmt)))
