"""The ``auto`` fine-tuning recipe's schedule: gradual unfreezing in phases (head first, then
the top of the backbone, then more, as ULMFiT and fastai's ``fine_tune``), a linear warm-up
and cosine decay of the learning rate in every phase, and discriminative learning rates (each
backbone group's rate a constant factor below the group above it).

Plain arithmetic here; :func:`layerwise_optimizer` builds the Keras optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LR_GROUPS = 4
"""The backbone's layers with weights are cut into this many groups of equal count, top
first; the rate of group g is ``lr * LR_DECAY**g``."""
LR_DECAY = 1 / 2.6
"""ULMFiT's factor between the rates of successive layer groups (Howard & Ruder 2018)."""
WARMUP_SHARE = 0.1
"""Share of a phase's steps spent warming up linearly from 0 to the phase's peak rate."""
HEAD_PHASE_LR_FACTOR = 10.0
"""The head-only phase's peak rate is this times ``lr`` (the backbone is frozen there)."""
TOP_SHARE = 1 / LR_GROUPS
"""The ``top`` phase unfreezes this share of the backbone's layers with weights (group 0)."""


@dataclass(frozen=True)
class Phase:
    """One stage of the auto schedule."""

    name: str
    """``head`` (backbone frozen), ``top`` (the top group too) or ``deeper`` (every group
    up to the unfreeze limit)."""
    units: int
    """Backbone layers with weights trained in this phase (the top ones)."""
    epochs: int
    lr: float
    """Peak learning rate of the head and of the top group."""


def plan_phases(epochs: int, lr: float, units: int, head_epochs: int = 0) -> list[Phase]:
    """The phases of ``epochs`` epochs in all for a backbone whose top ``units`` layers with
    weights may train: ``head_epochs`` training the head only, a third of the rest on the
    top group, the remainder on every allowed layer; every epoch on the head when ``units``
    is 0. A phase that would repeat the previous one's layers is merged into it.

    The head's own first phase is ``train-head`` on the cache, so ``fine_tune`` asks for no
    head epochs at the cache's size: measured, a head-only epoch on the images never raised
    val accuracy above the head's (7 runs, 3 data sets) and only took an epoch from the
    deeper phase. At another ``image_size`` it asks for one (the head never saw those
    features)."""
    head = min(head_epochs, epochs - 1) if units else epochs
    rest = epochs - head
    phases = []
    if head:
        phases.append(Phase("head", 0, head, lr * HEAD_PHASE_LR_FACTOR))
    if units == 0:
        return phases
    top_units = min(units, max(1, round(units * TOP_SHARE)))
    top_epochs = max(1, rest // 3) if top_units < units else rest
    if top_epochs < rest:
        phases.append(Phase("top", top_units, top_epochs, lr))
        phases.append(Phase("deeper", units, rest - top_epochs, lr))
    else:
        phases.append(Phase("deeper", units, rest, lr))
    return phases


def group_scales(total: int, decay: float = LR_DECAY) -> list[float]:
    """Learning-rate factor of each of ``total`` backbone layers with weights, top first:
    ``decay**g`` for the layers of group g (:data:`LR_GROUPS` groups of equal count)."""
    size = max(1, -(-total // LR_GROUPS))
    return [decay ** (i // size) for i in range(total)]


def warmup_cosine(peak: float, steps: int, warmup_share: float = WARMUP_SHARE) -> Any:
    """Keras schedule: linear warm-up over ``warmup_share`` of ``steps`` (``w`` steps, at least
    one unless the share is 0; step ``s`` of it at ``peak * (s + 1) / w``, so no step runs at
    rate 0), then cosine decay from ``peak`` to 0 at ``steps``."""
    import keras

    warmup = max(1, round(steps * warmup_share)) if warmup_share > 0 else 0
    if warmup <= 1:  # one warm-up step is already at the peak
        return keras.optimizers.schedules.CosineDecay(peak, max(1, steps), alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / warmup,
        decay_steps=max(1, steps - warmup + 1),
        alpha=0.0,
        warmup_target=peak,
        warmup_steps=warmup - 1,
    )


def layerwise_optimizer(name: str, learning_rate: Any, scales: dict[int, float]) -> Any:
    """A Keras optimizer (``adam``, ``sgd`` with momentum 0.9 or ``rmsprop``) whose step for
    a variable uses ``learning_rate`` times ``scales[id(variable)]`` (1 when absent)."""
    import keras

    base = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }[name]

    class Layerwise(base):  # type: ignore[misc, valid-type]
        def build(self, variables: list[Any]) -> None:
            super().build(variables)
            self._lr_scale = [float(scales.get(id(v), 1.0)) for v in variables]

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            scale = self._lr_scale[self._get_variable_index(variable)]
            return super().update_step(gradient, variable, learning_rate * scale)

    extra = {"momentum": 0.9} if name == "sgd" else {}
    return Layerwise(learning_rate=learning_rate, **extra)
