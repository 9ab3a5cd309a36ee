"""Time a user can plan: before the auto schedule trains, a few batches of the real input
pipeline are read (timed) and a few training steps of each phase timed on them; the run's
time is estimated from both, the phases'
epochs are cut to a time budget, and a budget still running out stops training at an epoch's
end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .schedule import Phase, plan_phases

STOPPED_BY = "Ctrl-C"
"""How the notes name a stop the user asked for (the ``stop`` event set)."""
TIMED_STEPS = 2
"""Training steps timed per phase, after one untimed step that traces the graph."""


@dataclass
class StepTime:
    """One phase's measured cost."""

    trace_seconds: float
    """The first step: building and tracing the training graph (paid once per phase)."""
    step_seconds: float
    """A training step on a batch already in memory (forward and backward)."""
    read_seconds: float = 0.0
    """Reading a batch of train: decoding and augmenting it (timed on the batches the steps
    then use, so the same for every phase)."""


@dataclass
class Plan:
    """What the run will do and how long it should take."""

    phases: list[Phase]
    steps: int
    """Training steps an epoch."""
    timing: dict[int, StepTime]
    """Measured cost by the number of layers a phase trains."""
    val_seconds: float
    """One pass over the val images at the training size: their reading, timed there, and
    the model's share of phase 0, scaled by the pixels when training runs larger than the
    cache's size (phase 0 scores the head there)."""
    evaluate_seconds: float
    """The final evaluation of model.keras on val and test, the test views' passes
    included (estimated from val's)."""
    epochs_asked: int
    budget: float | None = None
    measure_seconds: float = 0.0
    head_val_seconds: float | None = None
    """Phase 0's pass over val (the head at the cache's size), as measured."""
    val_read_seconds: float | None = None
    """Reading the val images alone at the training size, as measured."""
    before_seconds: float = 0.0
    """Seconds training had already taken when the plan was printed, counted from where the
    report's ``fit_seconds`` start (the augmentation test, phase 0, the timing, the range
    test)."""
    notes: list[str] = field(default_factory=list)
    read_overlaps: bool = False
    """Whether reading a batch overlaps the steps (an accelerator trains while the CPU
    reads: a step takes the longer of the two); on a CPU the same cores do both: they add."""
    extend_epochs: int = 0
    """Epochs the recipe may add while val improves, at most (in the last phase's layers);
    0: none (epochs asked, or a time budget that cut them)."""

    def step_seconds(self, units: int) -> float:
        """A training step of a phase training ``units`` layers, reading its batch in."""
        cost = self.timing[units]
        if self.read_overlaps:
            return max(cost.step_seconds, cost.read_seconds)
        return cost.step_seconds + cost.read_seconds

    def phase_seconds(self, phase: Phase) -> float:
        cost = self.timing[phase.units]
        return cost.trace_seconds + phase.epochs * (
            self.steps * self.step_seconds(phase.units) + self.val_seconds
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
        units = self.phases[-1].units
        return (
            self.seconds
            + self.timing[units].trace_seconds
            + self.extend_epochs * (self.steps * self.step_seconds(units) + self.val_seconds)
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
        read = max((t.read_seconds for t in self.timing.values()), default=0.0)
        reading = f", reading a batch {read:.2f} s" if read else ""
        text = (
            f"{shown or 'no training'}; about {duration(self.seconds)} "
            f"(a step: {steps or '-'}{reading}; val {self.val_seconds:.1f} s an epoch)"
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
            "before_seconds": round(self.before_seconds, 1),
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
            "read_seconds": round(
                max((t.read_seconds for t in self.timing.values()), default=0.0), 4
            ),
            "read_overlaps": self.read_overlaps,
            "val_seconds": round(self.val_seconds, 2),
            "head_val_seconds": (
                None if self.head_val_seconds is None else round(self.head_val_seconds, 2)
            ),
            "val_read_seconds": (
                None if self.val_read_seconds is None else round(self.val_read_seconds, 2)
            ),
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
    began = time.monotonic()  # reading them: no extra pass, so train's stream is unchanged
    batches = list(train.take(TIMED_STEPS + 1))
    read = (time.monotonic() - began) / max(1, len(batches))
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
        timing[phase.units] = StepTime(traced - started, (time.monotonic() - traced) / steps, read)
    return timing


def steady_read_seconds(train: Any, count: int) -> float:
    """Seconds reading one batch of ``train`` once the pipeline runs: the mean over
    ``count`` batches after the first (which pays the pipeline's start)."""
    batches = iter(train.take(count + 1))
    next(batches, None)
    began = time.monotonic()
    read = sum(1 for _ in batches)
    return (time.monotonic() - began) / max(1, read)


def on_accelerator() -> bool:
    """Whether training runs on an accelerator, so that reading (on the CPU) overlaps the
    steps; on a CPU the same cores do both and their times add."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


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


def stop_callback(stop: threading.Event | None, stopped: list[str]) -> list[Any]:
    """A Keras callback stopping ``fit`` at an epoch's end once ``stop`` is set (the user
    pressed Ctrl-C) and epochs remain; it appends a note to ``stopped``. None without an
    event."""
    if stop is None:
        return []
    import keras

    event: threading.Event = stop

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if event.is_set() and epoch + 1 < int(self.params.get("epochs") or 0):
                self.model.stop_training = True
                stopped.append(f"{STOPPED_BY}: stopped after epoch {epoch + 1} of this phase")

    return [Stop()]


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
