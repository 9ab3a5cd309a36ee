"""Exceptions raised by featcache.

Every error a user can cause derives from :class:`FeatcacheError`; the CLI turns
them into one-line messages and exit status 2, the gRPC servicer into status codes.
"""

from __future__ import annotations


class FeatcacheError(Exception):
    """Base class of the errors a user can cause (bad input, options or files)."""


class UnknownBackboneError(FeatcacheError, KeyError):
    """The backbone name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidOptionError(FeatcacheError, ValueError):
    """An option value is malformed or inconsistent with the others.

    Messages start with the Python parameter's name (``resize 'x': expected ...``); the
    CLI shows the matching flag instead (``--resize 'x': ...``).
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        """The parameter at fault (``batch_size``), when one is."""


class DatasetError(FeatcacheError):
    """The dataset cannot be read (missing, empty, bad layout)."""


class CacheError(FeatcacheError):
    """A cache file is missing, unreadable or of an unsupported version."""


class SettingsMismatchError(CacheError):
    """An existing cache was made with other settings than the ones asked for."""


class CacheLockedError(CacheError):
    """Another process is writing the same cache file."""


class CacheChangedError(CacheError):
    """A cache file was replaced (rewritten by a run) after a reader opened it: open it
    again to read the new one."""


class WeightsError(FeatcacheError):
    """Backbone weights could not be loaded."""


class ExtractionCancelled(FeatcacheError):
    """An extraction was stopped on request; the rows embedded so far are saved."""


class EngineError(FeatcacheError):
    """An extraction engine (Ray) is not installed, cannot start, or failed."""


class AccessDenied(FeatcacheError):
    """A request names a path outside the folders the server exposes."""


class NotFound(FeatcacheError):
    """A request names a dataset that does not exist under the data root."""


class RemoteError(FeatcacheError):
    """A featcache server refused a call or could not be reached."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code
        """The gRPC status code name, e.g. ``UNAUTHENTICATED``."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
