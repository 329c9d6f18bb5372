"""Serving the gRPC API: the grpc.aio server, its API token check, start and stop."""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypedDict, Unpack

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from . import bulk, tracing_middleware
from .grpc_api import API_TOKEN_METADATA, DEFAULT_STOP_GRACE, Context, DaprGrpcApi
from .grpc_proxy import OutboundProxy
from .in_process import Runtime

API_LOG = logging.getLogger("mechakit.api")
"""``--enable-api-logging``: one line per call, the logger the HTTP API's lines go to."""


CallObserver = Callable[[str, str, float], None]
"""Told of each completed unary call: full method (``/dapr.proto.runtime.v1.Dapr/GetState``),
status in Go's spelling (``OK``, ``NotFound``: what daprd's metric labels carry) and
milliseconds."""


def go_status(code: grpc.StatusCode) -> str:
    """``code`` as Go's ``codes.Code.String()`` spells it (``NOT_FOUND`` → ``NotFound``)."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


def _log_call(method: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
    """daprd's "gRPC API Called" line (``--enable-api-logging``)."""
    API_LOG.info(
        'gRPC API Called: method="%s" code=%s duration=%dms', method, code.name, elapsed_ms
    )


Observer = Callable[[str, grpc.StatusCode, float], None]


def _observed(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, observers: list[Observer]
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` telling ``observers`` of each call once it completes (the API log line,
    the metrics): unary calls and, as daprd counts them, streams when they end."""
    if not observers:
        return handler
    for kind, make in _HANDLER_KINDS.items():
        behavior: Any = getattr(handler, kind)  # async under grpc.aio, typed as the sync API
        if behavior is not None:
            return make(  # type: ignore[no-any-return]
                _observing(behavior, method, observers),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


_HANDLER_KINDS: dict[str, Callable[..., Any]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _observing(behavior: Any, method: str, observers: list[Observer]) -> Any:
    """``behavior`` (a coroutine function, or an async generator function for a stream that
    yields its answers) of the same kind, telling ``observers`` when it ends."""

    def observe(context: Context, started: float, failed: bool) -> None:
        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            # grpc answers UNKNOWN for an exception (CANCELLED when the caller went away)
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        elapsed = (time.perf_counter() - started) * 1000
        for observer in observers:
            observer(method, code, elapsed)

    if inspect.isasyncgenfunction(behavior):

        async def observed_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), False
            try:
                async for answer in behavior(request, context):
                    yield answer
            except grpc.aio.AbortError:
                raise
            except BaseException:
                failed = True
                raise
            finally:
                observe(context, started, failed)

        return observed_stream

    async def observed(request: Any, context: Context) -> Any:
        started, failed = time.perf_counter(), False
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            observe(context, started, failed)

    return observed


class _ObservedRegistry:
    """What the servicer is added to: each of its handlers is wrapped in the observation once,
    when registered. (An interceptor would do it on every call, and every interceptor adds
    a coroutine to each call's handler lookup in grpc.aio.)"""

    def __init__(self, server: grpc.aio.Server, observers: list[Observer]) -> None:
        self._server, self._observers = server, observers

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_ObservedGeneric(handler, self._observers) for handler in handlers]
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        observed = {
            name: _observed(handler, f"/{service}/{name}", self._observers)
            for name, handler in handlers.items()
        }
        self._server.add_registered_method_handlers(service, observed)


_MOST_WRAPPED = 1024
"""Methods whose observed handler a generic handler keeps."""


class _ObservedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose unary handlers are observed, each wrapped once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, observers: list[Observer]) -> None:
        self._inner, self._observers = inner, observers
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        observed = _observed(handler, method, self._observers)
        if len(self._wrapped) < _MOST_WRAPPED:  # a proxy answers any name a caller makes up
            self._wrapped[method] = (handler, observed)
        return observed


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call must carry metadata ``dapr-api-token`` equal to ``DAPR_API_TOKEN``."""

    def __init__(self, token: str, observers: list[Observer]) -> None:
        self._token = token.encode()
        self._observers = observers

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        given = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == API_TOKEN_METADATA
            ),
            None,
        )
        if given is None:
            message = f"missing api token in request metadata ({API_TOKEN_METADATA})"
        else:
            value = given if isinstance(given, bytes) else given.encode()
            if hmac.compare_digest(value, self._token):
                return handler
            message = "authentication error: api token mismatch"
        if handler is None:
            return None
        return _observed(_denied(handler, message), handler_call_details.method, self._observers)


def _denied(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> Any:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""

    async def deny(request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make: Any
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ServerOptions(TypedDict, total=False):
    """What :func:`create_server` and :func:`start_server` take besides the runtime."""

    api_token: str | None
    """``DAPR_API_TOKEN``: every call must carry it as metadata ``dapr-api-token``."""
    app_port: int | None
    app_protocol: str
    """How the app is reached, for the metadata API (default ``http``)."""
    max_bulk_keys: int
    """Items one bulk request may carry (default :data:`bulk.DEFAULT_MAX_BULK_KEYS`)."""
    max_message_size: int | None
    """``--max-body-size``: a bigger request message is RESOURCE_EXHAUSTED (None: gRPC's
    own 4 MiB)."""
    api_logging: bool
    """``--enable-api-logging``: log each unary call (streams are not logged per call)."""
    on_call: CallObserver | None
    """Told of each completed unary call (the sidecar's gRPC server metrics)."""


def create_server(
    runtime: Runtime, **options: Unpack[ServerOptions]
) -> tuple[grpc.aio.Server, DaprGrpcApi]:
    """An unstarted grpc.aio server with the ``Dapr`` service over ``runtime``.

    ``SO_REUSEPORT`` is off, so a port another process serves fails to bind instead of
    being shared.
    """
    api = DaprGrpcApi(
        runtime,
        app_port=options.get("app_port"),
        app_protocol=options.get("app_protocol", "http"),
        max_bulk_keys=options.get("max_bulk_keys", bulk.DEFAULT_MAX_BULK_KEYS),
    )
    observers: list[Observer] = []
    if options.get("api_logging"):
        observers.append(_log_call)
    on_call = options.get("on_call")
    if on_call is not None:
        observers.append(lambda method, code, elapsed: on_call(method, go_status(code), elapsed))
    token = options.get("api_token")
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [_TokenCheck(token, observers)] if token else []
    )
    interceptors.append(tracing_middleware.grpc_interceptor())
    settings: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]
    size = options.get("max_message_size")
    if size is not None:
        settings.append(("grpc.max_receive_message_length", size))
    server = grpc.aio.server(interceptors=interceptors, options=settings)
    registry = _ObservedRegistry(server, observers)
    dapr_pb2_grpc.add_DaprServicer_to_server(api, registry)  # type: ignore[no-untyped-call]
    registry.add_generic_rpc_handlers((OutboundProxy(lambda: runtime.invoker),))  # after Dapr's
    return server, api


class GrpcServer:
    """A started server: :attr:`port` it listens on, :meth:`stop` to end it."""

    def __init__(self, server: grpc.aio.Server, api: DaprGrpcApi, port: int) -> None:
        self.server, self.api, self.port = server, api, port

    async def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Let calls in flight finish for up to ``grace`` seconds; streams end at once."""
        self.api.close()
        await self.server.stop(grace)


async def start_server(
    runtime: Runtime, host: str, port: int, **options: Unpack[ServerOptions]
) -> GrpcServer:
    """Serve the gRPC API on ``host:port`` (port 0: a free one); ``OSError`` when it cannot bind."""
    server, api = create_server(runtime, **options)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address} for the gRPC API (is the port taken?)") from exc
    if not bound:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return GrpcServer(server, api, bound)


__all__ = [
    "CallObserver",
    "GrpcServer",
    "ServerOptions",
    "create_server",
    "go_status",
    "start_server",
]
