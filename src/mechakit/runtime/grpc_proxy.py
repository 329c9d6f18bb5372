"""gRPC proxying, as daprd does it: an app's own stub pointed at its sidecar's gRPC port, with
metadata ``dapr-app-id: <id>``, reaches ``<id>``'s gRPC server through both sidecars.

Any method that is not Dapr's own API is taken, as raw bytes in both directions, so unary,
client-, server- and bidirectional streaming calls all pass. The caller's sidecar resolves the
id with the invoker's name resolver and opens the same method on the callee sidecar's internal
gRPC port, naming the callee (``dapr-callee-app-id``) and itself (``dapr-caller-app-id``, plus
its namespace and trust domain: the caller identity daprd reads from mTLS). The callee's
sidecar checks its ``spec.accessControl`` (verb-less, as for a gRPC app), then calls its app
over the channel it keeps to it. Metadata goes through; the answer's initial metadata,
messages, trailing metadata (with ``grpc-status-details-bin``), status code and message come
back unchanged; cancellation and the deadline travel with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from mechakit.core.errors import MechakitError

from .service.access_control import Caller, normalize_method, own_trust_domain
from .service.invocation import GrpcApp, Invoker, refuse, split_target
from .service.invocation_messages import END_WAIT

APP_ID = "dapr-app-id"
CALLEE_ID = "dapr-callee-app-id"
CALLER_ID = "dapr-caller-app-id"
CALLER_NAMESPACE = "mechakit-caller-namespace"
CALLER_TRUST_DOMAIN = "mechakit-caller-trust-domain"
API_TOKEN = "dapr-api-token"
MISSING_APP_ID = f"failed to proxy request: required metadata {CALLEE_ID} or {APP_ID} not found"
"""daprd's refusal (status UNKNOWN) of a call that names no app."""
NOT_STARTED = "failed to proxy request: proxy not initialized. daprd startup may be incomplete"

_NEVER_FORWARDED = frozenset(
    {APP_ID, API_TOKEN, CALLER_NAMESPACE, CALLER_TRUST_DOMAIN, "user-agent", "te", "content-type"}
)
_PASSED_RESERVED = frozenset({"grpc-trace-bin", "grpc-tags-bin", "grpc-status-details-bin"})


Metadata = Iterable[tuple[str, str | bytes]]
MethodCall = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], Any]


def _first(metadata: Metadata, *keys: str) -> str | None:
    """The first text value of the first of ``keys`` present."""
    for wanted in keys:
        for key, value in metadata:
            if key == wanted and isinstance(value, str) and value:
                return value
    return None


def _passable(metadata: Metadata | None, dropped: frozenset[str] = frozenset()) -> list[Any]:
    """``metadata`` without what gRPC sets itself (``:path``, ``grpc-timeout``, ...) or
    ``dropped``; tracing and status details are kept."""
    kept: list[Any] = []
    for key, value in metadata or ():
        reserved = key.startswith(":") or (key.startswith("grpc-") and key not in _PASSED_RESERVED)
        if not reserved and key not in dropped:
            kept.append((key, value))
    return kept


def _handler(call: MethodCall) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A bidirectional-streaming handler of raw bytes: it serves every kind of call."""
    behaviour: Any = call  # async under grpc.aio, typed as the sync API
    return grpc.stream_stream_rpc_method_handler(behaviour)


async def _relay(
    channel: grpc.aio.Channel,
    method: str,
    requests: AsyncIterator[bytes],
    metadata: list[Any],
    context: grpc.aio.ServicerContext[bytes, bytes],
) -> None:
    """Call ``method`` on ``channel`` with the incoming messages and hand its answer back as
    is; when the incoming call ends (cancelled, deadline passed) the outgoing one is
    cancelled."""
    remaining = context.time_remaining()
    outgoing = await _outgoing(requests)
    call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]
    if isinstance(outgoing, bytes):
        unary: Any = channel.unary_stream(method)
        call = unary(outgoing, metadata=metadata, timeout=remaining)
    else:
        streaming: Any = channel.stream_stream(method)
        call = streaming(outgoing, metadata=metadata, timeout=remaining)
    try:
        with contextlib.suppress(grpc.aio.AioRpcError):  # its status is read from the call
            await context.send_initial_metadata(_passable(await call.initial_metadata()))
            async for message in call:
                await context.write(message)
        code = await call.code()
        context.set_trailing_metadata(_passable(await call.trailing_metadata()))
        if code is not grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(await call.details() or "")
    finally:
        call.cancel()


async def _outgoing(requests: AsyncIterator[bytes]) -> bytes | AsyncIterator[bytes]:
    """The request when the caller sent exactly one (any unary or server-streaming call),
    else every request as a stream. A single request is sent with its end in one batch, as
    grpc-python's unary calls do: streamed, its write can lose the race with an early status
    from the callee (a refusal that does not read the request), and grpc-python then ends
    the call INTERNAL "Internal error from Core" in place of the status the callee sent."""
    iterator = aiter(requests)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        return _stream((), None, iterator)
    second: asyncio.Future[bytes] = asyncio.ensure_future(anext(iterator))
    await asyncio.wait({second}, timeout=END_WAIT)
    ended = second.done() and not second.cancelled()
    if ended and isinstance(second.exception(), StopAsyncIteration):
        return first
    return _stream((first,), second, iterator)


async def _stream(
    read: Iterable[bytes], pending: asyncio.Future[bytes] | None, rest: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The requests already ``read``, the one ``pending``, then the ``rest``."""
    for message in read:
        yield message
    if pending is not None:
        try:
            yield await pending
        except StopAsyncIteration:
            return
    async for message in rest:
        yield message


class OutboundProxy(grpc.GenericRpcHandler):
    """On the sidecar's public gRPC server, after Dapr's own services: forwards every other
    call to the sidecar of the app its ``dapr-app-id`` names."""

    def __init__(self, invoker: Callable[[], Invoker | None]) -> None:
        self._invoker = invoker

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method

        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> None:
            await self._forward(method, requests, context)

        return _handler(forward)

    async def _forward(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        incoming: Metadata = tuple(context.invocation_metadata() or ())
        target = _first(incoming, CALLEE_ID, APP_ID)
        if target is None:
            await refuse(requests, context, grpc.StatusCode.UNKNOWN, MISSING_APP_ID)
        invoker = self._invoker()
        if invoker is None:
            await refuse(requests, context, grpc.StatusCode.UNKNOWN, NOT_STARTED)
        app_id, namespace = split_target(target, invoker.namespace)
        channel = await _sidecar_of(invoker, app_id, namespace, requests, context)
        metadata = _passable(incoming, _NEVER_FORWARDED | {CALLEE_ID, CALLER_ID})
        metadata += [
            (CALLER_ID, invoker.app_id),
            (CALLEE_ID, app_id),
            (CALLER_NAMESPACE, invoker.namespace),
            (CALLER_TRUST_DOMAIN, own_trust_domain(invoker.access_control)),
        ]
        await _relay(channel, method, requests, metadata, context)


async def _sidecar_of(
    invoker: Invoker,
    app_id: str,
    namespace: str,
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext[bytes, bytes],
) -> grpc.aio.Channel:
    """A connected channel to a sidecar of ``app_id`` (:meth:`Invoker.connected`: the
    messages of a call cannot be replayed once sent, so it is connected first)."""
    try:
        return (await invoker.connected(app_id, namespace))[1]
    except MechakitError as exc:
        details = f"failed to proxy request: {exc}"
        await refuse(requests, context, grpc.StatusCode.UNKNOWN, details)


class InboundProxy(grpc.GenericRpcHandler):
    """On the internal gRPC port, after ``CallLocal``: a proxied call from another sidecar
    for this app, checked against the access control and handed to the app. A call that
    names no callee is no proxied call: it is left UNIMPLEMENTED."""

    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        if _first(handler_call_details.invocation_metadata or (), CALLEE_ID, APP_ID) is None:
            return None
        method = handler_call_details.method

        async def serve(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> None:
            await self._serve(method, requests, context)

        return _handler(serve)

    async def _serve(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        invoker = self._invoker
        incoming: Metadata = tuple(context.invocation_metadata() or ())
        target = _first(incoming, CALLEE_ID, APP_ID) or ""
        if split_target(target)[0] != invoker.app_id:
            await refuse(
                requests,
                context,
                grpc.StatusCode.UNKNOWN,
                f"failed to proxy request: app id {target!r} is not served here "
                f"(this sidecar serves {invoker.app_id!r})",
            )
        try:
            method = normalize_method(method)
        except ValueError as exc:
            details = f"invalid method: {exc}"
            await refuse(requests, context, grpc.StatusCode.INVALID_ARGUMENT, details)
        if invoker.access_control is not None:
            refusal = invoker.access_control.refusal(_caller(incoming), "", method)
            if refusal is not None:
                await refuse(requests, context, grpc.StatusCode.PERMISSION_DENIED, refusal)
        app = invoker.app
        if not isinstance(app, GrpcApp):
            await refuse(
                requests,
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"failed to proxy request: app id {invoker.app_id!r} has no gRPC app to call "
                "(--app-port with --app-protocol grpc)",
            )
        metadata = _passable(incoming, _NEVER_FORWARDED)
        token = os.environ.get("APP_API_TOKEN")
        if token:
            metadata.append((API_TOKEN, token))
        await _relay(app.channel, method, requests, metadata, context)


def _caller(metadata: Metadata) -> Caller | None:
    """The calling app as its sidecar named it; None when it names none."""
    app_id = _first(metadata, CALLER_ID)
    if app_id is None:
        return None
    namespace = _first(metadata, CALLER_NAMESPACE)
    trust_domain = _first(metadata, CALLER_TRUST_DOMAIN)
    caller = Caller(app_id)
    return Caller(app_id, namespace or caller.namespace, trust_domain or caller.trust_domain)


__all__ = ["MISSING_APP_ID", "InboundProxy", "OutboundProxy"]
