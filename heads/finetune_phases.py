"""The ``auto`` fine-tuning schedule's training: phases of gradual unfreezing, each with a
warm-up + cosine learning rate and discriminative rates down the backbone, the best weights
by val accuracy kept across every epoch of every phase (the untrained head included)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.interrupt import armed
from ..core.progress import Status, on_terminal
from ..core.tf_quiet import TERMINAL_STDERR
from .compiling import compile_for_training
from .finetune_layers import set_trainable
from .finetune_plan import (
    STOPPED_BY,
    Plan,
    deadline_callback,
    duration,
    fit_to_budget,
    measure,
    on_accelerator,
    stop_callback,
)
from .finetune_refit import Refit, balanced_weights, refit_head
from .fit_progress import Tracker, keras_callbacks, tracking
from .options import BALANCE_RATIO, FineTuneOptions
from .schedule import Phase, group_scales, layerwise_optimizer, plan_phases, warmup_cosine

TIE = 1e-6
"""Val accuracies closer than this are equal (Keras' float32 metric vs a float64 count)."""


@dataclass
class PhaseRun:
    """What one phase did."""

    phase: Phase
    val_accuracy: list[float] = field(default_factory=list)
    """Val accuracy after each epoch run."""
    val_balanced_accuracy: list[float] = field(default_factory=list)
    """Val balanced accuracy (mean recall over the classes present) after each epoch run."""
    refit: Refit | None = None
    """The head phase's re-fit on frozen features (its record replaces the phase's)."""
    seconds: float | None = None
    """What the phase took, its set-up and every epoch's validation included."""
    estimated_seconds: float | None = None
    """The plan's estimate for it, made before training (None: no plan)."""

    def record(self) -> dict[str, Any]:
        timing = {
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "estimated_seconds": None
            if self.estimated_seconds is None
            else round(self.estimated_seconds, 2),
        }
        if self.refit is not None:
            return {**self.refit.record(), **timing}
        return {
            "name": self.phase.name,
            "layers": self.phase.units,
            "epochs": self.phase.epochs,
            "epochs_run": len(self.val_accuracy),
            "peak_lr": self.phase.lr,
            "val_accuracy": [round(v, 6) for v in self.val_accuracy],
            "best_val_accuracy": max(self.val_accuracy, default=None),
            "val_balanced_accuracy": [round(v, 6) for v in self.val_balanced_accuracy],
            **timing,
        }


@dataclass
class Best:
    """The best weights so far and where they came from."""

    val_accuracy: float
    """Val accuracy of the kept weights."""
    weights: list[Any]
    phase: str = "head-only"
    """``head-only``: the head as it came (phase 0), else the phase's name."""
    epoch: int = 0
    score: float | None = None
    """What the choice is made on: val accuracy, or val balanced accuracy when balancing
    (None: ``val_accuracy``)."""
    val_balanced_accuracy: float | None = None
    floor: tuple[float, float] | None = None
    """(val accuracy, val balanced accuracy) an epoch must reach to be kept (the head's;
    None: any epoch better on ``score``, the trade allowed)."""
    gain: float = 0.0
    """How much the kept epoch raised ``score`` over the best before it."""
    margin: float = 0.0
    """How much an epoch must beat the head (phase 0) on ``score`` by to replace it: more
    than one val image's worth, so that one picture of a small val does not decide."""

    def __post_init__(self) -> None:
        if self.score is None:
            self.score = self.val_accuracy

    def beats(self, value: float) -> bool:
        """Whether an epoch scoring ``value`` beats the kept weights (ties keep the earlier;
        the head only by more than ``margin``)."""
        need = max(TIE, self.margin) if self.phase == "head-only" else TIE
        return value > float(self.score or 0) + need

    def eligible(self, accuracy: float, balanced: float) -> bool:
        """Whether an epoch with these val figures may be kept (no silent trade)."""
        if self.floor is None:
            return True
        return accuracy >= self.floor[0] - TIE and balanced >= self.floor[1] - TIE


def _keep_best(model: Any, best: Best, run: PhaseRun, patience: int, select: str) -> Any:
    import keras

    class KeepBest(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.waited = 0

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            accuracy = float(logs.get("val_accuracy", float("nan")))
            balanced = float(logs.get("val_balanced_accuracy", float("nan")))
            run.val_accuracy.append(accuracy)
            run.val_balanced_accuracy.append(balanced)
            value = float(logs.get(f"val_{select}", float("nan")))
            # ties keep the earlier model; below the head on either figure: never (no trade)
            if best.beats(value) and best.eligible(accuracy, balanced):
                best.gain = value - float(best.score or 0)
                best.score, best.weights = value, model.get_weights()
                best.val_accuracy, best.val_balanced_accuracy = accuracy, balanced
                best.phase, best.epoch = run.phase.name, epoch + 1
                self.waited = 0
                return
            self.waited += 1
            if patience and self.waited >= patience:
                model.stop_training = True

    return KeepBest()


def run_phases(
    model: Any,
    backbone: Any,
    units: list[Any],
    allowed: list[Any],
    every_unit: int,
    phases: list[Phase],
    train: Any,
    val: Any,
    steps: int,
    best: Best,
    *,
    optimizer: str,
    warmup: float,
    lr_decay: float,
    class_weight: dict[int, float] | None,
    patience: int,
    verbose: int = 0,
    classes: int = 0,
    select: str = "accuracy",
    progress: bool | None = False,
    plan: Plan | None = None,
    deadline: float | None = None,
    stopped: list[str] | None = None,
    refit: Callable[[str], Refit] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[PhaseRun], dict[str, list[float]]]:
    """Train ``phases`` in turn from the weights of ``best`` (each phase starts from the
    best so far); ``best`` ends holding the best weights of all. ``units``: the backbone's
    layers as fine-tuning counts them, ``allowed``: those with weights that may train (bottom
    to top), ``every_unit``: how many layers with weights the whole backbone has (the
    learning-rate groups are fixed over all of them). Returns each phase's run and the
    concatenated Keras history. ``select``: ``accuracy`` or ``balanced_accuracy`` (of
    ``classes`` classes, also reported per epoch when ``classes`` is given), the val score the
    best weights are chosen on. ``progress`` (None: on a terminal): a bar per phase, named
    (:func:`phase_title`), over its epochs' steps, with the epoch and val accuracy, and
    (given the ``plan``) the estimated time the run has left. ``deadline``
    (``time.monotonic()``): no epoch starts that would end after it; ``stopped`` collects
    what was cut. ``refit`` (given the phase's progress title): a head phase re-fits the
    head on frozen features instead (:mod:`.finetune_refit`), and the next phase starts
    from the re-fit head whether or not it beat the best (the head it thaws under must have
    learnt under the same balance). ``stop`` (set on Ctrl-C): training ends at the current
    epoch's end and no further phase starts."""
    import keras

    scales_top_first = group_scales(every_unit, lr_decay)
    runs: list[PhaseRun] = []
    history: dict[str, list[float]] = {}
    loss = keras.losses.SparseCategoricalCrossentropy()
    cut = stopped if stopped is not None else []
    start: list[Any] | None = None
    for number, phase in enumerate(phases, 1):
        if deadline is not None and time.monotonic() >= deadline:
            cut.append(f"time budget: phases from {phase.name} on skipped")
            break
        if stop is not None and stop.is_set():
            cut.append(f"{STOPPED_BY}: phases from {phase.name} on skipped")
            break
        began = time.monotonic()
        estimate = None if plan is None else plan.phase_seconds(phase)
        model.set_weights(best.weights if start is None else start)
        start = None
        title = f"fine-tune phase {number}/{len(phases)} {phase_title(phase, refit is not None)}"
        if plan is not None:
            left = sum(plan.phase_seconds(p) for p in phases[number - 1 :])
            title += f" (run: about {duration(left + plan.evaluate_seconds)} left)"
        if phase.units == 0 and refit is not None:
            run = PhaseRun(phase, estimated_seconds=estimate)
            run.refit = done = refit(title)
            start = model.get_weights()
            # one epoch of the schedule: the re-fit head's val figures (its own epochs are
            # in its record)
            accuracy = done.val_accuracy[done.best_epoch]
            balanced = done.val_balanced_accuracy[done.best_epoch]
            run.val_accuracy, run.val_balanced_accuracy = [accuracy], [balanced]
            if done.best_epoch:
                value = accuracy if select == "accuracy" else balanced
                if best.beats(value) and best.eligible(accuracy, balanced):
                    best.gain = value - float(best.score or 0)
                    best.score, best.weights = value, start
                    best.val_accuracy, best.val_balanced_accuracy = accuracy, balanced
                    best.phase, best.epoch = phase.name, done.best_epoch
            run.seconds = time.monotonic() - began
            runs.append(run)
            continue
        set_trainable(backbone, units, allowed, phase.units)
        scales = layer_scales(allowed, scales_top_first)
        rate = warmup_cosine(phase.lr, steps * phase.epochs, warmup)
        compile_for_training(
            model,
            optimizer=layerwise_optimizer(optimizer, rate, scales),
            loss=loss,
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                *([balanced_accuracy(classes)] if classes else []),
            ],
        )
        run = PhaseRun(phase, estimated_seconds=estimate)
        with tracking(Tracker(title, progress, keras_drives=True)):
            fitted = model.fit(
                train,
                validation_data=val,
                epochs=phase.epochs,
                class_weight=class_weight,
                callbacks=[
                    _keep_best(model, best, run, patience, select),
                    *deadline_callback(deadline, cut),
                    *stop_callback(stop, cut),
                    *keras_callbacks(),
                ],
                verbose=verbose,
                shuffle=False,  # the dataset shuffles itself, a new order each epoch
            )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        run.seconds = time.monotonic() - began
        runs.append(run)
        if cut and deadline is not None and time.monotonic() >= deadline:
            break
    model.set_weights(best.weights)
    return runs, history


def layer_scales(allowed: list[Any], scales_top_first: list[float]) -> dict[int, float]:
    """Each trainable variable's learning-rate factor (by ``id``): its layer's group's."""
    scales: dict[int, float] = {}
    for depth, layer in enumerate(reversed(allowed)):
        for variable in layer.trainable_weights:
            scales[id(variable)] = scales_top_first[depth]
    return scales


def phase_title(phase: Phase, refit: bool = False) -> str:
    """What a phase trains, for its progress bar: ``head: head warm-up (backbone frozen)``
    (``refit``: ``head: head re-fit on frozen features``),
    ``top: unfreeze top 7 layers``, ``deeper: unfreeze top 28 layers``."""
    if phase.units == 0:
        what = "head re-fit on frozen features" if refit else "head warm-up (backbone frozen)"
        return f"{phase.name}: {what}"
    return f"{phase.name}: unfreeze top {phase.units} layers"


def balanced_accuracy(classes: int) -> Any:
    """A Keras metric: the mean recall over the classes present (scikit-learn's balanced
    accuracy) of sparse labels; sample weights (class weights) do not count."""
    import keras
    from keras import ops

    class BalancedAccuracy(keras.metrics.Metric):
        def __init__(self) -> None:
            super().__init__(name="balanced_accuracy")
            self.hits = self.add_variable((classes,), "zeros", name="hits")
            self.seen = self.add_variable((classes,), "zeros", name="seen")

        def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
            truth = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            right = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), truth), "float32")
            one_hot = ops.one_hot(truth, classes)
            self.seen.assign_add(ops.sum(one_hot, axis=0))
            self.hits.assign_add(ops.sum(one_hot * right[:, None], axis=0))

        def result(self) -> Any:
            present = ops.cast(self.seen > 0, "float32")
            recall = self.hits / ops.maximum(self.seen, 1.0)
            return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

        def reset_state(self) -> None:
            self.hits.assign(ops.zeros((classes,)))
            self.seen.assign(ops.zeros((classes,)))

    return BalancedAccuracy()


@dataclass
class AutoOutcome:
    """What :func:`train_auto` leaves: the model to save and what the report adds."""

    model: Any
    image_size: tuple[int, int]
    history: dict[str, list[float]]
    report: dict[str, Any]
    deepest: int
    """Backbone layers with weights the kept model trained (0: the head only or none)."""
    precision: str = "float32"
    """Compute precision of ``model``: float32 when fine-tuned, the cache's for the head."""
    lr: float | None = None
    """The peak rate the phases trained at (the recipe's or the one asked)."""


def resolve_balance(columns: np.ndarray, classes: int, balance: str) -> str:
    """What ``balance`` means for these train columns: ``weights``, ``sample`` or ``none``
    (``auto``: ``sample`` when the largest train class has :data:`BALANCE_RATIO` times the
    rows of the smallest, else ``none``)."""
    counts = np.bincount(columns[columns >= 0], minlength=classes)
    present = counts[counts > 0]
    if balance == "none" or not present.size:
        return "none"
    if balance == "auto":
        return "sample" if present.max() >= BALANCE_RATIO * present.min() else "none"
    return balance


def class_weights(columns: np.ndarray, classes: int, balance: str) -> dict[int, float] | None:
    """Balanced class weights (``n / (classes * count)``, scikit-learn's) when ``balance``
    resolves to ``weights`` (:func:`resolve_balance`); None otherwise."""
    if resolve_balance(columns, classes, balance) != "weights":
        return None
    return balanced_weights(columns, classes)


def train_auto(
    built: Any,
    chosen: FineTuneOptions,
    units: list[Any],
    allowed: list[Any],
    every: int,
    train_columns: np.ndarray,
    classes: int,
    *,
    train: Any,
    val: Any,
    head_val: Callable[[Any, tuple[int, int]], dict[str, Any]],
    head_model: Callable[[], Any],
    verbose: int = 0,
    progress: bool | None = False,
    deadline: float | None = None,
    evaluate_share: float = 2.0,
    evaluate_reads: float | None = None,
    explicit: frozenset[str] = frozenset(),
    recipe: dict[str, Any] | None = None,
    improve_margin: float = 0.0,
    head_margin: float = 0.0,
    plain_train: tuple[Any, int] | None = None,
    stop: threading.Event | None = None,
    started: float | None = None,
) -> AutoOutcome:
    """The auto schedule on ``built`` (an :class:`~featcache.heads.endtoend.EndToEnd`):
    phase 0 scores the head as ``export`` makes it on val (``head_val(model, size)``: its
    metrics), then the phases of :func:`plan_phases` train; the best val accuracy (val
    balanced accuracy when balancing) wins, and the head-only model (``head_model()``)
    unless some epoch beat it without a drop on the other figure (``allow_trade``).

    Before training, a few steps of each phase are timed (:mod:`.finetune_plan`): the plan
    and its estimate are printed (on a terminal) and reported, and with a ``deadline``
    (``time.monotonic()``, from ``time_budget``) the epochs are cut to fit it;
    ``evaluate_share``: the final evaluation's images over val's (each view counted);
    ``evaluate_reads``: the same with each image counted once for all its views (read once,
    its views one batched pass; default ``evaluate_share``).
    ``stop`` (set on Ctrl-C): training ends at the current epoch's end, the recipe adds no
    epochs, and the best weights so far are kept as usual. ``started``
    (``time.monotonic()``, default now): where the report's ``fit_seconds`` count from, so
    that the plan's ``estimated_fit_seconds`` includes what ran before (the recipe's tests).

    The recipe reads the data (:mod:`.finetune_recipe`) for the options not in
    ``explicit``: the peak rate (``lr``) from a range test before the first phase that thaws
    layers, and more epochs (``epochs``) while the last epoch is still the best by
    ``improve_margin``. ``recipe``: the choices made before (augmentation, image size); the
    report's ``recipe`` holds them all with the numbers behind them.

    ``plain_train``: (a dataset of the train images without augmentation or shuffling, the
    count of train and val images): at another size than the cache's, the head phase
    re-fits the head on their frozen features (:mod:`.finetune_refit`) before the phases that
    thaw layers; without it, at the cache's size, or when no layer may thaw (``unfreeze`` 0:
    every epoch is the head's), the head trains on the images."""
    import keras

    from .finetune_recipe import asked, choose_lr, extend, extend_cap

    began = time.monotonic()
    model, size = built.model, built.image_size
    base_size = tuple(built.head.settings.image_size)
    head_precision = str(built.head.settings.precision or "float32")
    # phase 0 scores the model the fallback exports: the training model only when it computes
    # the same (same size, float32 cache); else the export model, dropped once scored
    same = size == base_size and head_precision == "float32"
    baseline = model if same else head_model()
    scoring = time.monotonic()
    head_metrics = head_val(baseline, base_size)
    head_val_seconds = time.monotonic() - scoring
    del baseline
    # the epochs validate, and a fine-tuned model.keras is evaluated, at the training size:
    # val's reading timed there alone, the model's share of phase 0 scaled by the pixels
    # (phase 0 ran the head at the cache's size); the views of an image share its reading
    reading = time.monotonic()
    with Status("fine-tune: timing the val images' reading…", progress):
        for _ in val:
            pass
    val_read_seconds = time.monotonic() - reading
    pixels = max(1.0, (size[0] * size[1]) / (base_size[0] * base_size[1]))
    val_model_seconds = max(0.0, head_val_seconds - val_read_seconds) * pixels
    val_seconds = val_read_seconds + val_model_seconds
    evaluate_seconds = (
        evaluate_share if evaluate_reads is None else evaluate_reads
    ) * val_read_seconds + evaluate_share * val_model_seconds
    head_accuracy = float(head_metrics["accuracy"])
    head_balanced = float(head_metrics["balanced_accuracy"])
    balancing = resolve_balance(train_columns, classes, chosen.balance)
    weights = class_weights(train_columns, classes, chosen.balance)
    select = "accuracy" if balancing == "none" else "balanced_accuracy"
    head_score = head_accuracy if select == "accuracy" else head_balanced
    floor = None if chosen.allow_trade else (head_accuracy, head_balanced)
    best = Best(
        head_accuracy, model.get_weights(), score=head_score,
        val_balanced_accuracy=head_balanced, floor=floor, margin=head_margin,
    )  # fmt: skip
    # at another size the head meets features it never saw, and a balanced loss or draw is
    # not what it was trained under: one epoch for it alone first, before any layer thaws
    head_epochs = int(size != base_size or balancing != "none")
    epochs, lr = int(chosen.epochs or 1), float(chosen.lr or 0)
    phases = plan_phases(epochs, lr, len(allowed), head_epochs=head_epochs)
    steps = int(train.cardinality())
    plan = _plan(
        model, built.backbone, units, allowed, phases, train, weights, chosen.optimizer,
        steps, val_seconds, evaluate_seconds, progress,
    )  # fmt: skip
    plan.budget = None if chosen.time_budget is None else float(chosen.time_budget)
    plan.head_val_seconds, plan.val_read_seconds = head_val_seconds, val_read_seconds
    recipe = dict(recipe or {})
    if "lr" in explicit:
        recipe["lr"] = asked(lr)
    else:
        scales = layer_scales(allowed, group_scales(every, chosen.lr_decay))

        def ready(phase: Phase, rate: Any) -> None:
            set_trainable(built.backbone, units, allowed, phase.units)
            compile_for_training(
                model,
                optimizer=layerwise_optimizer(chosen.optimizer, rate, scales),
                loss=keras.losses.SparseCategoricalCrossentropy(),
            )

        recipe["lr"] = choose_lr(
            model, phases, train, plan, ready, default=lr, class_weight=weights,
            remaining=None if deadline is None else deadline - time.monotonic(),
            progress=progress,
        )  # fmt: skip
        if recipe["lr"]["chosen"] != lr:
            lr = float(recipe["lr"]["chosen"])
            phases = plan.phases = plan_phases(epochs, lr, len(allowed), head_epochs=head_epochs)
    plan.before_seconds = time.monotonic() - (began if started is None else started)
    if deadline is not None:
        plan = fit_to_budget(plan, deadline - time.monotonic(), lr, len(allowed), head_epochs)
    phases = plan.phases
    if "epochs" not in explicit and sum(p.epochs for p in phases) >= epochs:
        plan.extend_epochs = extend_cap(epochs)  # the recipe may add these while val improves
    if on_terminal(progress):
        TERMINAL_STDERR.write(
            f"fine-tune plan: {plan.summary()}\nfine-tune balance: {balancing} (asked "
            f"{chosen.balance}); keeping the best epoch by val {select.replace('_', ' ')}, "
            + ("a drop on the other figure allowed\n" if chosen.allow_trade else
               "never below the head on val accuracy or balanced accuracy\n")
            + "".join(f"fine-tune recipe {k}: {v['summary']}\n" for k, v in recipe.items())
        )  # fmt: skip
        TERMINAL_STDERR.flush()
    stopped: list[str] = []
    history: dict[str, list[float]] = {}

    refit = None
    # only at another size: at the cache's, the head already converged on these very
    # features and one epoch under the balance is enough (measured: RESULTS section 30)
    if plain_train is not None and allowed and size != base_size:
        plain, rows = plain_train

        def refit(title: str) -> Refit:
            return refit_head(
                model, built.backbone, built.head.estimator, plain, val,
                rows, classes=classes, balancing=balancing,
                select=select, seed=int(chosen.seed), progress=progress, title=title,
            )  # fmt: skip

    def train_phases(some: list[Phase]) -> list[PhaseRun]:
        done, more = run_phases(
            model, built.backbone, units, allowed, every, some, train, val, steps, best,
            optimizer=chosen.optimizer, warmup=chosen.warmup, lr_decay=chosen.lr_decay,
            class_weight=weights, patience=int(chosen.patience or 0), verbose=verbose,
            classes=classes, select=select, progress=progress, plan=plan, deadline=deadline,
            stopped=stopped, refit=refit, stop=stop,
        )  # fmt: skip
        for key, values in more.items():
            history.setdefault(key, []).extend(values)
        return done

    with armed(stop):  # Ctrl-C waits for an epoch's end only here
        runs = train_phases(phases)
        if "epochs" in explicit:
            recipe["epochs"] = asked(epochs)
        elif stop is not None and stop.is_set():
            ran = sum(len(r.val_accuracy) for r in runs)
            why = f"stopped by {STOPPED_BY}"
            recipe["epochs"] = {"chosen": ran, "by": STOPPED_BY, "asked": epochs,
                                "summary": f"{ran} of {epochs} ({why})"}  # fmt: skip
        elif stopped or sum(p.epochs for p in phases) < epochs:
            ran = sum(len(r.val_accuracy) for r in runs)
            why = "the time budget cut them"
            recipe["epochs"] = {"chosen": ran, "by": "time budget", "asked": epochs,
                                "summary": f"{ran} of {epochs} ({why})"}  # fmt: skip
        else:
            recipe["epochs"] = extend(
                train_phases, runs, best, plan, epochs_asked=epochs, margin=improve_margin,
                deadline=deadline, stop=stop,
            )  # fmt: skip
    if on_terminal(progress) and recipe["epochs"]["by"] == "val trend":
        TERMINAL_STDERR.write(f"fine-tune recipe epochs: {recipe['epochs']['summary']}\n")
    plan.notes.extend(stopped)
    beat = best.phase != "head-only"
    won = next((r.phase for r in runs if r.phase.name == best.phase), None)
    report: dict[str, Any] = {
        "epochs_run": sum(len(r.val_accuracy) for r in runs),
        "phases": [
            {
                "name": "head-only",
                "layers": 0,
                "epochs_run": 0,
                "measured_on": "val images, the head-only model as exported",
                "val_accuracy": [head_accuracy],
                "best_val_accuracy": head_accuracy,
                "val_balanced_accuracy": [head_balanced],
            },
            *(r.record() for r in runs),
        ],
        "best": {
            "phase": best.phase,
            "epoch": best.epoch,
            "val_accuracy": best.val_accuracy,
            "val_balanced_accuracy": best.val_balanced_accuracy,
            "selected_by": f"val_{select}",
            "score": best.score,
            "head_margin": round(head_margin, 6),
            "allow_trade": bool(chosen.allow_trade),
        },
        "exported": "fine-tuned" if beat else "head-only",
        "beat_head_on_val": beat,
        "balance": {"asked": chosen.balance, "used": balancing},
        "class_weight": None if weights is None else {str(k): v for k, v in weights.items()},
        "trade": trade(best, head_accuracy, head_balanced),
        "plan": plan.record(),
        "recipe": recipe,
    }
    if not beat:
        seen = max(_all(runs, select), default=0.0)
        why = f"({seen:.4f} at best vs {head_score:.4f})"
        if head_score + TIE < seen <= head_score + head_margin + TIE:
            why = (
                f"by more than one val image's worth ({seen:.4f} at best vs {head_score:.4f}; "
                f"{head_margin:.4f} needed: val has too few images to tell a smaller gain "
                "from noise)"
            )
        elif floor is not None and seen > head_score + TIE:
            why = (
                f"without losing val accuracy or balanced accuracy against it (its best "
                f"{seen:.4f} vs {head_score:.4f} came with a drop; allow_trade keeps such epochs)"
            )
        report["note"] = (
            f"fine-tuning did not beat the head on val {select.replace('_', ' ')} {why}; "
            "model.keras is the head-only model"
        )
        return AutoOutcome(head_model(), base_size, history, report, 0, head_precision, lr)
    return AutoOutcome(model, size, history, report, won.units if won else 0, lr=lr)


def _plan(
    model: Any,
    backbone: Any,
    units: list[Any],
    allowed: list[Any],
    phases: list[Phase],
    train: Any,
    class_weight: dict[int, float] | None,
    optimizer: str,
    steps: int,
    val_seconds: float,
    evaluate_seconds: float,
    progress: bool | None = False,
) -> Plan:
    """The plan of ``phases`` with each phase's steps timed (at a learning rate of 0: no
    weight moves; the weights are put back all the same), a status line on a terminal."""
    import keras

    kept = model.get_weights()
    started = time.monotonic()

    def ready(phase: Phase) -> None:
        set_trainable(backbone, units, allowed, phase.units)
        compile_for_training(
            model,
            optimizer=layerwise_optimizer(optimizer, 0.0, {}),
            loss=keras.losses.SparseCategoricalCrossentropy(),
        )

    names = ", ".join(p.name for p in phases)
    with Status(f"fine-tune: timing a train step of each phase ({names})…", progress):
        timing = measure(model, phases, train, ready, class_weight) if phases else {}
    model.set_weights(kept)
    return Plan(
        phases,
        steps,
        timing,
        val_seconds,
        evaluate_seconds,
        sum(p.epochs for p in phases),
        measure_seconds=time.monotonic() - started,
        read_overlaps=on_accelerator(),
    )


def trade(best: Best, head_accuracy: float, head_balanced: float) -> dict[str, float] | None:
    """The kept epoch's val figures against the head's when one of them dropped (only with
    ``allow_trade``): ``{"val_accuracy": change, "val_balanced_accuracy": change}``."""
    balanced = best.val_balanced_accuracy
    if balanced is None:
        return None
    change = {
        "val_accuracy": round(best.val_accuracy - head_accuracy, 6),
        "val_balanced_accuracy": round(balanced - head_balanced, 6),
    }
    return change if min(change.values()) < -TIE else None


def _all(runs: list[PhaseRun], select: str = "accuracy") -> list[float]:
    return [v for r in runs for v in getattr(r, f"val_{select}")]
