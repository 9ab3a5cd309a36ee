"""Ctrl-C that stops a run between batches instead of anywhere.

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


@contextmanager
def ctrl_c_sets(event: threading.Event, message: str) -> Iterator[threading.Event]:
    """Inside: the first Ctrl-C (SIGINT) sets ``event`` and writes ``message`` to stderr;
    a second raises ``KeyboardInterrupt`` at once. The previous handler comes back on
    exit. Off the main thread (where Python cannot set handlers): nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        # os.write, not print: the handler may run inside a write to stderr
        os.write(2, f"\n{message}\n".encode())

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
