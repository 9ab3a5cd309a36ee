"""Progress on a terminal, quiet in pipes: bars (rate and ETA), one-line statuses with the
time elapsed (steps with no countable progress, such as loading a model), and the CLI's
"loading TensorFlow…" note. Everything goes to stderr, and only when stderr is a terminal
(or a caller asks for it)."""

from __future__ import annotations

import threading
from typing import Any

from .tf_quiet import TERMINAL_STDERR

_TICK_SECONDS = 0.5
"""How often a status line redraws its elapsed time."""
_notes: dict[str, bool | None] = {"enabled": False}
"""Whether :func:`note` prints: off for the library, on (terminal only) for the CLI."""
_shown: set[str] = set()
_statuses: list[Status] = []
"""The status lines showing now (a note stays quiet while one says more)."""


def on_terminal(enabled: bool | None) -> bool:
    """``enabled``, or (None) whether stderr is a terminal."""
    if enabled is None:
        return TERMINAL_STDERR.isatty()
    return bool(enabled)


def progress_bar(
    total: int | None, enabled: bool | None, desc: str, unit: str = "img", initial: int = 0
) -> Any:
    """A tqdm bar (rate and ETA) on a terminal; silent in pipes unless ``enabled``.

    ``initial``: work already done when the bar starts; it does not count in the rate.
    """
    from tqdm import tqdm

    return tqdm(
        file=TERMINAL_STDERR,
        total=total,
        initial=initial,
        unit=unit,
        desc=desc,
        disable=not on_terminal(enabled),
        smoothing=0.1,
        dynamic_ncols=True,
    )


def restart_clock(bar: Any) -> None:
    """Start ``bar``'s clock again from its count now: the work done so far (a first step
    that traced the model's graph) stays shown but leaves the rate and ETA."""
    done = bar.n
    bar.reset(bar.total)
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()


class Status:
    """One line saying what runs now and for how long (``desc [00:12]``), redrawn every half
    second on a terminal; :meth:`close` clears it. Silent in pipes unless ``enabled``."""

    def __init__(self, desc: str, enabled: bool | None) -> None:
        from tqdm import tqdm

        self.enabled = on_terminal(enabled)
        self._bar = tqdm(
            file=TERMINAL_STDERR,
            total=None,
            desc=desc,
            bar_format="{desc} [{elapsed}]",
            disable=not self.enabled,
            leave=False,
            dynamic_ncols=True,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            _statuses.append(self)
            self._thread = threading.Thread(target=self._tick, name="featcache-status", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_SECONDS):
            self._bar.refresh()

    def set(self, desc: str) -> None:
        """Say something else (the clock keeps running)."""
        self._bar.set_description_str(desc)

    def close(self) -> None:
        """Stop and clear the line (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.close()
        if self in _statuses:
            _statuses.remove(self)

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enable_notes(enabled: bool | None) -> None:
    """Let :func:`note` print (``None``: on a terminal only); the CLI's commands call this,
    off with ``--quiet`` or ``--json``. The library alone prints no notes."""
    _notes["enabled"] = enabled


def note(text: str, key: str | None = None) -> None:
    """Print ``text`` on stderr once per ``key`` (default: the text) when notes are enabled
    and stderr is a terminal, unless a :class:`Status` line already says what is going on."""
    enabled = _notes["enabled"]
    if enabled is False or not on_terminal(enabled) or _statuses:
        return
    key = key or text
    if key in _shown:
        return
    _shown.add(key)
    from tqdm import tqdm

    tqdm.write(text, file=TERMINAL_STDERR)


class DeferredBar:
    """A bar whose clock starts only once the slow start (loading a model) is over.

    :meth:`loading` shows a :class:`Status` instead (a bar already running is put away) and
    counts the work done meanwhile; :meth:`start` then opens the bar with that work as its
    ``initial``, so the rate and ETA measure the steady state only. Without :meth:`loading`
    the bar opens on the first :meth:`update`.
    """

    def __init__(self, total: int, enabled: bool | None, desc: str, unit: str = "img") -> None:
        self.total, self.enabled, self.desc, self.unit = total, enabled, desc, unit
        self.n = 0
        self._bar: Any = None
        self._status: Status | None = None
        self._lock = threading.Lock()

    def loading(self, what: str) -> None:
        """Show ``desc: what`` until :meth:`start`; may be called from any thread."""
        with self._lock:
            if self._status is not None:
                return
            if self._bar is not None:
                self._bar.leave = False
                self._bar.close()
                self._bar = None
            self._status = Status(f"{self.desc}: {what}", self.enabled)

    def start(self) -> None:
        """End the loading status and open the bar (its clock starts now)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._status is not None:
            self._status.close()
            self._status = None
        if self._bar is None:
            self._bar = progress_bar(self.total, self.enabled, self.desc, self.unit, self.n)

    def update(self, n: int) -> None:
        """``n`` more done (counted, not shown, while loading)."""
        with self._lock:
            self.n += n
            if self._status is not None:
                return
            if self._bar is None:
                self._start()  # counts the n just done as its initial
            else:
                self._bar.update(n)

    def close(self) -> None:
        """Close whatever shows."""
        with self._lock:
            if self._status is not None:
                self._status.close()
                self._status = None
            if self._bar is not None:
                self._bar.close()
