"""Bearer-token authentication as a ``grpc.ServerInterceptor``.

Every call must carry ``authorization: Bearer <token>`` metadata, except the standard
health checks (so that load balancers and ``grpc_health_probe`` work without it).
"""

from __future__ import annotations

import hmac
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ..errors import InvalidOptionError

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str | os.PathLike[str], exposed: str = "refuse") -> str:
    """The token in a file (surrounding whitespace removed); empty files are refused.

    A file that group or others may read (as ssh treats a private key) is refused with
    ``exposed="refuse"`` (a server), and draws a warning with ``"warn"`` (a client, or a
    server run with ``insecure``)."""
    try:
        token = Path(path).read_text().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidOptionError(
            f"token_file {path}: {exc.strerror or exc}", "token_file"
        ) from None
    if os.name == "posix" and mode & 0o077:
        words = (
            f"token_file {path}: readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}"
        )
        if exposed == "refuse":
            raise InvalidOptionError(f"{words} (or serve with --insecure)", "token_file")
        warnings.warn(words, UserWarning, stacklevel=2)
    if not token or any(c.isspace() for c in token):
        raise InvalidOptionError(
            f"token_file {path}: expected one token without spaces", "token_file"
        )
    return token


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that refuses the call."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    factories: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    factory = factories[(handler.request_streaming, handler.response_streaming)]
    return factory(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the right bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        reason = "missing bearer token" if not given else "wrong bearer token"
        return _deny(handler, f"{reason} (send 'authorization: Bearer <token>' metadata)")
