"""Grouped help, as presentation only.

``featcache --help`` lists the commands by stage of the workflow (:data:`STAGES`); each
command's ``--help`` lists its options by section, basics first, then a few examples
(:data:`LAYOUTS`). Which flag goes in which section is written here, by flag, not in the
option declarations: the declarations stay what the library, the CLI and the gRPC service
share. ``docs/generate.py`` renders ``docs/cli.md`` from the same sections.

A flag no section names is shown under :data:`OTHER_SECTION` (``tests/test_help.py`` fails
then: add it to its command's layout). A command without a layout keeps click's flat list.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import click

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Embed", ("extract", "inspect", "manifest", "backbones", "weights")),
    ("Train", ("train-head", "zero-shot", "compare", "fine-tune")),
    ("Use", ("predict", "export", "search")),
    ("Understand the data", ("audit", "plot", "export-features")),
    ("Serve", ("serve",)),
)
"""Stages of the workflow and their commands, in order; a name not registered is skipped,
a registered command no stage names is listed last, under :data:`OTHER_STAGE`."""
OTHER_STAGE = "Other commands"
OTHER_SECTION = "Other options"
LAST_SECTION = "Output"
"""Where the flags every command may have go (:data:`COMMON`), and ``--help``."""
COMMON = ("--json", "--quiet", "--verbose", "--help")
"""Flags shown in a command's last section whatever its layout says."""


@dataclass(frozen=True)
class Layout:
    """A command's help: sections of flags (long flag names), basics first, and examples."""

    sections: tuple[tuple[str, tuple[str, ...]], ...]
    examples: tuple[tuple[str, str], ...] = field(default=())
    """(what it does, the command line)."""
    summary: str = ""
    """One line for ``featcache --help`` (else the help's first sentence, whole)."""


def _layout(
    *sections: tuple[str, tuple[str, ...]], examples: Sequence[tuple[str, str]], summary: str = ""
) -> Layout:
    return Layout(tuple(sections), tuple(examples), summary)


LAYOUTS: dict[str, Layout] = {
    "featcache": _layout(
        examples=(
            (
                "Embed a folder of class sub-folders (data/cat/*.jpg, ...):",
                "featcache extract data/",
            ),
            ("Train a head on the cache:", "featcache train-head cache/mobilenet.h5 -o runs/dense"),
            ("Classify new images:", "featcache predict runs/dense/ new/*.jpg"),
        ),
    ),
    "extract": _layout(
        (
            "Basics",
            ("--backbone", "--weights", "--output", "--image-size", "--pooling", "--overwrite"),
        ),
        (
            "Features",
            (
                "--resize",
                "--decode",
                "--preprocessing",
                "--layer",
                "--taps",
                "--blocks",
                "--projection",
                "--precision",
                "--dtype",
            ),
        ),
        ("Splits", ("--split", "--split-method", "--seed", "--labels")),
        (
            "Performance",
            ("--batch-size", "--workers", "--checkpoint-seconds", "--max-pixels", "--rehash"),
        ),
        ("Views", ("--views", "--augment", "--augment-seed")),
        ("Remote (gRPC)", ("--remote", "--token-file", "--tls-ca", "--tls-cert", "--tls-key")),
        ("Ray", ("--engine", "--ray-address", "--actors", "--cpus-per-actor", "--gpus-per-actor")),
        ("Shards", ("--shard",)),
        (LAST_SECTION, ()),
        summary="Embed a folder of images into an HDF5 cache (incremental).",
        examples=(
            (
                "Embed data/ with MobileNet's ImageNet weights into cache/mobilenet.h5:",
                "featcache extract data/",
            ),
            (
                "Offline: another backbone, with a weights file you downloaded:",
                "featcache extract data/ -b resnet50 -w resnet50_notop.h5 -o cache/resnet50.h5",
            ),
            (
                "DINOv2 (pip install 'featcache[hub]'), class token and patch mean:",
                "featcache extract data/ -b dinov2_small --pooling cls+mean -o cache/dinov2.h5",
            ),
        ),
    ),
    "inspect": _layout(
        ("Basics", ("--verify", "--verify-sample")),
        (LAST_SECTION, ()),
        summary="Show a cache: rows, settings, classes per split, bad files.",
        examples=(
            (
                "Rows, settings, classes per split and bad files:",
                "featcache inspect cache/mobilenet.h5",
            ),
            (
                "Check 100 rows' files against their hashes:",
                "featcache inspect cache/mobilenet.h5 --verify --verify-sample 100",
            ),
        ),
    ),
    "manifest": _layout(
        ("Basics", ("--joint", "--overwrite")),
        (LAST_SECTION, ()),
        summary="Name several caches as one dataset (shards, or one per backbone).",
        examples=(
            (
                "Four shards written in parallel, as one dataset:",
                "featcache manifest cache/all.featcache.json cache/part-*.h5",
            ),
            (
                "Shards of two sub-folders extracted apart (rows named under data/):",
                "featcache manifest cache/data.featcache.json cache/part1.h5 cache/part2.h5",
            ),
            (
                "The same images under two backbones, features side by side:",
                "featcache manifest cache/both.featcache.json cache/a.h5 cache/b.h5 --joint",
            ),
        ),
    ),
    "backbones": _layout(
        (LAST_SECTION, ()),
        summary="List the registered backbones.",
        examples=(
            ("Every registered backbone with its size and feature width:", "featcache backbones"),
            ("As JSON, for scripts:", "featcache backbones --json"),
        ),
    ),
    "weights": _layout(
        ("Basics", ("--image-size", "--fetch")),
        (LAST_SECTION, ()),
        summary="List (and fetch) the ImageNet weights files Keras uses.",
        examples=(
            ("Which weights files are in Keras's cache:", "featcache weights"),
            ("Online: download the missing ones:", "featcache weights resnet50 mobilenet --fetch"),
            ("Which backbone a weights file fits:", "featcache weights downloads/some_notop.h5"),
        ),
    ),
    "train-head": _layout(
        (
            "Basics",
            ("--output", "--overwrite", "--head", "--tap", "--epochs", "--class-weight", "--seed"),
        ),
        (
            "Dense head",
            (
                "--hidden",
                "--dropout",
                "--batchnorm",
                "--activation",
                "--optimizer",
                "--lr",
                "--momentum",
                "--batch-size",
                "--patience",
                "--monitor",
                "--from-logits",
                "--stream",
            ),
        ),
        (
            "scikit-learn heads",
            ("--C", "--k", "--n-estimators", "--max-depth", "--alpha", "--standardize"),
        ),
        ("Splits", ("--val-fraction",)),
        ("Views", ("--views", "--feature-augment")),
        (LAST_SECTION, ("--plot",)),
        summary="Train a classification head on cached features.",
        examples=(
            (
                "The tutorials' dense head, into runs/dense/:",
                "featcache train-head cache/mobilenet.h5 -o runs/dense",
            ),
            (
                "Logistic regression (C 0.5) into runs/logreg/:",
                "featcache train-head cache/mobilenet.h5 --head logreg --C 0.5 -o runs/logreg",
            ),
            (
                "Two backbones' features side by side:",
                "featcache train-head cache/mobilenet.h5 cache/resnet50.h5",
            ),
        ),
    ),
    "zero-shot": _layout(
        ("Basics", ("--output", "--classes", "--templates", "--seed")),
        (LAST_SECTION, ()),
        summary="Classify a CLIP or SigLIP cache from class names alone.",
        examples=(
            (
                "The cache's class names in 'a photo of a {}.', into runs/zs/:",
                "featcache zero-shot cache/clip.h5 -o runs/zs",
            ),
            (
                "Readable class texts and CLIP's 7-template ensemble:",
                "featcache zero-shot cache/clip.h5 --classes tench,goldfish --templates clip",
            ),
            (
                "Class texts from a file, prompts from another:",
                "featcache zero-shot cache/siglip.h5 --classes names.txt --templates prompts.txt",
            ),
        ),
    ),
    "compare": _layout(
        (
            "Basics",
            ("--output", "--overwrite", "--protocol", "--heads", "--taps", "--cv", "--seed"),
        ),
        ("Dense head", ("--epochs",)),
        (
            "Probe protocols",
            (
                "--c-grid",
                "--knn-ks",
                "--temperature",
                "--normalize",
                "--shots",
                "--seeds",
                "--bootstrap",
                "--zero-shot",
            ),
        ),
        (LAST_SECTION, ("--csv", "--plot")),
        summary="Compare every head kind (or a probe protocol) on caches.",
        examples=(
            (
                "Every head kind; the best is trained into the output folder:",
                "featcache compare cache/mobilenet.h5",
            ),
            (
                "Linear probe of two backbones and of both together:",
                "featcache compare cache/mobilenet.h5 cache/resnet50.h5 --protocol linear-probe",
            ),
            (
                "10-shot linear probe over 5 draws:",
                "featcache compare cache/mobilenet.h5 --protocol linear-probe --shots 10",
            ),
        ),
    ),
    "fine-tune": _layout(
        (
            "Basics",
            (
                "--head",
                "--output",
                "--overwrite",
                "--schedule",
                "--epochs",
                "--lr",
                "--unfreeze",
                "--seed",
            ),
        ),
        (
            "Schedule",
            (
                "--unfreeze-from",
                "--optimizer",
                "--batch-size",
                "--patience",
                "--warmup",
                "--lr-decay",
            ),
        ),
        ("Data", ("--augment", "--image-size", "--balance")),
        ("Selection and time", ("--allow-trade", "--time-budget", "--test-views")),
        (LAST_SECTION, ()),
        summary="Fine-tune the backbone under a trained dense head.",
        examples=(
            (
                "Fine-tune under a dense head (the auto schedule):",
                "featcache fine-tune cache/mobilenet.h5 --head runs/dense/",
            ),
            (
                "Textures or micrographs (no up), class weights, 8 turned/mirrored views:",
                "featcache fine-tune cache/mobilenet.h5 --head runs/dense/ "
                "--augment flip,vflip,rotate90,contrast --balance weights --test-views all",
            ),
            (
                "At most 20 minutes, the epochs fitted to it:",
                "featcache fine-tune cache/mobilenet.h5 --head runs/dense/ --time-budget 20m",
            ),
        ),
    ),
    "predict": _layout(
        ("Basics", ("--output", "--overwrite", "--top-k")),
        ("Performance", ("--batch-size",)),
        ("Trust", ("--trust-pickle",)),
        (LAST_SECTION, ()),
        summary="Classify images (or a cache) with a head run or a model.",
        examples=(
            (
                "Classify images with a head run (the backbone is rebuilt):",
                "featcache predict runs/dense/ new/*.jpg",
            ),
            (
                "With an exported or fine-tuned model, a whole folder:",
                "featcache predict model.keras new/ -o new.csv",
            ),
            (
                "Apply a head to another cache's features:",
                "featcache predict runs/dense/ cache/other.h5",
            ),
        ),
    ),
    "export": _layout(
        ("Basics", ("--output", "--overwrite", "--format", "--test-views")),
        (LAST_SECTION, ()),
        summary="Export a head run as one Keras model taking images.",
        examples=(
            (
                "One Keras model from images to probabilities:",
                "featcache export runs/dense/ -o model.keras",
            ),
            (
                "A SavedModel folder for TF Serving:",
                "featcache export runs/dense/ -o model/ --format savedmodel",
            ),
        ),
    ),
    "search": _layout(
        ("Basics", ("--row", "--text", "--k", "--tap")),
        ("Index", ("--exact", "--index-memory", "--exact-below", "--rebuild")),
        (LAST_SECTION, ()),
        summary="Find the cache rows most similar to an image, a row or a text.",
        examples=(
            (
                "The 10 rows most like an image (a cached image comes back first):",
                "featcache search cache/mobilenet.h5 photo.jpg",
            ),
            (
                "Neighbours of row 30, leaving row 30 out:",
                "featcache search cache/mobilenet.h5 --row 30 -k 5",
            ),
            (
                "Images that fit a text (a CLIP or SigLIP cache, extract --projection):",
                'featcache search cache/clip.h5 --text "a red bicycle on a beach"',
            ),
        ),
    ),
    "audit": _layout(
        ("Basics", ("--output", "--threshold", "--fix-splits", "--tap")),
        (
            "Checks",
            (
                "--neighbors",
                "--outlier-fraction",
                "--label-issues",
                "--label-threshold",
                "--folds",
                "--label-fit-rows",
                "--zero-shot",
                "--zero-shot-threshold",
            ),
        ),
        ("Large caches", ("--exact", "--approximate-from", "--probes")),
        (LAST_SECTION, ()),
        summary="Find duplicates, split leakage, outliers, label errors.",
        examples=(
            (
                "Report into cache/mobilenet.audit/ (open report.html):",
                "featcache audit cache/mobilenet.h5",
            ),
            (
                "Stricter near-duplicates, then move leaking groups into one split:",
                "featcache audit cache/mobilenet.h5 --threshold 0.97 --fix-splits",
            ),
        ),
    ),
    "plot": _layout(
        ("Basics", ("--output", "--method", "--color", "--tap")),
        ("Sampling", ("--max-points", "--thumbnails", "--seed")),
        (LAST_SECTION, ("--html",)),
        summary="Draw a 2-D map of a cache's features (PNG and HTML).",
        examples=(
            (
                "map.png, map.html (images on hover), points.csv in cache/mobilenet.plot/:",
                "featcache plot cache/mobilenet.h5",
            ),
            (
                "PCA, coloured by split:",
                "featcache plot cache/mobilenet.h5 --method pca --color split",
            ),
        ),
    ),
    "export-features": _layout(
        ("Basics", ("--format", "--output", "--overwrite")),
        ("Values", ("--dtype", "--normalize", "--absolute-paths", "--tap")),
        (LAST_SECTION, ()),
        summary="Write a cache as Parquet, npy + parquet or Lance.",
        examples=(
            (
                "Parquet next to the cache (pip install 'featcache[export]'):",
                "featcache export-features cache/mobilenet.h5",
            ),
            (
                "clip-retrieval's img_emb/ + metadata/ layout:",
                "featcache export-features cache/mobilenet.h5 --format npy -o emb/",
            ),
        ),
    ),
    "serve": _layout(
        ("Basics", ("--host", "--port", "--data-root", "--cache-root", "--weights-root")),
        ("Models", ("--preload", "--model", "--max-loaded", "--allow-backbone", "--fixed-weights")),
        ("Security", ("--token-file", "--tls-cert", "--tls-key", "--tls-client-ca", "--insecure")),
        (
            "Limits",
            (
                "--max-message-mb",
                "--workers",
                "--max-batch-images",
                "--max-inflight-mb",
                "--max-jobs",
                "--max-wait",
                "--max-pixels",
                "--max-image-size",
                "--grace",
            ),
        ),
        ("Batching", ("--max-batch", "--max-delay-ms", "--batching")),
        ("Search", ("--index-memory", "--exact-below")),
        (LAST_SECTION, ()),
        summary="Run the gRPC extraction service.",
        examples=(
            (
                "On this machine only, MobileNet loaded first:",
                "featcache serve --weights-root weights/ --preload mobilenet=mobilenet.h5",
            ),
            (
                "For a team: TLS, a token, extraction jobs under two roots:",
                "featcache serve --host 0.0.0.0 --tls-cert s.crt --tls-key s.key "
                "--token-file token --data-root /srv/images --cache-root /srv/caches",
            ),
        ),
    ),
}
"""The help layout of each command (and of the group, ``featcache``: examples only)."""


def flag_name(param: click.Parameter) -> str:
    """The name a layout uses for an option: its first long flag (``--output`` for
    ``-o, --output``; ``--html`` for ``--html/--no-html``)."""
    return next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])


def sections_of(command: click.Command, ctx: click.Context) -> list[tuple[str, list[click.Option]]]:
    """The command's options (``--help`` included) by section, in the layout's order;
    sections without an option are left out, flags no section names come last but one."""
    params = [p for p in command.get_params(ctx) if isinstance(p, click.Option)]
    layout = LAYOUTS.get(command.name or "")
    if layout is None or not layout.sections:
        return [("Options", params)] if params else []
    placed: dict[str, str] = {flag: title for title, flags in layout.sections for flag in flags}
    last = layout.sections[-1][0]
    placed.update({flag: last for flag in COMMON})
    titles = [title for title, _ in layout.sections]
    if OTHER_SECTION not in titles:
        titles.insert(len(titles) - 1, OTHER_SECTION)
    grouped: dict[str, list[click.Option]] = {title: [] for title in titles}
    for param in params:
        grouped[placed.get(flag_name(param), OTHER_SECTION)].append(param)
    for title, flags in layout.sections:  # in the layout's order within a section
        order = {flag: i for i, flag in enumerate((*flags, *COMMON))}
        grouped[title].sort(key=lambda p: order.get(flag_name(p), len(order)))
    return [(title, grouped[title]) for title in titles if grouped[title]]


def examples_of(name: str) -> tuple[tuple[str, str], ...]:
    """(what it does, command line) of a command (or ``featcache``), as help shows them."""
    layout = LAYOUTS.get(name)
    return layout.examples if layout else ()


def _write_examples(formatter: click.HelpFormatter, name: str) -> None:
    examples = examples_of(name)
    if not examples:
        return
    with formatter.section("Examples"):
        for text, line in examples:
            formatter.write_text(text)
            formatter.write(f"{'':>{formatter.current_indent + 2}}{line}\n")


class SectionedCommand(click.Command):
    """A click command whose help shows its options by section, then examples."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, params in sections_of(self, ctx):
            rows = [row for row in (p.get_help_record(ctx) for p in params) if row is not None]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_examples(formatter, self.name or "")
        super().format_epilog(ctx, formatter)


def summary_of(command: click.Command) -> str:
    """The command's one-line summary: its layout's, else its help's first sentence, whole."""
    layout = LAYOUTS.get(command.name or "")
    return layout.summary if layout and layout.summary else command.get_short_help_str(1000)


def stages_of(commands: Mapping[str, click.Command]) -> Iterator[tuple[str, list[str]]]:
    """(stage, registered command names) in workflow order; unnamed commands last."""
    listed = {name for _, names in STAGES for name in names}
    for title, names in STAGES:
        present = [name for name in names if name in commands]
        if present:
            yield title, present
    rest = sorted(name for name in commands if name not in listed)
    if rest:
        yield OTHER_STAGE, rest


class WorkflowGroup(click.Group):
    """The ``featcache`` group: commands listed by stage of the workflow, summaries whole;
    every command added gets sectioned help (:class:`SectionedCommand`)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        sectioned(cmd)
        super().add_command(cmd, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for _, names in stages_of(self.commands) for name in names]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        width = max((len(name) for name in self.commands), default=0)  # one column for all
        for title, names in stages_of(self.commands):
            rows = [
                (name.ljust(width), summary_of(self.commands[name]))
                for name in names
                if not self.commands[name].hidden
            ]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_examples(formatter, "featcache")
        super().format_epilog(ctx, formatter)


def sectioned(command: click.Command) -> click.Command:
    """Give a plain click command sectioned help, in place (the command objects are shared
    by the group and the ``extract``/``train-head``/``fine-tune`` shortcuts); other classes
    (groups, custom commands) are left as they are."""
    if type(command) is click.Command:
        command.__class__ = SectionedCommand
    return command
