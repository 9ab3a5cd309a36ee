"""What every command shares: library errors as one-line messages and exit codes, and the
flags that several commands take, each declared once (the help text, or the default, is a
parameter where commands differ)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..core.progress import enable_notes
from ..errors import FeatcacheError
from ._options import declared_flags

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]


CONTEXT = {"help_option_names": ["-h", "--help"]}
"""Every command's click context settings: ``-h`` as well as ``--help``, also when a command
runs alone (the ``extract``, ``train-head`` and ``fine-tune`` shortcuts)."""


def flag_message(exc: FeatcacheError) -> str:
    """The error's message, naming the CLI flag where the library names a parameter."""
    text = str(exc)
    parameter = getattr(exc, "parameter", None)
    if parameter and text.startswith(parameter):
        flag = declared_flags().get(parameter, "--" + parameter.replace("_", "-"))
        text = flag + text[len(parameter) :]
    return text


def handle_errors(fn: F) -> F:
    """Turn library exceptions into one-line messages and exit codes: 2 for usage or input
    errors (:class:`FeatcacheError`), 130 for Ctrl-C, 1 for anything else. Also lets the
    library's notes (``loading TensorFlow…``) reach a terminal unless ``--quiet``/``--json``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # the command's first line on a terminal ("loading TensorFlow…"), none when quiet
        enable_notes(False if kwargs.get("quiet") or kwargs.get("as_json") else None)
        try:
            return fn(*args, **kwargs)
        except FeatcacheError as exc:
            click.echo(f"error: {flag_message(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # commands that keep partial work say what they keep
            click.echo("interrupted: stopped before the end; nothing more was written", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("FEATCACHE_DEBUG"):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"error: {type(exc).__name__}: {text} (FEATCACHE_DEBUG=1 shows more)", err=True
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def interrupted(message: str) -> None:
    """Ctrl-C in a command that saves nothing: its own message, exit status 130."""
    click.echo(f"interrupted: {message}", err=True)
    sys.exit(130)


def stacked(*decorators: Decorator[Any]) -> Decorator[Any]:
    """Several option decorators as one, applied in the order written (top first)."""

    def apply(fn: F) -> F:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# -- flags that several commands take ------------------------------------------------------


def json_option(help: str) -> Decorator[Any]:
    """``--json`` (parameter ``as_json``): print the result as JSON; ``help`` names it."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def quiet_option(help: str) -> Decorator[Any]:
    """``--quiet/-q``: no progress bar (and, per command, no summary or table)."""
    return click.option("--quiet", "-q", is_flag=True, help=help)


def output_option(help: str, required: bool = False) -> Decorator[Any]:
    """``--output/-o``: the file or folder a command writes; ``help`` gives its default."""
    if required:
        return click.option("--output", "-o", type=click.Path(), required=True, help=help)
    return click.option("--output", "-o", type=click.Path(), default=None, help=help)


def overwrite_option(help: str) -> Decorator[Any]:
    """``--overwrite``: write over an existing output; ``help`` says what it replaces."""
    return click.option("--overwrite", is_flag=True, help=help)


def seed_option(default: int, help: str | None = None) -> Decorator[Any]:
    """``--seed``: an integer seed, its default shown."""
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


def _path_flag(name: str, help: str) -> Decorator[Any]:
    """A ``--name PATH`` flag of the TLS and token options, unset by default."""
    return click.option(name, type=click.Path(), default=None, help=help)


def token_file_option(help: str) -> Decorator[Any]:
    return _path_flag("--token-file", help)


def tls_ca_option(help: str) -> Decorator[Any]:
    return _path_flag("--tls-ca", help)


def tls_cert_option(help: str) -> Decorator[Any]:
    return _path_flag("--tls-cert", help)


def tls_key_option(help: str) -> Decorator[Any]:
    return _path_flag("--tls-key", help)


def client_tls_options(remote: str) -> Decorator[Any]:
    """A client's ``--token-file``, ``--tls-ca``, ``--tls-cert`` and ``--tls-key``; ``remote``:
    the flag that names the server."""
    return stacked(
        token_file_option(f"Bearer token for {remote}."),
        tls_ca_option("CA certificate: use TLS."),
        tls_cert_option("Client certificate (mTLS)."),
        tls_key_option("Client key (mTLS)."),
    )
