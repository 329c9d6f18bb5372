"""The callee's side of an invocation: its own app, over HTTP or gRPC."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import httpx

from mechakit.runtime import tracing
from mechakit.runtime.app_transport import grpc_channel, http_client

from .invocation_messages import (
    END_WAIT,
    WHOLE_BODY,
    Body,
    Invocation,
    Reply,
    close_body,
    read_body,
)

CALL_TIMEOUT = 60.0
"""The longest wait for an app's answer (for a streamed body: for each of its chunks)."""
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"}
)
_NOT_FORWARDED = _HOP_BY_HOP | {"dapr-app-id", "dapr-api-token"}
_METADATA_KEY = re.compile(r"[a-z0-9._-]+(?<!-bin)")
"""Header names gRPC metadata carries as text."""


class HttpApp:
    """The callee's own app over HTTP: the method is the path, verb and query as sent, and
    ``dapr-caller-app-id`` (and ``dapr-api-token`` from ``APP_API_TOKEN``) added. A streamed
    body goes to the app as it comes (with the caller's ``content-length`` when it gave
    one, else chunked); the app's answer comes back as its raw bytes, streamed unless it
    announces a short length."""

    def __init__(self, port: int, host: str = "127.0.0.1", protocol: str = "http") -> None:
        self._client = http_client(protocol, host, port, timeout=CALL_TIMEOUT)

    async def call(self, invocation: Invocation, app_id: str) -> Reply:
        streamed = not isinstance(invocation.body, bytes)
        headers = [
            (k, v)
            for k, v in invocation.headers
            if k.lower() not in _NOT_FORWARDED or (streamed and k.lower() == "content-length")
        ]
        headers += [("dapr-caller-app-id", invocation.caller), ("dapr-callee-app-id", app_id)]
        headers = tracing.with_trace(headers, tracing.trace_headers)
        token = os.environ.get("APP_API_TOKEN")
        if token:
            headers.append(("dapr-api-token", token))
        path = "/" + invocation.method.lstrip("/")
        url = f"{path}?{invocation.query}" if invocation.query else path
        request = self._client.build_request(
            invocation.verb, url, headers=headers, content=invocation.body
        )
        response = await self._client.send(request, stream=True)
        kept = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP)
        length = response.headers.get("content-length", "")
        if invocation.verb.upper() == "HEAD" or (length.isdigit() and int(length) <= WHOLE_BODY):
            return Reply(response.status_code, kept, await read_body(_raw(response)))
        return Reply(response.status_code, kept, await _whole_if_done(_raw(response)))

    async def close(self) -> None:
        await self._client.aclose()


async def _whole_if_done(chunks: AsyncIterator[bytes]) -> Body:
    """An answer of unannounced length whole when its end comes with its first chunk (a
    short chunked answer, sent in one message between the sidecars), else streamed."""
    first = await anext(chunks, b"")
    second: asyncio.Future[bytes | None] = asyncio.ensure_future(anext(chunks, None))
    await asyncio.wait({second}, timeout=END_WAIT)
    ended = second.done() and not second.cancelled() and second.exception() is None
    if ended and second.result() is None:
        return first
    return _continued(first, second, chunks)


async def _continued(
    first: bytes, pending: asyncio.Future[bytes | None], rest: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        yield first
        chunk = await pending
        if chunk is None:
            return
        yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        await close_body(rest)


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """The bytes of ``response`` as the app sent them (not decoded), then the response
    closed, also when the reader stops early."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


class GrpcApp:
    """The callee's own app over gRPC: ``AppCallback.OnInvoke`` with the verb and query as
    its HTTP extension and the headers as call metadata; its answer is a 200, an RPC error
    the HTTP status of its code. ``OnInvoke`` is unary: a streamed body is read whole."""

    def __init__(self, port: int, host: str = "127.0.0.1", protocol: str = "grpc") -> None:
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        self._link = grpc_channel(protocol, host, port)
        self._channel = self._link.channel
        self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the app, kept for its lifetime (gRPC proxying uses it too)."""
        return self._channel

    async def call(self, invocation: Invocation, app_id: str) -> Reply:
        from dapr.proto.common.v1 import common_pb2
        from google.protobuf import any_pb2

        verbs = common_pb2.HTTPExtension.Verb
        verb = invocation.verb.upper()
        extension = common_pb2.HTTPExtension(
            verb=verbs.Value(verb) if verb in set(verbs.keys()) else verbs.NONE,
            querystring=invocation.query,
        )
        headers = dict((k.lower(), v) for k, v in invocation.headers)
        request = common_pb2.InvokeRequest(
            method=invocation.method,
            data=any_pb2.Any(value=await read_body(invocation.body)),
            content_type=headers.pop("content-type", ""),
            http_extension=extension,
        )
        metadata: list[tuple[str, str | bytes]] = [
            (k, v)
            for k, v in headers.items()
            if k not in _NOT_FORWARDED and _METADATA_KEY.fullmatch(k) and v.isascii()
        ]
        metadata += [("dapr-caller-app-id", invocation.caller), ("dapr-callee-app-id", app_id)]
        metadata = tracing.with_trace(metadata, tracing.trace_metadata)
        token = os.environ.get("APP_API_TOKEN")
        if token:
            metadata.append(("dapr-api-token", token))
        try:
            answer = await self._stub.OnInvoke(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise ConnectionError(exc.details() or "the app is unavailable") from exc
            status = _HTTP_OF_GRPC.get(exc.code(), 500)
            body = (exc.details() or exc.code().name).encode()
            code = exc.code().value[0]
            return Reply(status, (("content-type", "text/plain"),), body, grpc_code=code)
        kept = (("content-type", answer.content_type),) if answer.content_type else ()
        return Reply(200, kept, answer.data.value)

    async def close(self) -> None:
        await self._link.close()


_GRPC_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


_HTTP_OF_GRPC = {code: status for status, code in _GRPC_OF_HTTP.items()}
_GRPC_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_of(reply: Reply) -> grpc.StatusCode:
    """The gRPC status a failed answer becomes on ``InvokeService``: a gRPC app's own, an
    HTTP app's status mapped as daprd maps it."""
    if reply.grpc_code is not None:
        return _GRPC_OF_NUMBER.get(reply.grpc_code, grpc.StatusCode.UNKNOWN)
    return _GRPC_OF_HTTP.get(reply.status, grpc.StatusCode.UNKNOWN)


def grpc_invocation(message: Any, metadata: Any) -> Invocation:
    """An ``InvokeRequest`` of the public gRPC API (``common.v1``) and the call's metadata
    as an :class:`Invocation`: the HTTP verb (POST when none), query, content type, and the
    metadata as headers."""
    from dapr.proto.common.v1 import common_pb2

    extension = message.http_extension
    verb = common_pb2.HTTPExtension.Verb.Name(extension.verb) if extension.verb else "POST"
    headers = [("content-type", message.content_type)] if message.content_type else []
    headers += [
        (str(key), value)
        for key, value in metadata or ()
        if isinstance(value, str) and not key.startswith((":", "grpc-")) and key != "user-agent"
    ]
    return Invocation(
        message.method, verb, extension.querystring, tuple(headers), message.data.value
    )


__all__ = ["CALL_TIMEOUT", "GrpcApp", "HttpApp", "grpc_code_of", "grpc_invocation"]
