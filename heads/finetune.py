"""``fine-tune``: the tutorials' second phase. The head trained on frozen features is
stacked on the backbone the cache records, the top layers are unfrozen, and the whole
model trains end to end on the cache's images with a low learning rate."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import check_run_folder
from ..core.interrupt import armed
from ..core.progress import Status, progress_bar
from ..errors import DatasetError
from ..extractor.sources import Dataset, open_source
from .compiling import compile_for_training
from .data import load_splits
from .finetune_images import (
    Rows,
    balanced_draw,
    evaluate_exported,
    evaluate_images,
    image_dataset,
    images_bar,
    known_rows,
    predict_exported,
    read_images,
    split_rows,
    train_dataset,
    usable_rows,
)
from .finetune_layers import (
    augmentation_layers,
    backbone_units,
    unfreeze_layers,
    unfreeze_units,
)
from .finetune_plan import STOPPED_BY, stop_callback
from .finetune_recipe import augment_test, own_resolution
from .fit_progress import Tracker, keras_callbacks, tracking
from .images import Classifier
from .options import (
    AUGMENTATIONS,
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    FineTuneOptions,
    merge_options,
)
from .report import write_confusion, write_history
from .test_views import choose_test_views, evaluation_passes
from .train import new_run_dir

__all__ = [
    "AUGMENTATIONS",
    "FineTuneResult",
    "augmentation_layers",
    "backbone_units",
    "balanced_draw",
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
    test_views: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    stop: threading.Event | None = None,
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
    checking the images, (auto) the image-size and augmentation tests, phase 0 (the head on
    val images), the step timing, the learning-rate range test, every phase by name (``head
    warm-up``, ``unfreeze top N``) with its epoch, val accuracy, rate and ETA, and the final
    evaluation. ``verbose`` is Keras' own ``fit`` output, on stdout.

    An ``output`` folder that already holds files (the head's own run folder, say) is
    refused before anything loads unless ``overwrite``.

    Setting ``stop`` (the CLI sets it on Ctrl-C) ends training at the current epoch's end:
    no further phase or added epoch runs, and the best weights so far are evaluated and
    saved as usual; the report's ``stopped_early`` is true when that cut some training, and
    ``plan.notes`` say where. (A :class:`~featcache.core.interrupt.StopRequest` is armed
    only while epochs train: the CLI's Ctrl-C stops anything else at once.)
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
        test_views=test_views,
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
    rows = split_rows(splits, trained.classes)
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
        train_rows = usable_rows(train_rows, source, skipped, checking.update)
        val_rows = usable_rows(val_rows, source, skipped, checking.update)
        test_rows = usable_rows(test_rows, source, skipped, checking.update)
    if not test_rows.paths:
        raise DatasetError(f"{cache}: none of the test images is still there unchanged")
    if not train_rows.paths:
        raise DatasetError(f"{cache}: none of the train images is still there unchanged")
    known_val = known_rows(val_rows)
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
        recipe["image_size"] = own_resolution(
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
    fixed_cut: list[str] = []  # what Ctrl-C cut of the fixed schedule
    precision = "float32"
    started = time.monotonic()
    if auto:
        from .finetune_phases import resolve_balance, train_auto

        balancing = resolve_balance(train_rows.columns, len(trained.classes), chosen.balance)
        if "augment" in explicit:
            recipe["augment"] = {"chosen": chosen.augment, "by": "asked",
                                 "summary": f"{chosen.augment or 'none'} (asked)"}  # fmt: skip
        else:
            recipe["augment"] = augment_test(built, train_rows, source, size, resize, chosen,
                                              progress)  # fmt: skip
            chosen = replace(chosen, augment=recipe["augment"]["chosen"])

        val_passes, test_passes = evaluation_passes(chosen.test_views, chosen.augment)
        every = len(unfreeze_layers(built.backbone, "all"))
        allowed = unfreeze_units(built.backbone, chosen.unfreeze or 0, chosen.unfreeze_from)
        touched = [unit.name for unit in allowed]
        units = backbone_units(built.backbone)
        known_train = known_rows(train_rows)
        outcome = train_auto(
            built, chosen, units, allowed, every, train_rows.columns, len(trained.classes),
            train=train_dataset(
                train_rows, source, size, resize, chosen, balancing == "sample"
            ),
            val=image_dataset(
                lambda: read_images(known_val, source, size, resize),
                len(known_val.paths), size, batch_size,
            ),
            head_val=lambda m, s: evaluate_images(m, known_val, source, s, resize, trained,
                                            batch_size, images_bar(progress, known_val, PHASE_0)),
            head_model=lambda: build(head).model,
            verbose=verbose,
            progress=progress,
            deadline=None if chosen.time_budget is None else began + float(chosen.time_budget),
            evaluate_share=(  # the views' passes too (test_views.evaluation_passes)
                val_passes * len(val_rows.paths) + test_passes * len(test_rows.paths)
            ) / len(known_val.paths),
            evaluate_reads=(  # each image read once for its views; auto checks val twice
                (1 + (val_passes > test_passes)) * len(val_rows.paths) + len(test_rows.paths)
            ) / len(known_val.paths),
            explicit=explicit,
            recipe=recipe,
            improve_margin=1.0 / len(known_val.paths),  # one more val image right
            head_margin=1.0 / len(known_val.paths),
            plain_train=(
                image_dataset(lambda: read_images(known_train, source, size, resize),
                              len(known_train.paths), size, batch_size),
                len(known_train.paths) + len(known_val.paths),
            ),
            stop=stop,
            started=started,
        )  # fmt: skip
        chosen = replace(chosen, lr=outcome.lr or chosen.lr)
        history, extra = outcome.history, outcome.report
        if "plan" in extra:
            extra["plan"]["evaluate_passes"] = {"val": val_passes, "test": test_passes}
            extra["plan"]["evaluate_reads"] = {"val": 1 + (val_passes > test_passes), "test": 1}
        extra["kept_layers"] = [unit.name for unit in allowed[len(allowed) - outcome.deepest :]]
        model, size, precision = outcome.model, outcome.image_size, outcome.precision
    else:
        fixed = Tracker(
            f"fine-tune (fixed): unfreeze {len(touched)} layers", progress, keras_drives=True
        )
        with tracking(fixed):
            history = _fit_fixed(
                model, chosen, train_rows, known_val, source, size, resize, verbose, stop,
                fixed_cut,
            )  # fmt: skip
    fit_seconds = time.monotonic() - started
    # Ctrl-C cut some training (a press in the last epoch of all cuts none)
    cut = [*extra.get("plan", {}).get("notes", []), *fixed_cut]
    stopped_early = any(note.startswith(STOPPED_BY) for note in cut) or STOPPED_BY in str(
        recipe.get("epochs", {}).get("summary", "")
    )
    run_dir = Path(output) if output is not None else new_run_dir(cache, "finetune")
    run_dir.mkdir(parents=True, exist_ok=True)
    for layer in augmentation:  # inference-only model: augmentation does nothing there anyway
        layer.trainable = False
    plain = _uncompiled(model)
    save(plain, run_dir / "model.keras")
    del model

    # val and test of the file written, loaded back and run as ``predict`` runs it
    def on_val(classifier: Classifier, what: str) -> np.ndarray:
        bar = images_bar(progress, val_rows, f"fine-tune: evaluating model.keras on {what}")
        return predict_exported(classifier, val_rows, source, trained, bar)

    evaluating = time.monotonic()
    floor = None  # auto: the views may not take val below the head's (phase 0's) figures
    if auto and len(known_val.paths) == len(val_rows.paths):
        head_phase = extra["phases"][0]
        floor = (head_phase["val_accuracy"][0], head_phase["val_balanced_accuracy"][0])
    views = choose_test_views(
        plain, run_dir / "model.keras", chosen.test_views, chosen.augment, on_val,
        val_rows.labels, trained.class_names, save, floor,
    )  # fmt: skip
    del plain
    exported = views.classifier
    evaluated = {
        "val": views.val,
        "test": evaluate_exported(
            exported, test_rows, source, trained,
            images_bar(progress, test_rows, "fine-tune: evaluating model.keras on test images"),
        ),
    }  # fmt: skip
    evaluate_seconds = time.monotonic() - evaluating
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
        "stopped_early": stopped_early,  # Ctrl-C: the best weights so far
        "fit_seconds": round(fit_seconds, 3),
        "evaluate_seconds": round(evaluate_seconds, 3),  # test views chosen, val and test
        "head_only": {
            "val": head_report.get("val", {}).get("accuracy"),
            "test": head_report.get("test", {}).get("accuracy"),
            "test_balanced_accuracy": head_report.get("test", {}).get("balanced_accuracy"),
            "measured_on": "cached features (the head run's report)",
            # auto: phase 0, the head-only model on val's images as fine-tuning reads them
            **({"val_on_images": extra["phases"][0]["best_val_accuracy"]} if auto else {}),
        },
        **extra,
        "test_views": views.record,
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


def _fit_fixed(
    model: Any,
    chosen: FineTuneOptions,
    train_rows: Rows,
    known_val: Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    verbose: int,
    stop: threading.Event | None = None,
    stopped: list[str] | None = None,
) -> dict[str, list[float]]:
    """``schedule="fixed"``: one ``fit`` with the options given (the behaviour from before
    the auto schedule), ending at an epoch's end once ``stop`` is set (noted in
    ``stopped``)."""
    import keras

    lr, batch_size = chosen.lr, chosen.batch_size
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }
    compile_for_training(
        model,
        optimizer=optimizers[chosen.optimizer](),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    epoch = iter(range(1_000_000))
    train_ds = image_dataset(
        lambda: read_images(train_rows, source, size, resize, chosen.seed + next(epoch)),
        len(train_rows.paths),
        size,
        batch_size,
    )
    callbacks = []
    validation = None
    if known_val.paths:
        validation = image_dataset(
            lambda: read_images(known_val, source, size, resize),
            len(known_val.paths), size, batch_size,
        )  # fmt: skip
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(chosen.patience or 0), restore_best_weights=True
            )
        )
    with armed(stop):  # Ctrl-C waits for an epoch's end only here
        history = model.fit(
            train_ds,
            validation_data=validation,
            epochs=chosen.epochs,
            callbacks=callbacks
            + stop_callback(stop, [] if stopped is None else stopped)
            + keras_callbacks(),
            verbose=verbose,
        )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}
