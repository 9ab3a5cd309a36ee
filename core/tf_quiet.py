"""TensorFlow's start-up noise, kept off stderr.

Importing TensorFlow prints, from C++ before its logging is set up (so
``TF_CPP_MIN_LOG_LEVEL`` cannot stop them), ``All log messages before absl::InitializeLog()``,
``oneDNN custom operations are on`` and, with the GPU wheel on a machine without one,
``Could not find cuda drivers``; its first look at the devices adds ``failed call to
cuInit``. On a CPU machine they read like failures.

:func:`install` makes the first import of TensorFlow, Keras or keras-hub (whoever imports
it) run with file descriptor 2 sent to a temporary file, together with TensorFlow's first
look at its devices; afterwards the lines of :data:`NOISE` are dropped and every other line
is written to stderr, so real errors still show. The CLI and the Ray actors install it;
``FEATCACHE_TF_LOGS=1`` turns it off and TensorFlow's messages show as they come.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

ENV = "FEATCACHE_TF_LOGS"
"""Set to 1 to let TensorFlow's start-up messages through."""

NOISE: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
        # absl's informational and warning lines (I1203 07:42:00.123 123 file.cc:12] ...)
        r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] ",
        # the errors of a GPU build on a machine without a usable GPU
        r"^E\d{4} .*\] failed call to cuInit",
        r"^E\d{4} .*\] Unable to register cu(DNN|FFT|BLAS) factory",
        r"^E\d{4} .*\] (computation placer|Attempting to register factory).*already",
    )
)
"""Start-up lines dropped: absl's INFO and WARNING lines and known harmless GPU errors."""

_TARGETS = ("tensorflow", "keras", "keras_hub")
_LOCK = threading.RLock()
"""fd 2 is the process's: one capture at a time (nested captures of one thread are fine)."""


_ORIGINAL: list[int] = []
"""The real stderr's descriptor while fd 2 is captured (the outermost capture's copy)."""


class _TerminalStderr:
    """stderr for featcache's own progress lines: the real one even while
    :func:`quiet_stderr` captures fd 2 (a status line shown while TensorFlow loads is not
    held back until it has loaded)."""

    def write(self, text: str) -> int:
        if _ORIGINAL:
            os.write(_ORIGINAL[0], text.encode("utf-8", "replace"))
            return len(text)
        return sys.stderr.write(text)

    def flush(self) -> None:
        if not _ORIGINAL:
            sys.stderr.flush()

    def fileno(self) -> int:
        return _ORIGINAL[0] if _ORIGINAL else sys.stderr.fileno()

    def isatty(self) -> bool:
        if _ORIGINAL:
            return os.isatty(_ORIGINAL[0])
        return sys.stderr.isatty()  # whatever stands in for stderr (a test's capture)


TERMINAL_STDERR = _TerminalStderr()
"""Where progress bars and status lines write (see :class:`_TerminalStderr`)."""


def tf_logs_wanted() -> bool:
    """True when ``FEATCACHE_TF_LOGS`` asks for TensorFlow's own messages."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_noise(line: str, noise: Sequence[re.Pattern[str]] = NOISE) -> bool:
    """True for a start-up line that says nothing a user can act on."""
    return any(pattern.search(line) for pattern in noise)


@contextmanager
def quiet_stderr(noise: Sequence[re.Pattern[str]] = NOISE) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs; then write back
    every line that is not ``noise`` (on success or failure alike)."""
    if tf_logs_wanted():
        yield
        return
    with _LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        outermost = not _ORIGINAL
        if outermost:
            _ORIGINAL.append(saved)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                if outermost:
                    _ORIGINAL.clear()
                os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not is_noise(line, noise))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def load_tensorflow() -> ModuleType:
    """Import TensorFlow and let it find its devices, with the start-up noise dropped."""
    with quiet_stderr():
        import tensorflow as tf

        _look_at_devices(tf)
    return tf


def _look_at_devices(tf: Any) -> None:
    """TensorFlow's first look at the devices (``cuInit``), which changes no setting."""
    try:
        tf.config.list_physical_devices()
    except Exception:  # noqa: BLE001 - a broken driver shows again at first use
        pass


class _QuietLoader(importlib.abc.Loader):
    """The module's own loader, run inside :func:`quiet_stderr`."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        with quiet_stderr():
            try:
                self.loader.exec_module(module)
            finally:
                module.__loader__ = self.loader  # the module keeps its own loader
                if module.__spec__ is not None:
                    module.__spec__.loader = self.loader
            if module.__name__ == "tensorflow":
                _look_at_devices(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds TensorFlow, Keras and keras-hub as usual, and wraps their loaders."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _TARGETS or tf_logs_wanted():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Make the first import of TensorFlow, Keras or keras-hub in this process quiet
    (nothing to do when TensorFlow is already imported)."""
    if "tensorflow" in sys.modules or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)
