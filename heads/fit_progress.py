"""Progress of training on a terminal: which head or phase trains, its epoch and val
accuracy, the rate and ETA (:mod:`featcache.core.progress`), quiet in pipes.

A :class:`Tracker` is one bar. Either Keras drives it (``keras_drives``: the bar counts the
training steps of every epoch of one ``fit``, as ``train-head``'s dense head and each
fine-tuning phase), or its owner counts its own steps (``compare``'s fits) and a ``fit``
inside only names its epoch. :func:`tracking` makes a tracker the current one; the dense
head and the fine-tuning phases add :func:`keras_callbacks` to their ``fit``, which are
none when nothing tracks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..core.progress import Status, on_terminal, progress_bar, restart_clock

_CURRENT: ContextVar[Tracker | None] = ContextVar("featcache_fit_progress", default=None)


class Tracker:
    """One bar of training progress (nothing is drawn unless ``enabled`` or a terminal).

    The bar opens on first use, so a model that is still loading draws nothing yet.
    """

    def __init__(
        self,
        desc: str,
        enabled: bool | None,
        total: int | None = None,
        unit: str = "step",
        keras_drives: bool = False,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = on_terminal(enabled)
        self.keras_drives = keras_drives
        self._bar: Any = None
        self._detail = ""

    @property
    def bar(self) -> Any:
        """The tqdm bar, opened on first use."""
        if self._bar is None:
            self._bar = progress_bar(self.total, self.enabled, self.desc, self.unit)
        return self._bar

    def step(self, desc: str) -> None:
        """Name what trains now (the bar's description)."""
        self.desc = desc
        self._detail = ""
        if self._bar is not None or not self.keras_drives:
            self.bar.set_description_str(desc, refresh=False)
            self.bar.set_postfix_str("", refresh=True)

    def detail(self, text: str) -> None:
        """Say more after the bar (epoch, val accuracy)."""
        if text != self._detail:
            self._detail = text
            self.bar.set_postfix_str(text)

    def advance(self, n: float = 1) -> None:
        """``n`` more steps done."""
        self.bar.update(n)

    def restart(self, total: int) -> None:
        """Count ``total`` steps from 0 (a new ``fit`` driving the bar)."""
        if self._bar is None:
            self.total = total
        else:
            self._bar.reset(total=total)

    def finish(self) -> None:
        """Stopped early: the bar ends where the work did."""
        if self._bar is not None and self._bar.total != self._bar.n:
            self._bar.total = self._bar.n
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def tracking(tracker: Tracker | None) -> Iterator[Tracker | None]:
    """Make ``tracker`` the current one (None: keep the current); close it on leaving."""
    if tracker is None:
        yield _CURRENT.get()
        return
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    finally:
        _CURRENT.reset(token)
        tracker.close()


def current() -> Tracker | None:
    """The tracker in use, if any."""
    return _CURRENT.get()


def step(desc: str) -> None:
    """Name what the current tracker's next steps train (nothing when none tracks)."""
    tracker = _CURRENT.get()
    if tracker is not None:
        tracker.step(desc)


def detail(text: str) -> None:
    """Say more on the current tracker's bar (nothing when none tracks)."""
    tracker = _CURRENT.get()
    if tracker is not None:
        tracker.detail(text)


def advance(n: float = 1) -> None:
    """Count ``n`` steps on the current tracker (nothing when none tracks)."""
    tracker = _CURRENT.get()
    if tracker is not None:
        tracker.advance(n)


def status(desc: str) -> Status | None:
    """A :class:`Status` line (``desc [elapsed]``) when a tracker is current and enabled:
    for fits with no steps to count (scikit-learn heads); close it when done."""
    tracker = _CURRENT.get()
    if tracker is None or not tracker.enabled:
        return None
    return Status(desc, True)


def keras_callbacks() -> list[Any]:
    """A Keras callback reporting to the current tracker, or none when nothing tracks.

    A tracker that Keras drives counts the training steps of every epoch (its total set
    when training begins; an early stop ends the bar where training did); any tracker shows
    the epoch and its val accuracy.
    """
    tracker = _CURRENT.get()
    if tracker is None or not tracker.enabled:
        return []
    import keras

    live: Tracker = tracker  # for the class below (mypy narrows no closure)

    class Report(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs, self.steps, self.epoch = 0, 0, 0
            self.val = ""
            self.warm = False
            """Whether the first step (which traces the graph) is done."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.epochs = int(self.params.get("epochs") or 0)
            self.steps = int(self.params.get("steps") or 0)
            if live.keras_drives:
                live.restart(self.epochs * self.steps if self.steps else self.epochs)
                live.bar.set_description_str(live.desc)
            self._show()

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch
            self._show()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if live.keras_drives and self.steps:
                # several steps per execution may report past the epoch's end
                done = self.epoch * self.steps + min(batch + 1, self.steps)
                if done > live.bar.n:
                    live.advance(done - live.bar.n)
            if not self.warm:  # the rate and ETA leave the graph's tracing out
                self.warm = True
                if live.keras_drives:
                    restart_clock(live.bar)
                self._show()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            if "val_accuracy" in logs:
                self.val = f", val acc {float(logs['val_accuracy']):.3f}"
            if live.keras_drives:
                end = (epoch + 1) * self.steps if self.steps else epoch + 1
                if end > live.bar.n:
                    live.advance(end - live.bar.n)
            self.epoch = epoch + 1
            self._show()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if live.keras_drives:
                live.finish()

        def _show(self) -> None:
            if self.epochs:
                shown = min(self.epoch + 1, self.epochs)
                first = "" if self.warm else " (tracing the model…)"
                live.detail(f"epoch {shown}/{self.epochs}{self.val}{first}")

    return [Report()]
