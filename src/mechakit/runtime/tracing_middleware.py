"""The doors' side of tracing: the HTTP API's ASGI middleware and the gRPC API's
interceptor, each call in a span named as daprd names it (see :mod:`.tracing`)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .tracing import TRACEPARENT, TRACESTATE, SpanKind, TraceContext, incoming, span, tracer

if TYPE_CHECKING:
    import grpc
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

INVOKE_SERVICE = "/dapr.proto.runtime.v1.Dapr/InvokeService"
_INVOKE_PATH = re.compile(r"/v1\.0/invoke/([^/]+)/method/?(.*)")


def http_span_name(path: str) -> str:
    """daprd's name for an HTTP API span: ``CallLocal/<app>/<method>`` for an invocation,
    else the path."""
    found = _INVOKE_PATH.fullmatch(path)
    return f"CallLocal/{found.group(1)}/{found.group(2)}" if found else path


class HttpTracing:
    """ASGI middleware of the HTTP API: a span per call (health checks aside), current
    while the call is served, and its ``traceparent`` in the answer unless the answer has
    one (an invoked app's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or "/healthz" in path or not tracer().enabled:
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        parent = TraceContext.parse(
            next((v for k, v in headers if k == TRACEPARENT), None),
            next((v for k, v in headers if k == TRACESTATE), None),
        )
        with span(http_span_name(path), parent, SpanKind.CLIENT) as active:
            assert active is not None
            active.attributes.update(
                {
                    "dapr.api": f"{scope['method']} {path}",
                    "dapr.protocol": "http",
                    "http.request.method": str(scope["method"]),
                }
            )

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    active.attributes["dapr.status_code"] = str(status)
                    active.http_status(status)
                    answer = list(message.get("headers", []))
                    if not any(k.lower() == b"traceparent" for k, _ in answer):
                        answer += [(k.encode(), v.encode()) for k, v in active.context.headers()]
                        message = {**message, "headers": answer}
                await send(message)

            await self.app(scope, receive, sending)


def grpc_span_name(method: str, request: Any) -> str:
    """daprd's name for a gRPC API span: ``CallLocal/<app>/<method>`` for
    ``InvokeService``, else the full method."""
    if method == INVOKE_SERVICE:
        return f"CallLocal/{request.id}/{request.message.method}"
    return method


def grpc_interceptor() -> grpc.aio.ServerInterceptor:
    """The gRPC API's interceptor: each unary call in a span, the child of the caller's
    ``grpc-trace-bin`` or ``traceparent`` metadata (streams are not traced)."""
    import grpc.aio

    class GrpcTracing(grpc.aio.ServerInterceptor):
        async def intercept_service(
            self,
            continuation: Callable[
                [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
            ],
            details: grpc.HandlerCallDetails,
        ) -> grpc.RpcMethodHandler[Any, Any] | None:
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None or not tracer().enabled:
                return handler
            behavior: Any = handler.unary_unary  # async under grpc.aio
            method = details.method
            parent = incoming(details.invocation_metadata)

            async def traced(request: Any, context: Any) -> Any:
                with span(grpc_span_name(method, request), parent, SpanKind.CLIENT) as active:
                    if active is not None:
                        active.attributes.update({"dapr.api": method, "dapr.protocol": "grpc"})
                    return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(
                traced,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    return GrpcTracing()


__all__ = ["HttpTracing", "grpc_interceptor", "grpc_span_name", "http_span_name"]
