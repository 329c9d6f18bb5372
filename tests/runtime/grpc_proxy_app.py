"""A plain gRPC app for the proxying tests, with no Dapr in it: service ``echo.v1.Echo`` over
``google.protobuf.StringValue`` messages, written as generated code is (a servicer, its
registration and a stub class), so no codegen step is needed. Served by
``python grpc_proxy_app.py PORT grpc``.

Methods: ``Hello`` (unary: the request and the metadata it came with, as JSON, with initial
and trailing metadata of its own), ``Count`` (server streaming), ``Join`` (client streaming),
``Chat`` (bidirectional), ``Fail`` (NOT_FOUND with rich details), ``Hang`` (waits until
cancelled) and ``Cancelled`` (how many ``Hang`` calls came, and were cancelled, so far).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

SERVICE = "echo.v1.Echo"
FAILURE_REASON = "ORDER_NOT_FOUND"

Context = grpc.aio.ServicerContext[StringValue, StringValue]


class EchoServicer:
    """The app's implementation of ``echo.v1.Echo``."""

    def __init__(self) -> None:
        self.hanging = 0
        self.cancelled = 0

    async def Hello(self, request: StringValue, context: Context) -> StringValue:
        await context.send_initial_metadata((("x-answer-header", "from-app"),))
        context.set_trailing_metadata((("x-answer-trailer", "done"),))
        seen = {
            "value": request.value,
            "metadata": {
                key: value if isinstance(value, str) else value.hex()
                for key, value in context.invocation_metadata() or ()
            },
            "deadline": context.time_remaining(),
        }  # fmt: skip
        return StringValue(value=json.dumps(seen))

    async def Count(self, request: StringValue, context: Context) -> AsyncIterator[StringValue]:
        for number in range(1, int(request.value) + 1):
            yield StringValue(value=str(number))

    async def Join(self, requests: AsyncIterator[StringValue], context: Context) -> StringValue:
        return StringValue(value="+".join([request.value async for request in requests]))

    async def Chat(
        self, requests: AsyncIterator[StringValue], context: Context
    ) -> AsyncIterator[StringValue]:
        async for request in requests:
            yield StringValue(value=request.value.upper())

    async def Fail(self, request: StringValue, context: Context) -> StringValue:
        detail = error_details_pb2.ErrorInfo(
            reason=FAILURE_REASON, domain="echo.example", metadata={"order": request.value}
        )
        status = status_pb2.Status(
            code=grpc.StatusCode.NOT_FOUND.value[0], message=f"no order {request.value}"
        )
        status.details.add().Pack(detail)
        trailers = (("grpc-status-details-bin", status.SerializeToString()), ("x-failure", "order"))
        await context.abort(grpc.StatusCode.NOT_FOUND, status.message, trailers)

    async def Hang(self, request: StringValue, context: Context) -> StringValue:
        self.hanging += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return request

    async def Cancelled(self, request: StringValue, context: Context) -> StringValue:
        return StringValue(value=json.dumps({"hanging": self.hanging, "cancelled": self.cancelled}))


def _serialize(message: StringValue) -> bytes:
    return message.SerializeToString()


def add_echo_servicer_to_server(servicer: EchoServicer, server: grpc.aio.Server) -> None:
    """What generated ``add_EchoServicer_to_server`` does."""
    kinds: dict[str, Any] = {
        "Hello": grpc.unary_unary_rpc_method_handler,
        "Count": grpc.unary_stream_rpc_method_handler,
        "Join": grpc.stream_unary_rpc_method_handler,
        "Chat": grpc.stream_stream_rpc_method_handler,
        "Fail": grpc.unary_unary_rpc_method_handler,
        "Hang": grpc.unary_unary_rpc_method_handler,
        "Cancelled": grpc.unary_unary_rpc_method_handler,
    }
    handlers = {
        name: make(
            getattr(servicer, name),
            request_deserializer=StringValue.FromString,
            response_serializer=_serialize,
        )
        for name, make in kinds.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class EchoStub:
    """What a generated ``EchoStub`` is: one multi-callable per method."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def path(name: str) -> str:
            return f"/{SERVICE}/{name}"

        options: dict[str, Any] = {
            "request_serializer": _serialize,
            "response_deserializer": StringValue.FromString,
        }
        self.Hello: Any = channel.unary_unary(path("Hello"), **options)
        self.Count: Any = channel.unary_stream(path("Count"), **options)
        self.Join: Any = channel.stream_unary(path("Join"), **options)
        self.Chat: Any = channel.stream_stream(path("Chat"), **options)
        self.Fail: Any = channel.unary_unary(path("Fail"), **options)
        self.Hang: Any = channel.unary_unary(path("Hang"), **options)
        self.Cancelled: Any = channel.unary_unary(path("Cancelled"), **options)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    add_echo_servicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
