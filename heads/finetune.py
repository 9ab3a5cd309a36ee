"""``fine-tune``: the tutorials' second phase. The head trained on frozen features is
stacked on the backbone the cache records, the top layers are unfrozen, and the whole
model trains end to end on the cache's images with a low learning rate."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import check_run_folder
from ..core.options import invalid
from ..core.progress import Status, progress_bar
from ..errors import DatasetError
from ..extractor.decode import decode_and_resize, decode_or_reason
from ..extractor.sources import Dataset, item_from_path, open_source
from .data import CachedSplits, load_splits
from .fit_progress import Tracker, keras_callbacks, tracking
from .images import Classifier, load_classifier
from .options import (
    AUGMENTATIONS,
    DEFAULT_PREDICT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    FINE_TUNE_UNFREEZE,
    FineTuneOptions,
    merge_options,
    parse_augment,
    parse_unfreeze,
)
from .report import metrics, write_confusion, write_history
from .train import TrainedHead, new_run_dir

__all__ = [
    "AUGMENTATIONS",
    "FineTuneResult",
    "augmentation_layers",
    "backbone_units",
    "fine_tune",
    "minority_recall",
    "unfreeze_layers",
]


@dataclass
class FineTuneResult:
    """What ``fine_tune`` produced."""

    run_dir: Path
    report: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Rows:
    paths: list[str]
    columns: np.ndarray
    """Output column of each row's label (-1 when the head never saw that class)."""
    labels: np.ndarray
    sha256: list[str]


def augmentation_layers(names: str, seed: int = DEFAULT_SEED) -> list[Any]:
    """Keras preprocessing layers for ``flip,rotate,zoom,contrast,translate``."""
    chosen = parse_augment(names)
    import keras

    make = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"),
        "rotate": lambda: keras.layers.RandomRotation(0.05, seed=seed, name="aug_rotate"),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed, name="aug_zoom"),
        "contrast": lambda: keras.layers.RandomContrast(
            0.1, value_range=(0, 255), seed=seed, name="aug_contrast"
        ),
        "translate": lambda: keras.layers.RandomTranslation(
            0.1, 0.1, seed=seed, name="aug_translate"
        ),
    }
    return [make[n]() for n in chosen]


def unfreeze_layers(
    backbone: Any, unfreeze: str | int = FINE_TUNE_UNFREEZE, unfreeze_from: str | None = None
) -> list[str]:
    """Make the top of ``backbone`` trainable; BatchNormalization and LayerNormalization
    layers stay frozen (they count in ``unfreeze`` all the same).

    ``unfreeze``: a number of top layers or ``all``; ``unfreeze_from``: a layer name from
    which on every layer is unfrozen. Returns the names of the layers made trainable.
    """
    return [layer.name for layer in unfreeze_units(backbone, unfreeze, unfreeze_from)]


def unfreeze_units(
    backbone: Any, unfreeze: str | int = FINE_TUNE_UNFREEZE, unfreeze_from: str | None = None
) -> list[Any]:
    """:func:`unfreeze_layers`, returning the layers made trainable (with weights, bottom to
    top) themselves: names can repeat across the blocks of nested (keras-hub) models."""
    import keras

    frozen = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    layers = backbone_units(backbone)
    count = parse_unfreeze(unfreeze)
    if unfreeze_from is not None:
        names = [layer.name for layer in layers]
        if unfreeze_from not in names:
            raise invalid("unfreeze_from", unfreeze_from, "no such backbone layer")
        start = names.index(unfreeze_from)
    elif count is None:  # all
        start = 0
    else:
        start = max(0, len(layers) - count)  # more than there are: all of them
    backbone.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    for inner in backbone._flatten_layers(include_self=False):  # every norm, blocks' too
        if isinstance(inner, frozen):
            inner.trainable = False
    return [layer for i, layer in enumerate(layers) if i >= start and layer.trainable_weights]


def backbone_units(backbone: Any) -> list[Any]:
    """The backbone's layers as ``unfreeze`` counts them, bottom to top (not the input or
    featcache's pooling)."""
    import keras

    return [
        layer
        for layer in _units(backbone, keras)
        if not isinstance(layer, keras.layers.InputLayer)
        and not layer.name.startswith("featcache_")
    ]


def _units(model: Any, keras: Any) -> list[Any]:
    """The layers fine-tuning counts, in order: keras-hub models inside the extractor are
    opened, and a transformer encoder counts as its blocks, so that ``unfreeze N`` counts
    transformer blocks (and the final norm) rather than whole backbones."""
    out: list[Any] = []
    for layer in model.layers:
        hub = type(layer).__module__.startswith("keras_hub")
        if isinstance(layer, keras.Model) and (hub or _holds_hub(layer)):
            out.extend(_units(layer, keras))
            continue
        blocks = getattr(layer, "encoder_layers", None) or (
            layer.layers if type(layer).__name__.endswith("Encoder") else None
        )
        out.extend(blocks if blocks else [layer])
    return out


def _holds_hub(model: Any) -> bool:
    """True for a plain functional model made of keras-hub layers (featcache's taps)."""
    return any(type(layer).__module__.startswith("keras_hub") for layer in model.layers)


def _split_rows(splits: CachedSplits, classes: np.ndarray) -> dict[str, _Rows]:
    """Train, val and test rows as the head saw them (labelled rows only, val carved from
    train the same way when the cache has none)."""
    column = {int(c): i for i, c in enumerate(classes)}
    sha = splits.reader.sha256
    rows = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        rows[name] = _Rows(
            [splits.paths[i] for i in split.rows],
            np.array([column.get(int(label), -1) for label in split.labels], np.int64),
            split.labels.astype(np.int64),
            [sha[i] for i in split.rows],
        )
    return rows


def _usable(
    rows: _Rows, source: Dataset, skipped: dict[str, str], done: Callable[[int], Any] | None = None
) -> _Rows:
    """The rows whose file (or array row) is still there with the content the cache hashed;
    ``done(1)`` after each."""
    keep = []
    for i, path in enumerate(rows.paths):
        if done is not None:
            done(1)
        try:
            _, sha = source.read(item_from_path(path))
        except (OSError, IndexError) as exc:
            skipped[path] = f"missing or unreadable: {getattr(exc, 'strerror', None) or exc}"
            continue
        if sha != rows.sha256[i]:
            skipped[path] = "changed since the cache was made"
            continue
        keep.append(i)
    return _Rows(
        [rows.paths[i] for i in keep],
        rows.columns[keep],
        rows.labels[keep],
        [rows.sha256[i] for i in keep],
    )


def _images(
    rows: _Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    shuffle_seed: int | None = None,
    balanced: bool = False,
) -> Iterator[tuple[np.ndarray, int]]:
    """Decoded, resized float32 images of (usable) ``rows``, shuffled when a seed is given;
    ``resize`` is the cache's (resize mode, decode mode); ``balanced`` (with a seed): as many
    rows drawn with replacement, every class equally likely. Never rounded: extraction and
    ``predict`` feed the resized pixels as they are (rounding them to uint8 moved pixels by up
    to 0.5 and flipped near-tie predictions, so the report disagreed with ``predict``)."""
    order = np.arange(len(rows.paths))
    if shuffle_seed is not None and balanced:
        order = np.random.default_rng(shuffle_seed).choice(
            len(order), len(order), p=balanced_draw(rows.columns)
        )
    elif shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    for i in order:
        path = rows.paths[i]
        try:
            content, sha = source.read(item_from_path(path))
        except (OSError, IndexError) as exc:
            raise DatasetError(f"{path} became unusable during fine-tuning: {exc}") from None
        if sha != rows.sha256[i]:
            raise DatasetError(f"{path} changed during fine-tuning")
        pixels, reason = decode_or_reason(
            lambda c: decode_and_resize(c, size, resize[0], decode=resize[1]), content
        )
        if pixels is None:
            raise DatasetError(f"{path} became unusable during fine-tuning: {reason}")
        yield np.asarray(pixels, np.float32), int(rows.columns[i])


def balanced_draw(columns: np.ndarray) -> np.ndarray:
    """Each row's chance in a class-balanced draw: ``1 / (classes * count of its class)``
    (rows of classes the head never saw: none)."""
    known = columns >= 0
    counts = np.bincount(columns[known]) if known.any() else np.zeros(1, np.int64)
    chance = np.zeros(len(columns), np.float64)
    chance[known] = 1.0 / counts[columns[known]]
    return chance / chance.sum()


def _dataset(make: Any, rows: int, size: tuple[int, int], batch_size: int) -> Any:
    """Batches streamed from disk by ``make()`` (re-run every epoch); memory stays bounded."""
    import tensorflow as tf

    spec = (
        tf.TensorSpec((size[0], size[1], 3), tf.float32),
        tf.TensorSpec((), tf.int64),
    )
    dataset = tf.data.Dataset.from_generator(make, output_signature=spec).batch(batch_size)
    batches = -(-rows // batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2)


def fine_tune(
    cache: str | os.PathLike[str],
    head: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    options: FineTuneOptions | None = None,
    unfreeze: str | int | None = None,
    unfreeze_from: str | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    patience: int | None = None,
    augment: str | None = None,
    seed: int | None = None,
    verbose: int = 0,
    schedule: str | None = None,
    image_size: int | None = None,
    balance: str | None = None,
    allow_trade: bool | None = None,
    time_budget: str | float | None = None,
    warmup: float | None = None,
    lr_decay: float | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> FineTuneResult:
    """Train the head of run ``head`` and the top of its backbone on the cache's images.

    The settings are ``options`` (:class:`~featcache.heads.options.FineTuneOptions`, its
    defaults when None) with the keyword arguments given (not None) put in; options left
    None take the schedule's defaults.

    ``schedule="auto"`` (the default): from the head (trained on the cache), the top layer
    group, then every layer allowed (``unfreeze``), each phase with a warm-up + cosine
    learning rate and rates decaying by ``lr_decay`` per layer group down the backbone;
    class weights with ``balance``; augmentation in the input pipeline. The best
    weights by val accuracy across every epoch are kept; when no epoch beats the head's own
    val accuracy, ``model.keras`` is the head-only model (as ``export`` makes it) and the
    report says so. ``schedule="fixed"``: one run with the options given, as before.

    The backbone trains (and is saved) in float32 whatever the cache's ``precision``; a
    head-only fallback computes in the cache's precision, as ``export`` makes it (the report's
    ``model_precision`` says which). ``model.keras`` holds no optimizer state.
    Writes ``model.keras`` (images in, probabilities out), ``report.json``,
    ``history.csv``/``.png`` and ``confusion.png`` to the run folder.

    ``progress`` (None: on a terminal) shows each step on stderr: loading the model,
    checking the images, phase 0 (the head on val images), every phase by name (``head
    warm-up``, ``unfreeze top N``) with its epoch, val accuracy, rate and ETA, and the final
    evaluation. ``verbose`` is Keras' own ``fit`` output, on stdout.

    An ``output`` folder that already holds files (the head's own run folder, say) is
    refused before anything loads unless ``overwrite``.
    """
    from .endtoend import build, save
    from .predict import check_cache_suits

    merged = merge_options(
        FineTuneOptions,
        options,
        unfreeze=unfreeze,
        unfreeze_from=unfreeze_from,
        lr=lr,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        augment=augment,
        seed=seed,
        schedule=schedule,
        image_size=image_size,
        balance=balance,
        allow_trade=allow_trade,
        time_budget=time_budget,
        warmup=warmup,
        lr_decay=lr_decay,
    )
    # the recipe reads the data for what the user left unset; what they set always wins
    explicit = frozenset(
        name
        for name in ("augment", "lr", "epochs", "image_size")
        if getattr(merged, name) is not None
    )
    chosen = merged.resolved()
    check_run_folder(output, overwrite)
    began = time.monotonic()  # a time budget counts from here: the model's load included
    auto = chosen.schedule == "auto"
    cache = Path(cache)
    head_report_path = Path(head) / "report.json"
    if not head_report_path.is_file():
        raise DatasetError(f"{head}: not a head run folder (no report.json)")
    head_report = json.loads(head_report_path.read_text())
    augmentation = [] if auto else augmentation_layers(str(chosen.augment), chosen.seed)
    # trained in float32 whatever the cache's precision: float16 gradients would need loss
    # scaling, and the unfrozen layers change the features anyway
    with Status("fine-tune: loading TensorFlow and the backbone…", progress):
        built = build(
            head,
            trainable_backbone=True,
            augmentation=augmentation,
            precision="float32",
            image_size=chosen.image_size,
        )
    trained = built.head
    val_fraction = float(head_report.get("val_fraction") or DEFAULT_VAL_FRACTION)
    head_seed = int(trained.meta.get("params", {}).get("seed", DEFAULT_SEED) or DEFAULT_SEED)
    tap = trained.meta.get("tap")  # a head on a tap (train-head --tap) reads that tap
    splits = load_splits(cache, val_fraction=val_fraction, seed=head_seed, tap=tap)
    check_cache_suits(trained, splits.reader)
    if splits.class_names != trained.class_names:
        raise DatasetError(
            f"{cache} has classes {splits.class_names}, the head was trained on "
            f"{trained.class_names}; fine-tune on a cache with the head's classes"
        )
    rows = _split_rows(splits, trained.classes)
    train_rows, val_rows, test_rows = rows["train"], rows["val"], rows["test"]
    source = open_source(splits.settings.dataset_root)
    touched = unfreeze_layers(built.backbone, chosen.unfreeze or 0, chosen.unfreeze_from)
    import keras

    keras.utils.set_random_seed(chosen.seed)
    model = built.model
    size, resize = built.image_size, (trained.settings.resize, trained.settings.decode)
    batch_size = chosen.batch_size
    skipped: dict[str, str] = {}
    checking = progress_bar(
        sum(len(r.paths) for r in (train_rows, val_rows, test_rows)),
        progress,
        "fine-tune: checking the images",
    )
    with checking:
        train_rows = _usable(train_rows, source, skipped, checking.update)
        val_rows = _usable(val_rows, source, skipped, checking.update)
        test_rows = _usable(test_rows, source, skipped, checking.update)
    if not test_rows.paths:
        raise DatasetError(f"{cache}: none of the test images is still there unchanged")
    if not train_rows.paths:
        raise DatasetError(f"{cache}: none of the train images is still there unchanged")
    known_val = _known(val_rows)
    if auto and not known_val.paths:
        raise DatasetError(
            f"{cache}: no val images of the head's classes to choose the best checkpoint by; "
            "use schedule fixed"
        )
    recipe: dict[str, Any] = {}
    if auto and "image_size" in explicit:
        recipe["image_size"] = {"chosen": chosen.image_size, "by": "asked",
                                "summary": f"{chosen.image_size} px (asked)"}  # fmt: skip
    elif auto:
        deadline = None if chosen.time_budget is None else began + float(chosen.time_budget)
        recipe["image_size"] = _own_resolution(
            built, train_rows, source, resize, chosen, deadline, progress
        )
        if recipe["image_size"]["chosen"] != size[0]:
            built = build(
                head, trainable_backbone=True, augmentation=augmentation, precision="float32",
                image_size=int(recipe["image_size"]["chosen"]),
            )  # fmt: skip
            trained, size = built.head, built.image_size
            chosen = replace(chosen, image_size=size[0])
    extra: dict[str, Any] = {}
    precision = "float32"
    started = time.monotonic()
    if auto:
        from .finetune_phases import resolve_balance, train_auto

        balancing = resolve_balance(train_rows.columns, len(trained.classes), chosen.balance)
        if "augment" in explicit:
            recipe["augment"] = {"chosen": chosen.augment, "by": "asked",
                                 "summary": f"{chosen.augment or 'none'} (asked)"}  # fmt: skip
        else:
            recipe["augment"] = _augment_test(built, train_rows, source, size, resize, chosen,
                                              progress)  # fmt: skip
            chosen = replace(chosen, augment=recipe["augment"]["chosen"])

        every = len(unfreeze_layers(built.backbone, "all"))
        allowed = unfreeze_units(built.backbone, chosen.unfreeze or 0, chosen.unfreeze_from)
        touched = [unit.name for unit in allowed]
        units = backbone_units(built.backbone)
        outcome = train_auto(
            built, chosen, units, allowed, every, train_rows.columns, len(trained.classes),
            train=_train_dataset(
                train_rows, source, size, resize, chosen, balancing == "sample"
            ),
            val=_dataset(
                lambda: _images(known_val, source, size, resize),
                len(known_val.paths), size, batch_size,
            ),
            head_val=lambda m, s: _evaluate(m, known_val, source, s, resize, trained,
                                            batch_size, _bar(progress, known_val, PHASE_0)),
            head_model=lambda: build(head).model,
            verbose=verbose,
            progress=progress,
            deadline=None if chosen.time_budget is None else began + float(chosen.time_budget),
            evaluate_share=(len(val_rows.paths) + len(test_rows.paths)) / len(known_val.paths),
            explicit=explicit,
            recipe=recipe,
            improve_margin=1.0 / len(known_val.paths),  # one more val image right
            head_margin=1.0 / len(known_val.paths),
        )  # fmt: skip
        chosen = replace(chosen, lr=outcome.lr or chosen.lr)
        history, extra = outcome.history, outcome.report
        extra["kept_layers"] = [unit.name for unit in allowed[len(allowed) - outcome.deepest :]]
        model, size, precision = outcome.model, outcome.image_size, outcome.precision
    else:
        fixed = Tracker(
            f"fine-tune (fixed): unfreeze {len(touched)} layers", progress, keras_drives=True
        )
        with tracking(fixed):
            history = _fit_fixed(
                model, chosen, train_rows, known_val, source, size, resize, verbose
            )
    fit_seconds = time.monotonic() - started
    run_dir = Path(output) if output is not None else new_run_dir(cache, "finetune")
    run_dir.mkdir(parents=True, exist_ok=True)
    for layer in augmentation:  # inference-only model: augmentation does nothing there anyway
        layer.trainable = False
    save(_uncompiled(model), run_dir / "model.keras")
    del model
    # val and test of the file written, loaded back and run as ``predict`` runs it
    exported = load_classifier(run_dir / "model.keras")
    evaluated = {}
    for split_name, split_rows in (("val", val_rows), ("test", test_rows)):
        evaluated[split_name] = _evaluate_export(
            exported, split_rows, source, trained,
            _bar(progress, split_rows, f"fine-tune: evaluating model.keras on {split_name} images"),
        )  # fmt: skip
    report: dict[str, Any] = {
        "kind": "fine-tune",
        "cache": str(cache),
        "head_run": str(head),
        "class_names": trained.class_names,
        "params": {**asdict(chosen), "unfreeze": str(chosen.unfreeze)},
        "schedule": chosen.schedule,
        "unfrozen_layers": touched,
        "precision": "float32",  # what the backbone trained in
        "model_precision": precision,  # what model.keras computes in (a fallback: the cache's)
        "cache_precision": trained.settings.precision,
        "image_size": list(size),
        "rows": {
            "train": len(train_rows.paths),
            "val": len(val_rows.paths),
            "test": len(test_rows.paths),
        },
        "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped.items())],
        "epochs_run": len(history.get("loss", [])),
        "fit_seconds": round(fit_seconds, 3),
        "head_only": {
            "val": head_report.get("val", {}).get("accuracy"),
            "test": head_report.get("test", {}).get("accuracy"),
            "test_balanced_accuracy": head_report.get("test", {}).get("balanced_accuracy"),
            "measured_on": "cached features (the head run's report)",
            # auto: phase 0, the head-only model on val's images as fine-tuning reads them
            **({"val_on_images": extra["phases"][0]["best_val_accuracy"]} if auto else {}),
        },
        **extra,
        "val": evaluated["val"],
        "test": evaluated["test"],
        "test_accuracy": evaluated["test"]["accuracy"],
        "test_balanced_accuracy": evaluated["test"]["balanced_accuracy"],
        "minority_classes": minority_recall(
            train_rows.columns, evaluated["test"], trained.class_names
        ),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    write_history(history, run_dir)
    write_confusion(
        report["test"]["confusion_matrix"],
        trained.class_names,
        run_dir / "confusion.png",
        "fine-tuned model, test split (rows normalised)",
    )
    return FineTuneResult(run_dir, report, sorted(skipped.items()))


PHASE_0 = "fine-tune phase 0 head-only: scoring the head on val images"
"""The bar of the auto schedule's phase 0."""


def _bar(progress: bool | None, rows: _Rows, desc: str) -> Any:
    """A bar over the images of ``rows``, opened when called (its clock starts then)."""
    return progress_bar(len(rows.paths), progress, desc)


def _uncompiled(model: Any) -> Any:
    """``model`` without its compile state (the training optimizer, a class of this package,
    and its moments): what plain ``keras.models.load_model`` reads back."""
    import keras

    # input and output as the model has them (one tensor, not a list of one): a list makes
    # Keras warn on every call given an array
    return keras.Model(model.input, model.output, name=model.name)


def minority_recall(
    train_columns: np.ndarray, test: dict[str, Any], class_names: list[str]
) -> list[dict[str, Any]]:
    """The classes with at most half the train rows of the largest one (none when the
    classes are balanced), with their share of train and their test recall."""
    counts = np.bincount(train_columns[train_columns >= 0], minlength=len(class_names))
    if not counts.size or counts.max() == 0:
        return []
    by_name = {c["class"]: c for c in test["per_class"]}
    return [
        {
            "class": class_names[i],
            "train_rows": int(counts[i]),
            "train_share": round(float(counts[i] / counts.sum()), 4),
            "test_recall": by_name[class_names[i]]["recall"],
            "test_support": by_name[class_names[i]]["support"],
        }
        for i in np.argsort(counts, kind="stable")
        if counts[i] * 2 <= counts.max()
    ]


def _own_resolution(
    built: Any,
    rows: _Rows,
    source: Dataset,
    resize: tuple[str, str],
    chosen: FineTuneOptions,
    deadline: float | None,
    progress: bool | None,
) -> dict[str, Any]:
    """The recipe's image size (:mod:`.resolution`): the images' own when larger than the
    cache's and the time allows, estimated from steps timed at the cache's size."""
    from .finetune_phases import set_trainable
    from .finetune_plan import measure
    from .resolution import SAMPLE, SideChoice, choose_side, larger_side_is_worth, native_side
    from .schedule import Phase, layerwise_optimizer

    size = built.image_size
    if size[0] != size[1]:
        return SideChoice(size[0], size[0], None, reason="the images are not square").record()
    contents = []
    for path in rows.paths[:SAMPLE]:
        try:
            contents.append(source.read(item_from_path(path))[0])
        except (OSError, IndexError):
            continue
    native = native_side(contents)
    if not larger_side_is_worth(native, size[0]):
        return choose_side(native, size[0], 0.0).record()
    if len(built.backbone.output.shape) != 2:
        return SideChoice(size[0], size[0], native, reason="the features are not pooled").record()
    import keras

    allowed = unfreeze_units(built.backbone, chosen.unfreeze or 0, chosen.unfreeze_from)
    units = backbone_units(built.backbone)
    deeper = Phase("deeper", len(allowed), 1, 0.0)

    def ready(phase: Phase) -> None:
        set_trainable(built.backbone, units, allowed, phase.units)
        built.model.compile(optimizer=layerwise_optimizer(chosen.optimizer, 0.0, {}),
                            loss=keras.losses.SparseCategoricalCrossentropy())  # fmt: skip

    kept = built.model.get_weights()
    with Status("fine-tune: timing a step at the cache's size…", progress):
        train = _train_dataset(rows, source, size, resize, chosen)
        timing = measure(built.model, [deeper], train, ready, None)[deeper.units]
    built.model.set_weights(kept)
    # every epoch's steps, and a trace for each of the (at most 3) phases
    epochs = float(chosen.epochs or 1)
    train_seconds = (
        epochs * int(train.cardinality()) * timing.step_seconds + 3 * timing.trace_seconds
    )
    remaining = None if deadline is None else deadline - time.monotonic()
    decision = choose_side(native, size[0], train_seconds, remaining)
    record = decision.record()
    record["step_seconds_at_cache_size"] = round(timing.step_seconds, 4)
    return record


def _augment_test(
    built: Any,
    rows: _Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    chosen: FineTuneOptions,
    progress: bool | None,
) -> dict[str, Any]:
    """The recipe's augmentation, measured (:mod:`.orientation`) on a sample of ``rows``
    through the backbone as it is before training."""
    from .orientation import SAMPLE, choose_augment

    picked = np.sort(np.random.default_rng(chosen.seed).permutation(len(rows.paths))[:SAMPLE])
    sample = _Rows(
        [rows.paths[i] for i in picked], rows.columns[picked], rows.labels[picked],
        [rows.sha256[i] for i in picked],
    )  # fmt: skip
    with Status(f"fine-tune: measuring the augmentation on {len(picked)} train images…", progress):
        images = np.stack([pixels for pixels, _ in _images(sample, source, size, resize)])
        preprocess = built.model.get_layer("preprocess")

        def features_of(batch: np.ndarray) -> np.ndarray:
            out = [
                np.asarray(built.backbone(preprocess(batch[i : i + 32]), training=False))
                for i in range(0, len(batch), 32)
            ]
            return np.concatenate(out).reshape(len(batch), -1)

        test = choose_augment(
            features_of, images, sample.columns, seed=chosen.seed, default=str(chosen.augment)
        )
    return test.record()


def _known(rows: _Rows) -> _Rows:
    """The rows of classes the head knows."""
    keep = rows.columns >= 0
    return _Rows(
        [p for p, k in zip(rows.paths, keep) if k],
        rows.columns[keep],
        rows.labels[keep],
        [s for s, k in zip(rows.sha256, keep) if k],
    )


def _fit_fixed(
    model: Any,
    chosen: FineTuneOptions,
    train_rows: _Rows,
    known_val: _Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    verbose: int,
) -> dict[str, list[float]]:
    """``schedule="fixed"``: one ``fit`` with the options given (the behaviour from before
    the auto schedule)."""
    import keras

    lr, batch_size = chosen.lr, chosen.batch_size
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }
    model.compile(
        optimizer=optimizers[chosen.optimizer](),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    epoch = iter(range(1_000_000))
    train_ds = _dataset(
        lambda: _images(train_rows, source, size, resize, chosen.seed + next(epoch)),
        len(train_rows.paths),
        size,
        batch_size,
    )
    callbacks = []
    validation = None
    if known_val.paths:
        validation = _dataset(
            lambda: _images(known_val, source, size, resize), len(known_val.paths), size, batch_size
        )
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(chosen.patience or 0), restore_best_weights=True
            )
        )
    history = model.fit(
        train_ds,
        validation_data=validation,
        epochs=chosen.epochs,
        callbacks=callbacks + keras_callbacks(),
        verbose=verbose,
    )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _train_dataset(
    rows: _Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    chosen: FineTuneOptions,
    balanced: bool = False,
) -> Any:
    """Shuffled (a new order each epoch; ``balanced``: a class-balanced draw), augmented
    (heads/augment.py) training batches."""
    import tensorflow as tf

    from .augment import augment_function

    counter = iter(range(1_000_000))

    def keyed() -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        epoch = next(counter)
        for row, (pixels, column) in enumerate(
            _images(rows, source, size, resize, chosen.seed + epoch, balanced)
        ):
            yield pixels, column, np.array([epoch, row], np.int64)

    spec = (
        tf.TensorSpec((size[0], size[1], 3), tf.float32),
        tf.TensorSpec((), tf.int64),
        tf.TensorSpec((2,), tf.int64),
    )
    augment = augment_function(str(chosen.augment), chosen.seed, size)

    def prepare(pixels: Any, column: Any, key: Any) -> tuple[Any, Any]:
        image = tf.cast(pixels, tf.float32)
        return (augment(image, key) if chosen.augment else image), column

    batches = -(-len(rows.paths) // chosen.batch_size)
    return (
        tf.data.Dataset.from_generator(keyed, output_signature=spec)
        .map(prepare)
        .batch(chosen.batch_size)
        .apply(tf.data.experimental.assert_cardinality(batches))
        .prefetch(2)
    )


def _evaluate(
    model: Any,
    rows: _Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    trained: TrainedHead,
    batch_size: int,
    bar: Any = None,
) -> dict[str, Any]:
    """Metrics over the usable rows of a split (as ``train-head`` reports them); ``bar``
    (a progress bar, closed at the end) counts the images."""
    if not rows.paths:
        raise DatasetError("no images of this split are left to evaluate on")
    predicted: list[int] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            proba = np.asarray(model(np.stack(batch), training=False))
            predicted.extend(trained.classes[np.argmax(proba, axis=1)].tolist())
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

    try:
        for pixels, _ in _images(rows, source, size, resize):
            batch.append(pixels)
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    return metrics(rows.labels, np.asarray(predicted, np.int64), trained.class_names)


def _evaluate_export(
    exported: Classifier, rows: _Rows, source: Dataset, trained: TrainedHead, bar: Any = None
) -> dict[str, Any]:
    """Metrics of the exported model over the usable rows of a split, computed as
    ``predict`` computes them: the same decode and resize (:meth:`Classifier.prepare`), the
    same batches of ``predict``'s default size, the same model file loaded back."""
    if not rows.paths:
        raise DatasetError("no images of this split are left to evaluate on")
    column = [trained.class_names.index(name) for name in exported.names]
    predicted: list[int] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            scores = exported.predict(np.stack(batch))
            predicted.extend(column[int(j)] for j in np.argmax(scores, axis=1))
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

    try:
        for i, path in enumerate(rows.paths):
            content, sha = source.read(item_from_path(path))
            if sha != rows.sha256[i]:
                raise DatasetError(f"{path} changed during fine-tuning")
            batch.append(exported.prepare(content))
            if len(batch) >= DEFAULT_PREDICT_BATCH_SIZE:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    return metrics(rows.labels, np.asarray(predicted, np.int64), trained.class_names)
