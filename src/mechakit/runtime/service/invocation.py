"""Service invocation: a call for app id X goes from this sidecar to X's sidecar over the
internal gRPC port, which calls its app and hands back status, headers and body unchanged.

The resolver (a ``nameresolution`` component) is the Configuration's
``spec.nameResolution`` (``component``, ``version``, ``configuration``), as daprd reads it;
without one it is ``nameresolution.sqlite``, so sidecars of one host find each other with
nothing configured. Between sidecars one generic gRPC method carries a frame: a 4-byte
length, a JSON header (method, verb, query, headers, caller with its namespace and trust
domain) and the body as is. The callee's ``spec.accessControl`` is checked before its app is
called (:mod:`.access_control`).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
from mechakit.runtime.app_transport import grpc_channel, http_client
from mechakit.runtime.resiliency import Resiliency

from .access_control import (
    AccessControl,
    caller_of,
    denied_error,
    normalize_method,
    own_trust_domain,
)
from .errors import DaprError, ErrorKind

INTERNAL_METHOD = "/mechakit.internal.v1.ServiceInvocation/CallLocal"
DEFAULT_RESOLVER = "nameresolution.sqlite"
CONNECT_ATTEMPTS = 3
"""Instances of an app id tried when their sidecars do not answer."""
CALL_TIMEOUT = 60.0
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"}
)
_NOT_FORWARDED = _HOP_BY_HOP | {"dapr-app-id", "dapr-api-token"}
_METADATA_KEY = re.compile(r"[a-z0-9._-]+(?<!-bin)")
"""Header names gRPC metadata carries as text."""


@dataclass(frozen=True)
class Invocation:
    """One call of an app's method, as the caller's app sent it."""

    method: str
    verb: str = "POST"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    caller: str = ""


@dataclass(frozen=True)
class Reply:
    """The callee app's answer, passed back unchanged."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), "")


def _frame(header: Mapping[str, Any], body: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + body


def _unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack(">I", data[:4])
    header: dict[str, Any] = json.loads(data[4 : 4 + size])
    return header, data[4 + size :]


def split_target(target: str) -> tuple[str, str]:
    """``svc-b.ns`` → (``svc-b``, ``ns``); a plain id is in the default namespace."""
    app_id, dot, namespace = target.partition(".")
    return app_id, namespace if dot and namespace else DEFAULT_NAMESPACE


def direct_invoke_error(target: str, reason: str) -> DaprError:
    return DaprError(
        ErrorKind.INTERNAL, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: {reason}"
    )


class HttpApp:
    """The callee's own app over HTTP: the method is the path, verb and query as sent, and
    ``dapr-caller-app-id`` (and ``dapr-api-token`` from ``APP_API_TOKEN``) added."""

    def __init__(self, port: int, host: str = "127.0.0.1", protocol: str = "http") -> None:
        self._client = http_client(protocol, host, port, timeout=CALL_TIMEOUT)

    async def call(self, invocation: Invocation, app_id: str) -> Reply:
        headers = [(k, v) for k, v in invocation.headers if k.lower() not in _NOT_FORWARDED]
        headers += [("dapr-caller-app-id", invocation.caller), ("dapr-callee-app-id", app_id)]
        headers = tracing.with_trace(headers, tracing.trace_headers)
        token = os.environ.get("APP_API_TOKEN")
        if token:
            headers.append(("dapr-api-token", token))
        path = "/" + invocation.method.lstrip("/")
        url = f"{path}?{invocation.query}" if invocation.query else path
        response = await self._client.request(
            invocation.verb, url, headers=headers, content=invocation.body
        )
        kept = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP)
        return Reply(response.status_code, kept, response.content)

    async def close(self) -> None:
        await self._client.aclose()


class GrpcApp:
    """The callee's own app over gRPC: ``AppCallback.OnInvoke`` with the verb and query as
    its HTTP extension and the headers as call metadata; its answer is a 200, an RPC error
    the HTTP status of its code."""

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
            data=any_pb2.Any(value=invocation.body),
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
            return Reply(status, (("content-type", "text/plain"),), body)
        kept = (("content-type", answer.content_type),) if answer.content_type else ()
        return Reply(200, kept, answer.data.value)

    async def close(self) -> None:
        await self._link.close()


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
        repeats and the breaker counts; once retries run out, the app's answer passes on."""
        policy = None if self.resiliency is None else self.resiliency.app(target, invocation.method)
        if policy is None:
            return await self._call(target, invocation)
        retry = policy.retry

        async def attempt() -> Reply:
            try:
                reply = await self._call(target, invocation)
            except DaprError as exc:
                if exc.kind is ErrorKind.DENIED:
                    raise
                raise _FailedTry(exc) from exc
            if not 200 <= reply.status < 400:
                retried = retry is None or retry.retries_status(reply.status)
                raise _FailedTry(reply, permanent=not retried)
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
        """Calls ``target``'s sidecar; one that refuses the connection (killed, still
        registered until its row expires) is skipped for another instance, up to
        ``CONNECT_ATTEMPTS`` of them."""
        app_id, namespace = split_target(target)
        header = {
            "app_id": app_id,
            "method": invocation.method,
            "verb": invocation.verb,
            "query": invocation.query,
            "headers": invocation.headers,
            "caller": self.app_id,
            "caller_namespace": self.namespace,
            "caller_trust_domain": own_trust_domain(self.access_control),
        }
        unanswered: set[str] = set()
        while True:
            try:
                request = ResolveRequest(
                    app_id, namespace, self.internal_port, exclude=frozenset(unanswered)
                )
                address = await self.resolver.resolve(request)
            except NotFoundError as exc:
                raise direct_invoke_error(target, str(exc)) from exc
            except MechakitError as exc:
                raise direct_invoke_error(target, f"name resolution failed: {exc}") from exc
            channel = self.channel(address)
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                INTERNAL_METHOD
            )
            try:
                data = await call(
                    _frame(header, invocation.body),
                    timeout=CALL_TIMEOUT,
                    metadata=tracing.trace_metadata(),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                    raise denied_error(target, exc.details() or "") from exc
                unanswered.add(address)
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE
                if retry and len(unanswered) < CONNECT_ATTEMPTS:
                    continue
                reason = (
                    f"the sidecar at {address} did not answer: {exc.details() or exc.code().name}"
                )
                raise direct_invoke_error(target, reason) from exc
            answer, body = _unframe(data)
            return Reply(int(answer["status"]), tuple(map(tuple, answer["headers"])), body)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to the sidecar at ``address``: one per address, kept until closed."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    async def serve_call(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The internal method: the caller sidecar's frame in, the app's answer out."""
        header, body = _unframe(data)
        try:
            header["method"] = normalize_method(header["method"])
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid method: {exc}")
        if self.access_control is not None:
            verb = "" if isinstance(self.app, GrpcApp) else header["verb"]
            refusal = self.access_control.refusal(caller_of(header), verb, header["method"])
            if refusal is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        if self.app is None:
            return _error_frame(f"app id {self.app_id!r} has no app port to call")
        invocation = Invocation(
            method=header["method"],
            verb=header["verb"],
            query=header["query"],
            headers=tuple(map(tuple, header["headers"])),
            body=body,
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
            return _error_frame(f"cannot reach the app of {self.app_id!r}: {exc}")
        return _frame({"status": reply.status, "headers": reply.headers}, reply.body)

    def handler(self) -> grpc.GenericRpcHandler:
        method: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self.serve_call
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


class _FailedTry(Exception):
    """One failed try of an invocation under a resiliency policy: the callee's sidecar not
    reached (a :class:`DaprError`) or its app's error status (a :class:`Reply`, not retried
    when ``permanent``); retriable, so the circuit breaker counts both."""

    retriable = True

    def __init__(self, outcome: DaprError | Reply, *, permanent: bool = False) -> None:
        self.outcome, self.permanent = outcome, permanent
        failure = f"HTTP {outcome.status}" if isinstance(outcome, Reply) else str(outcome)
        super().__init__(failure)


def _error_frame(message: str) -> bytes:
    body = json.dumps({"errorCode": "ERR_DIRECT_INVOKE", "message": message}).encode()
    return _frame({"status": 500, "headers": [("content-type", "application/json")]}, body)


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
    "DEFAULT_RESOLVER",
    "GrpcApp",
    "HttpApp",
    "Invocation",
    "Invoker",
    "Reply",
    "direct_invoke_error",
    "grpc_code_of_http",
    "grpc_invocation",
    "open_resolver",
    "split_target",
]


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


def grpc_code_of_http(status: int) -> grpc.StatusCode:
    """The gRPC status a non-2xx HTTP answer of the app becomes on ``InvokeService``."""
    return _GRPC_OF_HTTP.get(status, grpc.StatusCode.UNKNOWN)


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
