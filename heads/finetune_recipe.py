"""The ``auto`` recipe's choices that read the data, wired into the schedule: the peak
learning rate from a range test (:mod:`.lr_range`) and more epochs while val still improves.
Each choice returns a record (``chosen``, ``by``, ``summary`` and the numbers behind it) for
the report's ``recipe`` entry; an option the user set is never overridden (``by: asked``)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.progress import Status, progress_bar, restart_clock
from ..extractor.sources import Dataset, item_from_path
from .compiling import compile_for_training
from .finetune_images import Rows, read_images, train_dataset
from .finetune_layers import backbone_units, set_trainable, unfreeze_units
from .finetune_plan import STOPPED_BY, Plan, duration
from .lr_range import STEPS, lr_range_test
from .options import FineTuneOptions
from .schedule import Phase

EXTEND_SHARE = 0.25
"""Each extension adds this share of the epochs asked (at least one)."""
EXTEND_CAP = 0.5
"""Extensions add at most this share of the epochs asked."""
EXTEND_LR_FACTOR = 0.5
"""An extension's peak rate: this times the last phase's (a gentler warm restart)."""
RANGE_TEST_BUDGET_SHARE = 0.2
"""With a time budget, the range test runs only when its estimate fits this share of it."""


def asked(value: Any) -> dict[str, Any]:
    """The record of a choice the user made."""
    return {"chosen": value, "by": "asked", "summary": f"{value} (asked)"}


def choose_lr(
    model: Any,
    phases: list[Phase],
    train: Any,
    plan: Plan,
    ready: Callable[[Phase, Any], None],
    *,
    default: float,
    class_weight: dict[int, float] | None,
    remaining: float | None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """The peak rate for the phases: a range test on the first phase that thaws layers
    (``ready(phase, rate)`` makes the model train that phase's layers at their layer-wise
    rates, compiled at ``rate``), the model's weights put back after; the default when no
    phase thaws or a time budget (``remaining`` seconds) leaves no room."""
    thawed = next((p for p in phases if p.units), None)
    if thawed is None:
        return _default(default, "no phase trains backbone layers")
    cost = plan.timing[thawed.units]
    estimate = cost.trace_seconds + STEPS * cost.step_seconds
    if remaining is not None and estimate > RANGE_TEST_BUDGET_SHARE * remaining:
        return _default(
            default, f"the range test (about {duration(estimate)}) does not fit the budget"
        )
    desc = f"fine-tune: learning-rate range test ({thawed.name} layers)"
    with progress_bar(STEPS, progress, desc, unit="step") as bar:

        def stepped() -> None:
            bar.update()
            if bar.n == 1:  # the first step traced the graph: not in the rate or the ETA
                restart_clock(bar)

        test = lr_range_test(
            model, train, lambda rate: ready(thawed, rate), default,
            class_weight=class_weight, on_step=stepped,
        )  # fmt: skip
        if bar.n != bar.total:  # stopped where the loss diverged: the bar ends there
            bar.total = bar.n
            bar.refresh()
    record = test.record()
    record["phase"] = thawed.name
    record["estimated_seconds"] = round(estimate, 2)
    return record


def _default(default: float, reason: str) -> dict[str, Any]:
    return {
        "chosen": default,
        "by": "default",
        "summary": f"{default:g} ({reason})",
        "reason": reason,
    }


def still_improving(best: Any, run: Any, margin: float) -> bool:
    """Whether the last epoch of ``run`` (a :class:`~.finetune_phases.PhaseRun`) is the one
    ``best`` (:class:`~.finetune_phases.Best`) keeps, better than the best before it by at
    least ``margin``, and the phase ran all its epochs."""
    epochs = len(run.val_accuracy)
    return (
        epochs == run.phase.epochs
        and best.phase == run.phase.name
        and best.epoch == epochs
        and best.gain >= margin - 1e-9
    )


def extend_cap(epochs_asked: int) -> int:
    """The most epochs :func:`extend` adds to ``epochs_asked``."""
    return max(1, math.ceil(EXTEND_CAP * epochs_asked))


def extend(
    train_phases: Callable[[list[Phase]], list[Any]],
    runs: list[Any],
    best: Any,
    plan: Plan,
    *,
    epochs_asked: int,
    margin: float,
    deadline: float | None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """More epochs while val improves: when the last phase's last epoch is the best so far
    by ``margin`` or more, ``train_phases([Phase("extend", ...)])`` trains
    :data:`EXTEND_SHARE` of the epochs asked more (same layers, a warm restart at
    :data:`EXTEND_LR_FACTOR` of the peak), again while that holds, up to :data:`EXTEND_CAP`
    of the epochs asked, within the ``deadline`` and until ``stop`` is set (Ctrl-C).
    Extends ``runs``; returns the record."""
    cap = extend_cap(epochs_asked)
    step = max(1, round(EXTEND_SHARE * epochs_asked))
    added, why = 0, "nothing trained"
    checks: list[dict[str, Any]] = []
    while runs:
        if stop is not None and stop.is_set():
            why = f"stopped by {STOPPED_BY}"
            break
        last = runs[-1]
        improving = still_improving(best, last, margin)
        checks.append(
            {
                "after": last.phase.name,
                "last_epoch_is_best": best.phase == last.phase.name
                and best.epoch == len(last.val_accuracy),
                "gain": round(best.gain, 6),
                "margin": round(margin, 6),
            }
        )
        if not improving:
            why = (
                f"val stopped improving in {last.phase.name}"
                if not added
                else f"val stopped improving after {added} more"
            )
            break
        if added >= cap:
            why = f"val still improving, but at the cap of {cap} more"
            break
        phase = Phase(
            "extend", last.phase.units, min(step, cap - added), last.phase.lr * EXTEND_LR_FACTOR
        )
        needed = plan.phase_seconds(phase) if phase.units in plan.timing else 0.0
        if deadline is not None and time.monotonic() + needed > deadline:
            why = f"val still improving, but {duration(needed)} more does not fit the time budget"
            break
        more = train_phases([phase])
        if not more:
            why = "the time budget ran out"
            break
        runs.extend(more)
        added += len(more[-1].val_accuracy)
    return {
        "chosen": epochs_asked + added,
        "by": "val trend",
        "summary": f"{epochs_asked} + {added} ({why})",
        "asked": epochs_asked,
        "added": added,
        "cap": cap,
        "margin": round(margin, 6),
        "checks": checks,
    }


def own_resolution(
    built: Any,
    rows: Rows,
    source: Dataset,
    resize: tuple[str, str],
    chosen: FineTuneOptions,
    deadline: float | None,
    progress: bool | None,
) -> dict[str, Any]:
    """The recipe's image size (:mod:`.resolution`): the images' own when larger than the
    cache's and the time allows, estimated from steps timed at the cache's size and reading
    timed at the cache's size and the largest side tried."""
    from .finetune_plan import measure, on_accelerator, steady_read_seconds
    from .resolution import (
        SAMPLE,
        Cost,
        SideChoice,
        choose_side,
        larger_side_is_worth,
        largest_side,
        native_side,
    )
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
        optimizer = layerwise_optimizer(chosen.optimizer, 0.0, {})
        loss = keras.losses.SparseCategoricalCrossentropy()
        compile_for_training(built.model, optimizer=optimizer, loss=loss)

    kept = built.model.get_weights()
    top = largest_side(native or 0, size[0])
    with Status("fine-tune: timing a step at the cache's size…", progress):
        train = train_dataset(rows, source, size, resize, chosen)
        timing = measure(built.model, [deeper], train, ready, None)[deeper.units]
        # reading at both sides the same way: past the first batch, which pays each
        # pipeline's start (measure's own timing includes it)
        cache_read = steady_read_seconds(train_dataset(rows, source, size, resize, chosen), 2)
        larger = train_dataset(rows, source, (top, top), resize, chosen)
        top_read = steady_read_seconds(larger, 2)
    built.model.set_weights(kept)
    # every epoch's steps, and a trace for each of the (at most 3) phases
    steps = float(chosen.epochs or 1) * int(train.cardinality())
    cost = Cost(
        steps * timing.step_seconds + 3 * timing.trace_seconds,
        steps * cache_read,
        top,
        steps * top_read,
        on_accelerator(),
    )
    remaining = None if deadline is None else deadline - time.monotonic()
    decision = choose_side(native, size[0], cost, remaining)
    record = decision.record()
    record["step_seconds_at_cache_size"] = round(timing.step_seconds, 4)
    record["read_seconds_at_cache_size"] = round(cache_read, 4)
    record["read_seconds_at_largest_side"] = {"side": top, "seconds": round(top_read, 4)}
    return record


def augment_test(
    built: Any,
    rows: Rows,
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
    sample = Rows(
        [rows.paths[i] for i in picked], rows.columns[picked], rows.labels[picked],
        [rows.sha256[i] for i in picked],
    )  # fmt: skip
    with Status(f"fine-tune: measuring the augmentation on {len(picked)} train images…", progress):
        images = np.stack([pixels for pixels, _ in read_images(sample, source, size, resize)])
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
