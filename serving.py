"""``featcache.serve`` and ``featcache.start_server``: the gRPC service
(:mod:`featcache.service`) with ``Classify`` models loaded by
:func:`featcache.heads.endtoend.load_model`. The service itself knows nothing of heads;
this is where the two meet."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service.options import ServeOptions
    from .service.server import Server


def _load_classifier(path: str) -> tuple[Any, list[str], list[int]]:
    from .heads.endtoend import load_model

    return load_model(path)


def start_server(options: ServeOptions, warm: bool = True) -> Server:
    """Build and start a server (``options.port=0`` picks a free port); with ``warm``, load
    the preloaded backbones and the ``models`` classifiers first."""
    from .service.server import start_server as start

    return start(_with_loader(options), warm=warm)


def serve(options: ServeOptions) -> None:
    """Run a server until SIGTERM or Ctrl-C, then drain (``featcache serve``)."""
    from .service.server import serve as run

    run(_with_loader(options))


def _with_loader(options: ServeOptions) -> ServeOptions:
    if options.load_classifier is not None:
        return options
    return replace(options, load_classifier=_load_classifier)
