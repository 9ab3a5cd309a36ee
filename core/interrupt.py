"""Ctrl-C that stops a run where stopping is safe instead of anywhere.

Python raises ``KeyboardInterrupt`` after whatever bytecode runs when the signal lands: in
the middle of a library's bookkeeping, or inside a finalizer, where it is printed and lost
(the run then goes on as if no key was pressed). The Python docs' advice is a handler that
only sets a flag; the run checks it where stopping is safe."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequest(threading.Event):
    """A stop flag for a run that checks it only in some parts (fine-tuning: between
    epochs): :func:`armed` marks those parts; outside them Ctrl-C stops at once."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = threading.Event()
        """Set while the run is in a part that checks the flag."""


@contextmanager
def armed(stop: threading.Event | None) -> Iterator[None]:
    """Inside: the run checks ``stop`` (a :class:`StopRequest`: Ctrl-C sets it rather than
    stopping at once; any other event: no effect)."""
    flag = getattr(stop, "armed", None)
    if not isinstance(flag, threading.Event):
        yield
        return
    flag.set()
    try:
        yield
    finally:
        flag.clear()


@contextmanager
def ctrl_c_sets(event: threading.Event, message: str) -> Iterator[threading.Event]:
    """Inside: the first Ctrl-C (SIGINT) sets ``event`` and writes ``message`` to stderr;
    a second raises ``KeyboardInterrupt`` at once, and so does the first while a
    :class:`StopRequest` is not :func:`armed`. The previous handler comes back on exit.
    Nothing changes off the main thread (where Python cannot set handlers) or where SIGINT
    is ignored (a job started in the background keeps ignoring it)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield event
        return
    waiting = getattr(event, "armed", None)

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set() or (isinstance(waiting, threading.Event) and not waiting.is_set()):
            raise KeyboardInterrupt
        event.set()
        try:  # os.write, not print: the handler may run inside a write to stderr
            os.write(2, f"\n{message}\n".encode())
        except OSError:  # stderr gone (a closed pipe): the flag is what matters
            pass

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
