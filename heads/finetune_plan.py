"""Time a user can plan: before the auto schedule trains, a few training steps of each phase
are timed on the real input pipeline; the run's time is estimated from them, the phases'
epochs are cut to a time budget, and a budget still running out stops training at an epoch's
end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .schedule import Phase, plan_phases

TIMED_STEPS = 2
"""Training steps timed per phase, after one untimed step that traces the graph."""


@dataclass
class StepTime:
    """One phase's measured cost."""

    trace_seconds: float
    """The first step: building and tracing the training graph (paid once per phase)."""
    step_seconds: float
    """A training step (a batch read, decoded, augmented, forward and backward)."""


@dataclass
class Plan:
    """What the run will do and how long it should take."""

    phases: list[Phase]
    steps: int
    """Training steps an epoch."""
    timing: dict[int, StepTime]
    """Measured cost by the number of layers a phase trains."""
    val_seconds: float
    """One pass over the val images (measured on phase 0)."""
    evaluate_seconds: float
    """The final evaluation of model.keras on val and test, the test views' passes
    included (estimated from val's)."""
    epochs_asked: int
    budget: float | None = None
    measure_seconds: float = 0.0
    before_seconds: float = 0.0
    """Seconds training had already taken when the plan was made (phase 0, the timing)."""
    notes: list[str] = field(default_factory=list)
    extend_epochs: int = 0
    """Epochs the recipe may add while val improves, at most (in the last phase's layers);
    0: none (epochs asked, or a time budget that cut them)."""

    def phase_seconds(self, phase: Phase) -> float:
        cost = self.timing[phase.units]
        return cost.trace_seconds + phase.epochs * (
            self.steps * cost.step_seconds + self.val_seconds
        )

    @property
    def seconds(self) -> float:
        """Estimated seconds from now to the end (training and the final evaluation)."""
        return sum(self.phase_seconds(p) for p in self.phases) + self.evaluate_seconds

    @property
    def most_seconds(self) -> float:
        """:attr:`seconds` with every epoch the recipe may add (a bound, not a forecast)."""
        if not (self.extend_epochs and self.phases):
            return self.seconds
        cost = self.timing[self.phases[-1].units]
        return (
            self.seconds
            + cost.trace_seconds
            + self.extend_epochs * (self.steps * cost.step_seconds + self.val_seconds)
        )

    def summary(self) -> str:
        shown = ", ".join(
            f"{p.name} {p.epochs} epoch{'s' * (p.epochs != 1)}"
            + (f" ({p.units} layers)" if p.units else "")
            for p in self.phases
        )
        steps = ", ".join(
            f"{p.name} {self.timing[p.units].step_seconds:.2f} s" for p in self.phases
        )
        text = (
            f"{shown or 'no training'}; about {duration(self.seconds)} "
            f"(a step: {steps or '-'}; val {self.val_seconds:.1f} s an epoch)"
        )
        if self.extend_epochs and self.phases:
            text += (
                f"; up to {duration(self.most_seconds)} if val keeps improving "
                f"({self.extend_epochs} more epoch{'s' * (self.extend_epochs != 1)} at most)"
            )
        if self.budget is not None:
            text += f"; time budget {duration(self.budget)}"
        return text

    def record(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "estimated_seconds": round(self.seconds, 1),
            "estimated_fit_seconds": round(
                self.before_seconds + self.seconds - self.evaluate_seconds, 1
            ),
            "estimated_most_seconds": round(self.most_seconds, 1),
            "extend_epochs_at_most": self.extend_epochs,
            "epochs_asked": self.epochs_asked,
            "epochs_planned": sum(p.epochs for p in self.phases),
            "phases": [
                {"name": p.name, "layers": p.units, "epochs": p.epochs} for p in self.phases
            ],
            "step_seconds": {
                p.name: round(self.timing[p.units].step_seconds, 4) for p in self.phases
            },
            "steps_per_epoch": self.steps,
            "val_seconds": round(self.val_seconds, 2),
            "evaluate_seconds": round(self.evaluate_seconds, 2),
            "measure_seconds": round(self.measure_seconds, 2),
            "time_budget": self.budget,
            "notes": self.notes,
        }


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def measure(
    model: Any,
    phases: list[Phase],
    train: Any,
    ready: Callable[[Phase], None],
    class_weight: dict[int, float] | None,
) -> dict[int, StepTime]:
    """Time :data:`TIMED_STEPS` steps of each phase's set-up (``ready(phase)`` makes the
    model train what the phase trains, compiled at a learning rate of 0, so no weight
    moves) on batches of ``train``."""
    timing: dict[int, StepTime] = {}
    batches = list(train.take(TIMED_STEPS + 1))  # the pipeline's cost is measured below
    for phase in phases:
        if phase.units in timing:
            continue
        ready(phase)
        started = time.monotonic()
        x, y = batches[0]
        model.train_on_batch(x, y, class_weight=class_weight)
        traced = time.monotonic()
        for x, y in batches[1:]:
            model.train_on_batch(x, y, class_weight=class_weight)
        steps = max(1, len(batches) - 1)
        timing[phase.units] = StepTime(traced - started, (time.monotonic() - traced) / steps)
    return timing


def read_seconds(train: Any, batches: int = TIMED_STEPS) -> float:
    """Seconds to read, decode and augment one batch of ``train`` (the steps timed by
    :func:`measure` use batches already in memory)."""
    started = time.monotonic()
    count = sum(1 for _ in train.take(batches))
    return (time.monotonic() - started) / max(1, count)


def fit_to_budget(
    plan: Plan,
    remaining: float,
    lr: float,
    units: int,
    head_epochs: int,
) -> Plan:
    """``plan`` with the most epochs (at most the asked ones) whose estimate fits
    ``remaining`` seconds; no phase at all when one epoch does not fit."""
    for epochs in range(plan.epochs_asked, 0, -1):
        phases = plan_phases(epochs, lr, units, head_epochs=head_epochs)
        plan.phases = phases
        if plan.seconds <= remaining:
            if epochs < plan.epochs_asked:
                plan.notes.append(
                    f"time budget: {epochs} of the {plan.epochs_asked} epochs asked fit"
                )
            return plan
    plan.phases = []
    plan.notes.append(
        f"time budget: not even one epoch fits ({duration(remaining)} left); nothing trains"
    )
    return plan


def deadline_callback(deadline: float | None, stopped: list[str]) -> list[Any]:
    """A Keras callback stopping ``fit`` at an epoch's end when another epoch (as long as the
    last) would end after ``deadline`` (``time.monotonic()``); it appends a note to
    ``stopped``. None without a deadline."""
    if deadline is None:
        return []
    import keras

    end: float = deadline

    class Deadline(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.began = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.monotonic()
            if now + (now - self.began) > end:
                self.model.stop_training = True
                stopped.append(f"time budget: stopped after epoch {epoch + 1} of this phase")

    return [Deadline()]
