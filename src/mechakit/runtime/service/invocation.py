"""Service invocation: a call for app id X goes from this sidecar to X's sidecar over the
internal gRPC port, which calls its app and hands back status, headers and body unchanged,
streamed both ways (:mod:`.invocation_messages`).

The resolver (a ``nameresolution`` component) is the Configuration's
``spec.nameResolution`` (``component``, ``version``, ``configuration``), as daprd reads it;
without one it is ``nameresolution.sqlite``, so sidecars of one host find each other with
nothing configured. The callee's ``spec.accessControl`` is checked before its app is called
(:mod:`.access_control`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import grpc
import grpc.aio
import httpx

from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import MechakitError, NotFoundError, OperationTimeoutError
from mechakit.core.nameresolution import (
    DEFAULT_NAMESPACE,
    NameRegistry,
    NameResolver,
    Registration,
    ResolveRequest,
)
from mechakit.core.registry import Registry
from mechakit.runtime import tracing
from mechakit.runtime.resiliency import Resiliency

from .access_control import (
    AccessControl,
    caller_of,
    denied_error,
    normalize_method,
    own_trust_domain,
)
from .errors import DaprError, ErrorKind
from .invocation_apps import (
    CALL_TIMEOUT,
    GrpcApp,
    HttpApp,
    grpc_code_of,
    grpc_invocation,
)
from .invocation_messages import (
    END_WAIT,
    Body,
    Invocation,
    Reply,
    close_body,
    error_frame,
    frame,
    pieces,
    read_body,
    unframe,
)

INTERNAL_METHOD = "/mechakit.internal.v1.ServiceInvocation/CallLocal"
DEFAULT_RESOLVER = "nameresolution.sqlite"
CONNECT_ATTEMPTS = 3
"""Instances of an app id tried when their sidecars do not answer."""
REFUSAL_WAIT = 1.0
"""How long a refusal waits at most for a streaming caller to stop sending."""


def split_target(target: str, own_namespace: str = DEFAULT_NAMESPACE) -> tuple[str, str]:
    """``svc-b.ns`` → (``svc-b``, ``ns``); a plain id is in the caller's own namespace
    (its ``NAMESPACE``), as daprd has it."""
    app_id, dot, namespace = target.partition(".")
    return app_id, namespace if dot and namespace else own_namespace


def direct_invoke_error(target: str, reason: str) -> DaprError:
    return DaprError(
        ErrorKind.INTERNAL, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: {reason}"
    )


async def refuse(
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext[bytes, bytes],
    code: grpc.StatusCode,
    details: str,
) -> NoReturn:
    """End the call with ``code`` once the caller has stopped sending: its end of requests,
    or no request for ``END_WAIT`` (a caller waiting for an answer), at most
    ``REFUSAL_WAIT``. A status that overtakes a request still being written reaches a
    grpc-python caller as INTERNAL "Internal error from Core" instead of ``code``."""

    async def drain() -> None:
        iterator = aiter(requests)
        with contextlib.suppress(StopAsyncIteration, TimeoutError):
            while True:
                await asyncio.wait_for(anext(iterator), END_WAIT)

    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(), REFUSAL_WAIT)
    await context.abort(code, details)


async def connects(channel: grpc.aio.Channel) -> bool:
    """Whether ``channel`` gets connected (READY) rather than failing to."""
    state = channel.get_state(try_to_connect=True)
    while state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return state is grpc.ChannelConnectivity.READY


@dataclass
class Invoker:
    """This sidecar's side of invocation: calls out through the resolver, and serves the
    internal method that calls ``app`` (None: no app port, every call answers 500)."""

    resolver: NameResolver[Any]
    app_id: str
    namespace: str = DEFAULT_NAMESPACE
    app: HttpApp | GrpcApp | None = None
    access_control: AccessControl | None = None
    """This app's ``spec.accessControl``: checked on calls in; its trust domain is sent out."""
    internal_port: int = 0
    """This sidecar's internal gRPC port: the port computing resolvers fill in (daprd's)."""
    resiliency: Resiliency | None = None
    """``spec.targets.apps`` of the Resiliency resources in scope, for calls out."""
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    async def invoke(self, target: str, invocation: Invocation) -> Reply:
        """Calls ``target``'s app under its resiliency policy, as daprd does: each try has
        the timeout, which cancels the internal call (and so the callee's call of its app);
        not reaching the callee and an app status outside 200-399 are failures the retry
        repeats and the breaker counts; once retries run out, the app's answer passes on. A
        try ends when the answer's head is back; a streamed body under a retry policy is
        read whole first, so that each try can send it again (daprd's replay)."""
        policy = None if self.resiliency is None else self.resiliency.app(target, invocation.method)
        if policy is None:
            return await self._call(target, invocation)
        retry = policy.retry
        if retry is not None and not isinstance(invocation.body, bytes):
            invocation = replace(invocation, body=await read_body(invocation.body))

        async def attempt() -> Reply:
            try:
                reply = await self._call(target, invocation)
            except DaprError as exc:
                if exc.kind is ErrorKind.DENIED:
                    raise
                raise _FailedTry(exc) from exc
            if not 200 <= reply.status < 400:
                retried = retry is None or retry.retries_status(reply.status, reply.grpc_code)
                raise _FailedTry(await reply.whole(), permanent=not retried)
            return reply

        try:
            return await policy.run(attempt)
        except _FailedTry as failed:
            if isinstance(failed.outcome, Reply):
                return failed.outcome
            raise failed.outcome from failed.outcome.__cause__
        except OperationTimeoutError as exc:  # the policy's timeout, or its open breaker
            raise direct_invoke_error(target, exc.reason) from exc

    async def _call(self, target: str, invocation: Invocation) -> Reply:
        """Calls ``target``'s sidecar (see :meth:`connected`); a whole body is sent again
        to another instance when the one reached fails as UNAVAILABLE, a streamed one
        cannot be."""
        app_id, namespace = split_target(target, self.namespace)
        header = {
            "app_id": app_id,
            "method": invocation.method,
            "verb": invocation.verb,
            "query": invocation.query,
            "headers": invocation.headers,
            "caller": self.app_id,
            "caller_namespace": self.namespace,
            "caller_trust_domain": own_trust_domain(self.access_control),
            "streamed": not isinstance(invocation.body, bytes),
        }
        tried: set[str] = set()
        while True:
            try:
                address, channel = await self.connected(app_id, namespace, tried)
            except NotFoundError as exc:
                raise direct_invoke_error(target, str(exc)) from exc
            except MechakitError as exc:
                raise direct_invoke_error(target, f"name resolution failed: {exc}") from exc
            try:
                return await _call_on(channel, header, invocation.body)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                    raise denied_error(target, exc.details() or "") from exc
                again = exc.code() is grpc.StatusCode.UNAVAILABLE
                if again and isinstance(invocation.body, bytes) and len(tried) < CONNECT_ATTEMPTS:
                    continue
                reason = (
                    f"the sidecar at {address} did not answer: {exc.details() or exc.code().name}"
                )
                raise direct_invoke_error(target, reason) from exc
            except TimeoutError as exc:
                reason = f"the sidecar at {address} did not answer within {CALL_TIMEOUT:g}s"
                raise direct_invoke_error(target, reason) from exc

    async def connected(
        self, app_id: str, namespace: str, tried: set[str] | None = None
    ) -> tuple[str, grpc.aio.Channel]:
        """The address of a sidecar of ``app_id`` and its channel, connected: one that
        cannot be reached (killed, still registered until its row expires) is skipped for
        another instance, up to ``CONNECT_ATTEMPTS`` of them, after which the last one is
        given (calls fail on it as UNAVAILABLE). ``tried`` collects the addresses tried and
        is not resolved to again. Raises what the resolver raises when it finds none."""
        tried = set() if tried is None else tried
        found: tuple[str, grpc.aio.Channel] | None = None
        while True:
            request = ResolveRequest(
                app_id, namespace, self.internal_port, exclude=frozenset(tried)
            )
            try:
                address = await self.resolver.resolve(request)
            except MechakitError:
                if found is not None:
                    return found
                raise
            found = address, self.channel(address)
            tried.add(address)
            if len(tried) >= CONNECT_ATTEMPTS or await connects(found[1]):
                return found

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to the sidecar at ``address``: one per address, kept until closed."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    async def serve_call(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """The internal method: the caller sidecar's frame (and chunks) in, the app's answer
        (and chunks) out, each passed on as it comes."""
        incoming = aiter(requests)
        header, body = unframe(await anext(incoming))
        try:
            header["method"] = normalize_method(header["method"])
        except ValueError as exc:
            details = f"invalid method: {exc}"
            await refuse(incoming, context, grpc.StatusCode.INVALID_ARGUMENT, details)
        if self.access_control is not None:
            verb = "" if isinstance(self.app, GrpcApp) else header["verb"]
            refusal = self.access_control.refusal(caller_of(header), verb, header["method"])
            if refusal is not None:
                await refuse(incoming, context, grpc.StatusCode.PERMISSION_DENIED, refusal)
        if self.app is None:
            yield error_frame(f"app id {self.app_id!r} has no app port to call")
            return
        invocation = Invocation(
            method=header["method"],
            verb=header["verb"],
            query=header["query"],
            headers=tuple(map(tuple, header["headers"])),
            body=_chunks(body, incoming) if header.get("streamed") else body,
            caller=header["caller"],
        )
        try:
            reply = await tracing.within(
                f"CallLocal/{self.app_id}/{invocation.method}",
                tracing.incoming(context.invocation_metadata()),
                tracing.SpanKind.SERVER,
                self.app.call(invocation, self.app_id),
            )
        except (httpx.HTTPError, ConnectionError) as exc:
            yield error_frame(f"cannot reach the app of {self.app_id!r}: {exc}")
            return
        head: dict[str, Any] = {"status": reply.status, "headers": reply.headers}
        if reply.grpc_code is not None:
            head["grpc_code"] = reply.grpc_code
        if isinstance(reply.body, bytes):
            yield frame(head, reply.body)
            return
        try:
            yield frame({**head, "streamed": True})
            async for chunk in reply.body:
                for piece in pieces(chunk):
                    yield piece
        finally:
            await close_body(reply.body)

    def handler(self) -> grpc.GenericRpcHandler:
        behaviour: Any = self.serve_call  # an async generator under grpc.aio
        method: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            behaviour
        )
        service, _, name = INTERNAL_METHOD.strip("/").partition("/")
        return grpc.method_handlers_generic_handler(service, {name: method})

    async def register(self, port: int, host: str = "127.0.0.1") -> None:
        self.internal_port = port
        if isinstance(self.resolver, NameRegistry):
            await self.resolver.register(
                Registration(self.app_id, f"{host}:{port}", self.namespace)
            )

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        if self.app is not None:
            await self.app.close()
        await self.resolver.close()


async def _call_on(channel: grpc.aio.Channel, header: Mapping[str, Any], body: Body) -> Reply:
    """The internal method called on ``channel``: a whole body goes in one message with the
    end of the request, a streamed one chunk by chunk. No deadline covers the call (a
    stream may be long): each message is waited for ``CALL_TIMEOUT`` at most."""
    metadata = tracing.trace_metadata()
    call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]
    if isinstance(body, bytes):
        unary: Any = channel.unary_stream(INTERNAL_METHOD)
        call = unary(frame(header, body), metadata=metadata)
    else:
        streaming: Any = channel.stream_stream(INTERNAL_METHOD)
        call = streaming(_requests(header, body), metadata=metadata)
    try:
        head = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
    except asyncio.CancelledError:
        call.cancel()
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        # grpc-python cancels the call when the request body fails (cut off, too long)
        raise DaprError(
            ErrorKind.INVALID, "ERR_BODY_READ", "failed to read request body: it was cut off"
        ) from None
    except BaseException:
        call.cancel()
        raise
    if head is grpc.aio.EOF:
        head = error_frame("the callee's sidecar ended the call with no answer")
    assert isinstance(head, bytes)
    answer, first = unframe(head)
    headers = tuple(map(tuple, answer["headers"]))
    status, code = int(answer["status"]), answer.get("grpc_code")
    if not answer.get("streamed"):
        return Reply(status, headers, first, code)
    return Reply(status, headers, _answer(call, first), code)


async def _requests(header: Mapping[str, Any], body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The internal call's messages for a streamed ``body``: the header, then its chunks."""
    yield frame(header)
    async for chunk in body:
        for piece in pieces(chunk):
            yield piece


async def _answer(
    call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes],
    first: bytes,
) -> AsyncIterator[bytes]:
    """A streamed answer's chunks as they come; the call is ended when its reader stops."""
    try:
        if first:
            yield first
        while (chunk := await asyncio.wait_for(call.read(), CALL_TIMEOUT)) is not grpc.aio.EOF:
            assert isinstance(chunk, bytes)
            yield chunk
    finally:
        call.cancel()


async def _chunks(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed request's body on the callee's side: the chunk of its header's frame,
    then the chunks that follow it."""
    if first:
        yield first
    async for chunk in rest:
        yield chunk


class _FailedTry(Exception):
    """One failed try of an invocation under a resiliency policy: the callee's sidecar not
    reached (a :class:`DaprError`) or its app's error status (a :class:`Reply`, not retried
    when ``permanent``); retriable, so the circuit breaker counts both."""

    retriable = True

    def __init__(self, outcome: DaprError | Reply, *, permanent: bool = False) -> None:
        self.outcome, self.permanent = outcome, permanent
        failure = f"HTTP {outcome.status}" if isinstance(outcome, Reply) else str(outcome)
        super().__init__(failure)


async def open_resolver(
    spec: Mapping[str, Any], app_id: str, registry: Registry
) -> NameResolver[Any]:
    """The Configuration's ``spec.nameResolution`` started; sqlite when it names none."""
    chosen = spec.get("nameResolution") or {}
    type_name = str(chosen.get("component") or "sqlite")
    type_name = (
        type_name if type_name.startswith("nameresolution.") else f"nameresolution.{type_name}"
    )
    version = str(chosen.get("version") or "v1")
    settings = {str(k): str(v) for k, v in (chosen.get("configuration") or {}).items()}
    resolver = registry.create(type_name, version)
    if not isinstance(resolver, NameResolver):
        raise DaprError(
            ErrorKind.INVALID,
            "ERR_NAME_RESOLUTION",
            f"spec.nameResolution.component: {type_name} is not a name resolver",
        )
    await resolver.init(ComponentMetadata("nameresolution", type_name, settings, version, app_id))
    return resolver


__all__ = [
    "CALL_TIMEOUT",
    "CONNECT_ATTEMPTS",
    "DEFAULT_RESOLVER",
    "Body",
    "GrpcApp",
    "HttpApp",
    "Invocation",
    "Invoker",
    "Reply",
    "connects",
    "direct_invoke_error",
    "grpc_code_of",
    "grpc_invocation",
    "open_resolver",
    "read_body",
    "refuse",
    "split_target",
]
