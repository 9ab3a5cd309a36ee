"""Command line: ``featcache`` (a group of every command) and the ``extract`` shortcut.

Each command is a thin adapter over the Python API. Library errors become one-line
messages: exit status 2 for usage or input errors, 1 for anything else.
TensorFlow is imported only by the commands that run a model.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .audit import options as audit_defaults
from .audit import plot_options as plot_defaults
from .core import options as extract_defaults
from .core.options import DTYPES, ENGINES, POOLING_MODES, PRECISIONS, RESIZE_MODES
from .errors import FeatcacheError, InvalidOptionError
from .heads import options as head_defaults
from .heads.options import (
    AUGMENTATIONS,
    EXPORT_FORMATS,
    HEAD_KINDS,
    MONITORS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PROTOCOLS,
)
from .service.options import ServeOptions

_SERVE = ServeOptions()
_FLAGS = {"models": "--model"}
"""Python parameters whose flag is not ``--`` + the name with dashes."""


def flag_message(exc: FeatcacheError) -> str:
    """The error's message, naming the CLI flag where the library names a parameter."""
    text = str(exc)
    parameter = getattr(exc, "parameter", None)
    if parameter and text.startswith(parameter):
        flag = _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))
        text = flag + text[len(parameter) :]
    return text


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library exceptions into one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeatcacheError as exc:
            click.echo(f"error: {flag_message(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished batches were saved; rerun to resume", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("FEATCACHE_DEBUG"):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"error: {type(exc).__name__}: {text} (FEATCACHE_DEBUG=1 shows more)", err=True
            )
            sys.exit(1)

    return wrapper


def _print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featcache")
def main() -> None:
    """Embed an image dataset once with a frozen backbone; train heads on the cache."""


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
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Cache file to write. [default: cache/<backbone>.h5]",
)
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
@click.option(
    "--seed",
    type=int,
    default=extract_defaults.DEFAULT_SEED,
    show_default=True,
    help="Seed of the split (and of random weights).",
)
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
@click.option("--token-file", type=click.Path(), default=None, help="Bearer token for --remote.")
@click.option("--tls-ca", type=click.Path(), default=None, help="CA certificate: use TLS.")
@click.option("--tls-cert", type=click.Path(), default=None, help="Client certificate (mTLS).")
@click.option("--tls-key", type=click.Path(), default=None, help="Client key (mTLS).")
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_handle_errors
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
    from .core.options import ExtractOptions, RayOptions
    from .extraction import extract

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
        from .service.client import Client

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
        _print_json(summary.to_dict())
    elif not quiet:
        _print_summary(summary)


def _print_summary(summary: Any) -> None:
    views = f" x {summary.views} views" if summary.views > 1 else ""
    click.echo(
        f"{summary.output}: {summary.rows} rows x {summary.feature_dim}{views} ({summary.backbone})"
    )
    click.echo(
        f"  new {summary.new}, reused {summary.reused}, removed {summary.removed}, "
        f"bad {summary.bad}, ignored {summary.ignored} non-image files"
    )
    line = f"  {summary.seconds:.1f} s, {summary.images_per_second:.1f} new images/s"
    embedding = summary.seconds - summary.load_seconds
    if summary.load_seconds > 0 and summary.new and embedding > 0:
        line += (
            f" ({summary.load_seconds:.1f} s loading TensorFlow and the model, then "
            f"{summary.new / embedding:.1f} images/s)"
        )
    click.echo(line)
    if summary.classes:
        names = ", ".join(summary.classes[:12]) + (" ..." if len(summary.classes) > 12 else "")
        click.echo(f"  {len(summary.classes)} classes: {names}")
    for path, reason in summary.bad_files[:10]:
        click.echo(f"  bad: {path}: {reason}")
    if summary.bad > 10:
        click.echo(f"  ... {summary.bad - 10} more bad files (featcache inspect lists them)")


@main.command("inspect")
@click.argument("cache", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@_handle_errors
def inspect_command(cache: str, as_json: bool) -> None:
    """Rows, dimension, classes per split, bad files and settings of a CACHE file."""
    from .store import cache_info

    info = cache_info(cache)
    if as_json:
        _print_json(info)
        return
    settings = info["settings"]
    click.echo(
        f"{info['path']}: {info['rows']} rows x {info['feature_dim']} {settings.get('dtype', '')}"
    )
    for key in (
        "backbone",
        "weights",
        "image_size",
        "resize",
        "pooling",
        "layer",
        "preprocessing",
        "precision",
        "blocks",
        "projection",
        "views",
        "augment",
        "augment_seed",
        "augment_version",
        "split_source",
        "split_ratios",
        "seed",
        "dataset_root",
        "fingerprint",
        "created",
        "updated",
    ):
        if key in ("blocks", "projection") and key not in settings:
            continue  # written only when set (keras-hub transformers)
        if key.startswith("augment") and "views" not in settings:
            continue  # views caches only (extract --views)
        if key == "views" and key not in settings:
            click.echo(f"  {key:<14} 1")  # one embedding per image
            continue
        shown = settings.get(key, "float32" if key == "precision" else "")  # older caches
        click.echo(f"  {key:<14} {shown}")
    splits = info["splits"]
    click.echo(f"  {'class':<24} {'train':>7} {'val':>7} {'test':>7} {'total':>7}")
    for row in info["classes"]:
        click.echo(
            f"  {row['class'][:24]:<24} {row['train']:>7} {row['val']:>7} "
            f"{row['test']:>7} {row['total']:>7}"
        )
    click.echo(
        f"  {'all':<24} {splits['train']:>7} {splits['val']:>7} {splits['test']:>7} "
        f"{info['rows']:>7}"
    )
    click.echo(f"  bad files: {len(info['bad'])}")
    for bad in info["bad"]:
        click.echo(f"    {bad['path']}: {bad['reason']}")


@main.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def backbones_command(as_json: bool) -> None:
    """List the registered backbones: keras.applications, then keras-hub presets."""
    from .backbones.hub import list_hub_backbones
    from .backbones.registry import list_backbones

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
    if as_json:
        _print_json(rows)
        return
    click.echo(f"{'name':<34} {'family':<19} {'size':>5} {'dim':>5}  source")
    for row in rows:
        click.echo(
            f"{row['name']:<34} {row['family']:<19} {row['default_size']:>5} "
            f"{row['feature_dim']:>5}  {row['source']}"
        )
    click.echo("keras-hub: any other preset as hub:NAME, a preset folder, hf:// or kaggle://")


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
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Run folder. [default: runs/<cache-stem>-<head>-<timestamp>/]",
)
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
@click.option("--seed", type=int, default=head_defaults.DEFAULT_SEED, show_default=True)
@click.option(
    "--plot",
    type=click.Choice(plot_defaults.PLOT_METHODS),
    default=None,
    help="Also write map.png, a 2-D map of the features by this method (see plot).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def train_head_command(
    caches: tuple[str, ...], kind: str, hidden: str, as_json: bool, **options: Any
) -> None:
    """Train a classification head on the features of CACHES and report val and test metrics.

    Several caches train on their features concatenated, over the images in every cache
    (matched by content hash)."""
    from .heads.train import train_head

    cache = caches[0] if len(caches) == 1 else ", ".join(caches)
    result = train_head(
        caches[0] if len(caches) == 1 else list(caches), kind, hidden=hidden, **options
    )
    report = result.report
    if as_json:
        _print_json({**report, "run_dir": str(result.run_dir)})
        return
    rows = report["rows"]
    click.echo(
        f"{kind} head on {cache}: {rows['train']} train, {rows['val']} val, "
        f"{rows['test']} test rows, {len(report['class_names'])} classes"
    )
    for note in report["notes"]:
        click.echo(f"  note: {note}")
    click.echo(f"  {'split':<6} {'accuracy':>9} {'balanced':>9} {'macro-F1':>9}")
    for split in ("val", "test"):
        m = report[split]
        click.echo(
            f"  {split:<6} {m['accuracy']:>9.4f} {m['balanced_accuracy']:>9.4f} "
            f"{m['macro_f1']:>9.4f}"
        )
    epochs = (
        f", best epoch {report['best_epoch']} of {report['epochs_run']}"
        if "best_epoch" in report
        else ""
    )
    click.echo(f"  fit {report['fit_seconds']:.2f} s{epochs}; run folder {result.run_dir}")
    shown = report.get("map")
    if shown and "error" in shown:
        click.echo(f"  map: not written ({shown['error']})")
    elif shown:
        click.echo(f"  map: {result.run_dir / shown['png']} ({shown['method']})")


@main.command("compare")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Folder. [default: runs/<cache-stem>-compare-<timestamp>/]",
)
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
@click.option("--seed", type=int, default=head_defaults.DEFAULT_SEED, show_default=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@_handle_errors
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
    from .heads.compare import compare
    from .heads.leaderboard import table
    from .heads.probe import ProbeSettings

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
        _print_json(
            {
                "rows": board.rows,
                "folder": str(board.folder),
                "best_run": str(board.best.run_dir) if board.best else None,
                "skipped": board.skipped,
                **({"protocol": protocol, "notes": board.notes} if probe else {}),
            }
        )
        return
    if probe is not None or len(caches) > 1:  # quick on one cache prints as it always did
        for note in board.notes:
            click.echo(f"note: {note}")
    if probe is not None:
        for line in table(board.rows):
            click.echo(line)
        click.echo("acc@1 etc. on test: value[±spread over seeds] [95% bootstrap interval]")
        click.echo(f"leaderboard: {', '.join(str(f) for f in board.files)}")
        return
    selected = "cv accuracy" if cv else "val accuracy"
    source = max([len("source")] + [len(r.get("source", "")) for r in board.rows])
    prefix = f"{'source':<{source}} " if "source" in board.rows[0] else ""
    click.echo(
        f"{prefix}{'head':<14} {selected:>12} {'test acc':>9} {'test F1':>8} {'fit s':>7}  params"
    )
    for row in board.rows:
        first = f"{row['source']:<{source}} " if prefix else ""
        click.echo(
            f"{first}{row['head']:<14} {row['selection_accuracy']:>12.4f} "
            f"{row['test_accuracy']:>9.4f} "
            f"{row['test_macro_f1']:>8.4f} {row['fit_seconds']:>7.2f}  {row['params']}"
        )
    for note in board.skipped:
        click.echo(f"skipped: {note}")
    best = board.best.run_dir if board.best else None
    click.echo(f"leaderboard: {board.folder}/leaderboard.csv; best run: {best}")
    if plot:
        click.echo(f"plot: {plot}")


@main.command("predict")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="CSV file. [default: predictions.csv; RUN/predictions.csv for a cache]",
)
@click.option("--top-k", type=int, default=head_defaults.DEFAULT_TOP_K, show_default=True)
@click.option(
    "--batch-size", type=int, default=head_defaults.DEFAULT_PREDICT_BATCH_SIZE, show_default=True
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load a head.joblib (a pickle: it can run code) from a run folder you trust.",
)
@_handle_errors
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

    from .heads.train import trusted_pickles

    head_defaults.check_options({"top_k": top_k, "batch_size": batch_size})
    if len(images) == 1 and images[0].endswith(".h5") and Path(images[0]).is_file():
        from .heads.predict import predict_cache

        with trusted_pickles(trust_pickle):
            written = predict_cache(model, images[0], output, top_k)
        click.echo(f"wrote {written}")
        return
    from .heads.images import predict_images

    out = Path(output or "predictions.csv")
    with trusted_pickles(trust_pickle):
        results = predict_images(
            model, list(images), out, top_k, batch_size, progress=False if quiet else None
        )
    bad = [r for r in results if r.error]
    if not quiet and sys.stdout.isatty():
        for r in results[:50]:
            shown = (r.error and f"bad: {r.error}") or f"{r.top[0][0]} {r.top[0][1]:.3f}"
            click.echo(f"{r.path}  {shown}")
        if len(results) > 50:
            click.echo(f"... {len(results) - 50} more in {out}")
    click.echo(f"wrote {out}: {len(results) - len(bad)} images classified, {len(bad)} bad")


@click.command("fine-tune")
@click.argument("cache", type=click.Path())
@click.option("--head", "head", type=click.Path(), required=True, help="A dense head run folder.")
@click.option("--output", "-o", type=click.Path(), default=None, help="Run folder to write.")
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
@click.option("--seed", type=int, default=head_defaults.DEFAULT_SEED, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def fine_tune_command(cache: str, as_json: bool, **options: Any) -> None:
    """Unfreeze the top of the backbone under a trained head and train on CACHE's images."""
    from .heads.finetune import fine_tune

    verbose = 0 if as_json or not sys.stderr.isatty() else 1
    result = fine_tune(cache, verbose=verbose, **options)
    if as_json:
        _print_json(result.report)
        return
    report = result.report
    click.echo(f"{result.run_dir}: model.keras, report.json, history.csv/png, confusion.png")
    for phase in report.get("phases", []):
        shown = " ".join(f"{v:.3f}" for v in phase["val_accuracy"]) or "-"
        click.echo(f"  phase {phase['name']:<9} {phase['layers']:>3} layers  val {shown}")
    if "best" in report:
        best = report["best"]
        click.echo(
            f"  kept: {best['phase']} epoch {best['epoch']}, val {best['val_accuracy']:.3f}; "
            f"model.keras is the {report['exported']} model"
        )
    if report.get("note"):
        click.echo(f"  {report['note']}")
    head_test = report["head_only"]["test"]
    kept = "head-only (fallback)" if report.get("exported") == "head-only" else "fine-tuned"
    click.echo(
        f"  test accuracy {report['test']['accuracy']:.3f} {kept} vs "
        f"{'-' if head_test is None else format(head_test, '.3f')} head only; "
        f"{len(report.get('kept_layers', report['unfrozen_layers']))} layers trained, "
        f"{report['epochs_run']} epochs, "
        f"{report['fit_seconds']:.0f} s"
    )
    click.echo(f"  test balanced accuracy {report['test']['balanced_accuracy']:.3f}")
    for minority in report.get("minority_classes", []):
        click.echo(
            f"  minority class {minority['class']} ({minority['train_rows']} train rows): "
            f"test recall {minority['test_recall']:.3f}"
        )
    if report.get("cache_precision", "float32") != "float32":
        click.echo(
            f"  trained in float32, model.keras computes in "
            f"{report.get('model_precision', 'float32')} "
            f"(the cache's features are {report['cache_precision']})"
        )
    for path, reason in result.skipped[:10]:
        click.echo(f"  skipped: {path}: {reason}")


main.add_command(fine_tune_command)


@main.command("export")
@click.argument("run", type=click.Path())
@click.option("--output", "-o", type=click.Path(), required=True, help="model.keras or a folder.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default=head_defaults.DEFAULT_EXPORT_FORMAT,
    show_default=True,
    help="savedmodel: a TensorFlow SavedModel folder for TF Serving.",
)
@_handle_errors
def export_command(run: str, output: str, fmt: str) -> None:
    """Turn the dense head of RUN into one model taking images (resize, preprocessing,
    frozen backbone, head)."""
    from .heads.endtoend import export

    click.echo(f"wrote {export(run, output, fmt)}")


@main.command("serve")
@click.option("--host", default=_SERVE.host, show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=int, default=_SERVE.port, show_default=True, help="0 picks a free port."
)
@click.option("--data-root", type=click.Path(), default=None, help="Folder ExtractDataset reads.")
@click.option("--cache-root", type=click.Path(), default=None, help="Folder caches go to.")
@click.option(
    "--weights-root",
    type=click.Path(),
    default=None,
    help="Folder of weights files and saved models that requests may name.",
)
@click.option(
    "--preload",
    default="",
    help="Models to load before SERVING: NAME[=WEIGHTS][@SIZE],... e.g. mobilenet=m.h5@224.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="Serve a model.keras from export or fine-tune to Classify (repeatable).",
)
@click.option(
    "--max-loaded",
    type=int,
    default=_SERVE.max_loaded,
    show_default=True,
    help="Models loaded at once (LRU; models in use are kept).",
)
@click.option(
    "--max-message-mb",
    type=int,
    default=_SERVE.max_message_mb,
    show_default=True,
    help="Largest request.",
)
@click.option(
    "--workers",
    type=int,
    default=_SERVE.workers,
    show_default=True,
    help="Concurrent calls; more get RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-batch-images",
    type=int,
    default=_SERVE.max_batch_images,
    show_default=True,
    help="Images in one Embed or Classify request.",
)
@click.option(
    "--max-inflight-mb",
    type=int,
    default=_SERVE.max_inflight_mb,
    show_default=True,
    help="Memory budget of decoded images and features in flight; also the largest reply.",
)
@click.option(
    "--max-jobs",
    type=int,
    default=_SERVE.max_jobs,
    show_default=True,
    help="ExtractDataset jobs at once.",
)
@click.option(
    "--max-wait",
    type=float,
    default=_SERVE.max_wait,
    show_default=True,
    help="Seconds a call waits for a model slot or memory.",
)
@click.option(
    "--allow-backbone",
    default="",
    metavar="NAME[,NAME]",
    help="Only these backbones (registry names, saved models under --weights-root).",
)
@click.option("--fixed-weights", is_flag=True, help="Only the --preload backbones and weights.")
@click.option(
    "--max-batch", type=int, default=_SERVE.max_batch, show_default=True, help="Images per call."
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=_SERVE.max_delay_ms,
    show_default=True,
    help="How long a batch waits for more requests.",
)
@click.option("--no-batching", is_flag=True, help="Run each request on its own.")
@click.option("--max-pixels", type=int, default=_SERVE.max_pixels, show_default=True)
@click.option(
    "--max-image-size",
    type=int,
    default=_SERVE.max_image_size,
    show_default=True,
    help="Largest input side (--image-size) a request may ask for.",
)
@click.option("--token-file", type=click.Path(), default=None, help="Require this bearer token.")
@click.option("--tls-cert", type=click.Path(), default=None, help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(), default=None, help="Server private key (PEM).")
@click.option(
    "--tls-client-ca", type=click.Path(), default=None, help="Require client certificates (mTLS)."
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve a non-loopback --host without --token-file or TLS (refused otherwise).",
)
@click.option(
    "--grace", type=float, default=_SERVE.grace, show_default=True, help="Drain time on stop."
)
@_handle_errors
def serve_command(
    preload: str, allow_backbone: str, no_batching: bool, models: tuple[str, ...], **options: Any
) -> None:
    """Run the gRPC extraction service (featcache.v1.Extractor) until SIGTERM."""
    from .serving import serve

    entries = [entry.strip() for entry in preload.split(",") if entry.strip()]
    allowed = [name.strip() for name in allow_backbone.split(",") if name.strip()]
    serve(
        ServeOptions(
            preload=entries,
            models=list(models),
            allow_backbone=allowed,
            batching=not no_batching,
            **options,
        )
    )


@main.command("audit")
@click.argument("cache", type=click.Path())
@click.option(
    "--output", "-o", type=click.Path(), default=None, help="Report folder. [default: CACHE.audit/]"
)
@click.option(
    "--threshold",
    type=float,
    default=audit_defaults.DEFAULT_THRESHOLD,
    show_default=True,
    help="Cosine similarity from which two rows are near-duplicates.",
)
@click.option(
    "--neighbors",
    type=int,
    default=audit_defaults.DEFAULT_NEIGHBORS,
    show_default=True,
    help="Neighbours kept per row.",
)
@click.option(
    "--outlier-fraction",
    type=float,
    default=audit_defaults.DEFAULT_OUTLIER_FRACTION,
    show_default=True,
    help="Fraction of rows reported as outliers.",
)
@click.option("--no-label-issues", is_flag=True, help="Skip the out-of-fold label check.")
@click.option(
    "--folds",
    type=int,
    default=audit_defaults.DEFAULT_FOLDS,
    show_default=True,
    help="Folds of the label check.",
)
@click.option(
    "--fix-splits",
    is_flag=True,
    help="Move each leaking duplicate group into the split of its first row, in the cache.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_handle_errors
def audit_command(
    cache: str,
    output: str | None,
    threshold: float,
    neighbors: int,
    outlier_fraction: float,
    no_label_issues: bool,
    folds: int,
    fix_splits: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Duplicates, near-duplicates, split leakage, outliers and likely label errors of a
    CACHE: report.json, CSV lists and report.html (thumbnails) in the report folder."""
    from pathlib import Path

    from .audit.audit import audit_cache
    from .audit.audit import fix_splits as fix
    from .audit.options import AuditOptions
    from .audit.output import write_audit_report

    options = AuditOptions(
        threshold=threshold,
        neighbors=neighbors,
        outlier_fraction=outlier_fraction,
        label_issues=not no_label_issues,
        folds=folds,
        progress=False if quiet else None,
    )
    report = audit_cache(cache, options)
    out = Path(output) if output else Path(cache).with_suffix(".audit")
    write_audit_report(report, out)
    summary = report.summary()
    summary["report"] = str(out)
    if fix_splits:
        summary["moved_rows"] = len(fix(report))
    if as_json:
        _print_json(summary)
        return
    for key, value in summary.items():
        if key != "near_pairs_by_threshold":
            click.echo(f"{key:<24} {value}")
    click.echo(
        "near-duplicate pairs by threshold: "
        + ", ".join(f">={t}: {n}" for t, n in summary["near_pairs_by_threshold"].items())
    )


@main.command("search")
@click.argument("cache", type=click.Path())
@click.argument("image", required=False, type=click.Path())
@click.option("--row", type=int, default=None, help="Search with the features of this row.")
@click.option(
    "-k", "--k", "k", type=int, default=audit_defaults.DEFAULT_SEARCH_K, show_default=True
)
@click.option("--rebuild", is_flag=True, help="Rebuild the index (CACHE.search.npy) first.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_handle_errors
def search_command(
    cache: str,
    image: str | None,
    row: int | None,
    k: int,
    rebuild: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """The k rows of CACHE most similar (exact cosine) to IMAGE or to --row N.

    IMAGE is embedded with the cache's own backbone settings. The index (normalised
    features, CACHE.search.npy) is built on first use and rebuilt when the cache changes.
    """
    from .audit.search import search

    result = search(cache, image, row, k, rebuild, progress=False if quiet else None)
    if as_json:
        _print_json(result.to_dict())
        return
    click.echo(f"query: {result.query}")
    for hit in result.hits:
        click.echo(
            f"{hit['rank']:>4} {hit['similarity']:.4f} #{hit['row']:<7} {hit['split']:<5} "
            f"{hit['class'] or '-':<16} {hit['path']}"
        )


@main.command("plot")
@click.argument("cache", type=click.Path())
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Folder: new, empty or an earlier plot's (whose outputs are replaced). "
    "[default: CACHE.plot/]",
)
@click.option(
    "--method",
    type=click.Choice(plot_defaults.PLOT_METHODS),
    default="auto",
    show_default=True,
    help="auto: umap when umap-learn is installed, else tsne up to "
    f"{plot_defaults.AUTO_TSNE_MAX_POINTS} points, pca above.",
)
@click.option(
    "--color",
    type=click.Choice(plot_defaults.PLOT_COLORS),
    default="label",
    show_default=True,
    help="Colour the points by class or by split (the marker always shows the split).",
)
@click.option(
    "--max-points",
    type=int,
    default=plot_defaults.DEFAULT_MAX_POINTS,
    show_default=True,
    help="Plot a seeded random sample of this many rows when the cache has more.",
)
@click.option(
    "--thumbnails",
    type=int,
    default=plot_defaults.DEFAULT_THUMBNAILS,
    show_default=True,
    help="Points of map.html that show their image on hover.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-html", is_flag=True, help="Write map.png and points.csv only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_handle_errors
def plot_command(
    cache: str, output: str | None, no_html: bool, as_json: bool, quiet: bool, **options: Any
) -> None:
    """A 2-D map of the features of CACHE (PCA, t-SNE or UMAP), coloured by label or split:
    map.png, an interactive map.html (image on hover) and points.csv in the output folder."""
    from .audit.plot import plot_cache

    try:
        result = plot_cache(
            cache, output, html=not no_html, progress=False if quiet else None, **options
        )
    except KeyboardInterrupt:
        click.echo("interrupted: no map written; the output folder keeps what it held", err=True)
        sys.exit(130)
    if as_json:
        _print_json(result.to_dict())
        return
    click.echo(
        f"{result.method} map of {result.points} of {result.rows} rows "
        f"({result.seconds:.1f} s), coloured by {result.color}"
    )
    for note in result.notes:
        click.echo(f"  note: {note}")
    if "html" in result.files:
        click.echo(
            f"  thumbnails: {result.thumbnails} embedded, {result.missing_thumbnails} missing"
        )
    for kind, path in result.files.items():
        click.echo(f"  {kind:<5} {path}")


@main.command("export-features")
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
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="[default: CACHE.parquet, CACHE-npy/ or CACHE.lance next to the cache]",
)
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_handle_errors
def export_features_command(
    cache: str,
    format_: str,
    output: str | None,
    dtype: str,
    normalize: bool | None,
    absolute_paths: bool | None,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write the rows of CACHE (path, label, class, split, sha256, features) as Parquet,
    as clip-retrieval's npy + parquet layout, or as Lance, in row order."""
    from .store.export import export_features

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
        )
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was exported; an existing output is unchanged", err=True)
        sys.exit(130)
    if as_json:
        _print_json(summary.to_dict())
        return
    click.echo(
        f"{summary.rows} rows x {summary.feature_dim} {summary.dtype} -> {summary.output} "
        f"({summary.format}{', L2-normalised' if summary.normalized else ''}, "
        f"{summary.bytes} bytes, {summary.seconds:.1f} s)"
    )


main.add_command(extract_command)
main.add_command(train_head_command)

if __name__ == "__main__":
    main()
