"""The ``featcache.v1.Extractor`` method handlers, with request parsing that never fails.

The generated ``add_ExtractorServicer_to_server`` lets gRPC parse each request; bytes that
are not the request message then get INTERNAL ("Exception deserializing request!") from
gRPC itself. Here a request that does not parse reaches the servicer as :class:`Malformed`
and is answered INVALID_ARGUMENT, as every other bad input is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..errors import InvalidOptionError
from ..protos import extractor_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Extractor"]


class Malformed:
    """A request whose bytes are not the expected message."""

    def __init__(self, message: str, error: Exception) -> None:
        self.text = f"the request is not a valid {message} message ({type(error).__name__})"


def _parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's input
            return Malformed(message.DESCRIPTOR.full_name, exc)

    return parse


def _unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.text)
        return behaviour(request, context)

    return handle


def _unary_stream(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.text)
        yield from behaviour(request, context)

    return handle


def _checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    """The requests; a malformed one raises where the servicer reads it (maybe on its own
    thread), which answers INVALID_ARGUMENT as for any bad input."""
    for request in requests:
        if isinstance(request, Malformed):
            raise InvalidOptionError(request.text)
        yield request


def _stream_stream(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        yield from behaviour(_checked(requests, context), context)

    return handle


def _stream_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_checked(requests, context), context)

    return handle


def add_extractor(servicer: Any, server: grpc.Server) -> None:
    """Register ``servicer``'s methods on ``server`` (in place of the generated function)."""
    handlers = {}
    for method in SERVICE.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        options = {
            "request_deserializer": _parser(request),
            "response_serializer": response.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(_stream_stream(behaviour), **options)
        elif method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(_unary_stream(behaviour), **options)
        elif method.client_streaming:  # no such method today
            handler = grpc.stream_unary_rpc_method_handler(_stream_unary(behaviour), **options)
        else:
            handler = grpc.unary_unary_rpc_method_handler(_unary(behaviour), **options)
        handlers[method.name] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
