"""The ``auto`` fine-tuning recipe's learning-rate range test (Smith 2017, fastai's
``lr_find``): a few dozen training steps with the rate growing exponentially, the smoothed
loss recorded at each; the suggestion is a tenth of the rate where the loss was lowest (or
the rate of its steepest descent, when lower), clamped around the default. A suggestion
below the default is taken only when the loss diverged at or below the default rate:
fine-tuning starts from a trained head, where the loss of the first, tiny rates is mostly
noise, and on the sets measured (benchmarks/RESULTS.md section 27) a lower rate taken from
that noise kept every run at the head. The weights are put back afterwards: the test only
reads the data."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STEPS = 40
"""Training steps of the test (batches of the training pipeline, repeated if needed)."""
SPAN = 100.0
"""The rates tried run from ``default / SPAN`` to ``default * SPAN``."""
CLAMP = 10.0
"""The chosen rate stays within ``default / CLAMP`` and ``default * CLAMP``."""
SMOOTHING = 0.8
"""Exponential smoothing of the loss (bias-corrected, as fastai)."""
DIVERGED = 4.0
"""The test stops once the smoothed loss is this many times its lowest."""


@dataclass
class RangeTest:
    """The rates tried, the smoothed losses and the rate chosen."""

    default: float
    chosen: float
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    minimum_rate: float | None = None
    steepest_rate: float | None = None
    clamped: bool = False
    seconds: float = 0.0
    reason: str = ""

    @property
    def summary(self) -> str:
        if not self.rates:
            return f"{self.chosen:.2g} ({self.reason})"
        return (
            f"{self.chosen:.2g} (range test: {len(self.rates)} steps "
            f"{self.rates[0]:.1g}-{self.rates[-1]:.1g}, lowest loss at {self.minimum_rate:.2g}, "
            f"steepest descent at {self.steepest_rate:.2g}"
            + (
                f", clamped to {self.default / CLAMP:.1g}-{self.default * CLAMP:.1g}"
                if self.clamped
                else ""
            )
            + (f"; {self.reason}" if self.reason else "")
            + f"; {self.seconds:.1f} s)"
        )

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "by": "range test" if self.rates else "default",
            "summary": self.summary,
            "default": self.default,
            "minimum_loss_rate": self.minimum_rate,
            "steepest_rate": self.steepest_rate,
            "clamped": self.clamped,
            "steps": len(self.rates),
            "rates": [float(f"{r:.4g}") for r in self.rates],
            "smoothed_losses": [round(v, 5) for v in self.losses],
            "seconds": round(self.seconds, 2),
            **({"reason": self.reason} if self.reason else {}),
        }


def rate_at(step: int, steps: int, low: float, high: float) -> float:
    """The rate of ``step`` (0-based) of ``steps``: from ``low`` to ``high``, exponentially."""
    return low * (high / low) ** (step / max(1, steps - 1))


def pick_rate(rates: list[float], losses: list[float], default: float) -> RangeTest:
    """The rate a range test's smoothed ``losses`` suggest: the lower of a tenth of the rate
    of the lowest loss and the rate of the steepest descent (in log rate), clamped to within
    :data:`CLAMP` of ``default``; ``default`` itself when the suggestion is lower but the
    loss had not diverged (:data:`DIVERGED` times its lowest so far) by the default rate."""
    loss = np.asarray(losses, np.float64)
    lowest = int(np.argmin(loss))
    minimum = rates[lowest]
    slope = np.gradient(loss[: lowest + 1], np.log(rates[: lowest + 1])) if lowest >= 2 else None
    steepest = rates[int(np.argmin(slope))] if slope is not None else minimum / 10
    candidate = min(minimum / 10, steepest)
    chosen = min(max(candidate, default / CLAMP), default * CLAMP)
    reason = ""
    diverged = diverged_rate(rates, losses)
    if chosen < default and (diverged is None or diverged > default):
        chosen = default
        reason = (
            "no divergence up to the default rate: the default kept"
            if diverged is None
            else f"the loss diverged only at {diverged:.2g}, above the default: the default kept"
        )
    return RangeTest(
        default,
        float(f"{chosen:.3g}"),
        list(rates),
        list(losses),
        minimum,
        steepest,
        clamped=not reason and not math.isclose(chosen, candidate),
        reason=reason,
    )


def diverged_rate(rates: list[float], losses: list[float]) -> float | None:
    """The first rate whose smoothed loss is :data:`DIVERGED` times the lowest before it
    (where the test stops), None when the loss never got there."""
    best = math.inf
    for rate, value in zip(rates, losses, strict=True):
        best = min(best, value)
        if value > DIVERGED * best:
            return rate
    return None


def lr_range_test(
    model: Any,
    batches: Any,
    compile_at: Callable[[Any], None],
    default: float,
    *,
    steps: int = STEPS,
    class_weight: dict[int, float] | None = None,
    on_step: Callable[[], Any] | None = None,
) -> RangeTest:
    """Run the range test on ``model`` (set to train what it should) over ``batches`` (a
    ``tf.data`` dataset of (images, labels), repeated as needed): ``compile_at(rate)``
    compiles it with a rate (a float or a Keras schedule); ``on_step()`` after each step
    recorded (a progress bar's update). The weights are restored after; the optimizer is
    left for the caller to replace."""
    import keras

    started = time.monotonic()
    kept = model.get_weights()
    low, high = default / SPAN, default * SPAN

    class Growing(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            exponent = keras.ops.cast(step, "float32") / max(1, steps - 1)
            return low * keras.ops.power(high / low, exponent)

    compile_at(Growing())
    rates: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    try:
        for step, (x, y) in enumerate(batches.repeat().take(steps)):
            value = model.train_on_batch(x, y, class_weight=class_weight)
            value = float(value[0] if isinstance(value, list | tuple) else value)
            if not math.isfinite(value):
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            rates.append(rate_at(step, steps, low, high))
            losses.append(smoothed)
            if on_step is not None:
                on_step()
            best = min(best, smoothed)
            if smoothed > DIVERGED * best:
                break
    finally:
        model.set_weights(kept)
    if len(rates) < 3:
        return RangeTest(default, default, reason="the loss diverged at once; the default")
    result = pick_rate(rates, losses, default)
    result.seconds = time.monotonic() - started
    return result
