"""How the runtime reaches the app: HTTP or gRPC, its port, and what its answers mean.

An :class:`AppChannel` delivers pub/sub events, input-binding events and configuration
updates, and reads the app's subscriptions and input bindings; the app's answer to an event
is an :class:`AppAnswer` (SUCCESS, RETRY or DROP, as Dapr reads HTTP statuses and gRPC
replies).

Message metadata goes along as daprd passes it: what the publisher attached and the broker
adds (:data:`MESSAGE_METADATA` while an event is sent; a binding event's own metadata) is
the delivery's HTTP headers (:func:`http_headers`) or a gRPC app's call metadata
(:func:`grpc_metadata`), keys lower-cased; a key or value the protocol cannot carry is left
out, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import logging
import re
import types
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from mechakit.core import cloudevents
from mechakit.core.bindings import BindingEvent
from mechakit.core.errors import ComponentError, ConnectionFailedError

from . import tracing
from .app_transport import APP_PROTOCOLS, grpc_channel, http_client, is_grpc
from .bulk_subscribe import BulkEntry, BulkOutcome, http_envelope, http_outcome
from .routing import AppSubscription, BulkConfig, RouteRule, RouteSyntaxError

log = logging.getLogger("mechakit.delivery")

DEFAULT_CALL_TIMEOUT = 60.0
"""How long one delivery may take before it counts as failed (and is retried)."""
_WAIT_LOG_EVERY = 5.0


class AppStatus(enum.Enum):
    """The app's answer to one pub/sub event."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True)
class AppAnswer:
    status: AppStatus
    detail: str
    """How the app answered, for logs: ``HTTP 500``, ``connection refused`` ..."""


class AppRetryError(ConnectionFailedError):
    """The app asked for a redelivery (RETRY), or could not be reached or failed."""


MESSAGE_METADATA: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "mechakit message metadata", default=types.MappingProxyType({})
)
"""The metadata of the pub/sub message whose event is being sent, set by the delivery
around :meth:`AppChannel.send_event` (as daprd carries it in the call's context), so a
channel wrapping another passes it on without knowing of it."""


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_NOT_HEADERS = frozenset(
    {
        "content-type",  # the delivery's own
        "content-length",
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "dapr-app-id",  # daprd's routing header, never passed to an app
    }
)
_GRPC_KEY = re.compile(r"[0-9a-z_.-]+")
_GRPC_VALUE = re.compile(r"[\x20-\x7e]*")
_GRPC_RESERVED = frozenset({"content-type", "user-agent", "te", "dapr-app-id"})


def http_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """Message metadata as the delivery's HTTP headers, as daprd writes them: the key
    lower-cased is the header name; ``grpc-…`` keys get the prefix ``dapr-``; the
    delivery's own and connection headers, ``…-bin`` keys and anything that is not a
    valid header name or value are left out."""
    headers: dict[str, str] = {}
    for key, value in metadata.items():
        name = key.lower()
        if name.startswith("grpc-"):
            name = f"dapr-{name}"
        if (
            name in _NOT_HEADERS
            or name.endswith("-bin")
            or not _HEADER_NAME.fullmatch(name)
            or not isinstance(value, str)
            or not _HEADER_VALUE.fullmatch(value)
        ):
            log.debug("metadata %r is not sent as an HTTP header", key)
            continue
        headers[name] = value.strip(" \t")
    return headers


def grpc_metadata(metadata: Mapping[str, str]) -> tuple[tuple[str, str | bytes], ...]:
    """Message metadata as a gRPC call's metadata, as daprd attaches it: keys lower-cased;
    keys gRPC reserves (``grpc-…``, ``content-type``, ``user-agent``, ``te``) and keys or
    values it cannot carry are left out; a ``…-bin`` key's value goes as its UTF-8 bytes."""
    pairs: list[tuple[str, str | bytes]] = []
    for key, value in metadata.items():
        name = key.lower()
        if (
            name in _GRPC_RESERVED
            or name.startswith("grpc-")
            or not _GRPC_KEY.fullmatch(name)
            or not isinstance(value, str)
        ):
            log.debug("metadata %r is not sent as gRPC call metadata", key)
            continue
        if name.endswith("-bin"):
            pairs.append((name, value.encode()))
        elif _GRPC_VALUE.fullmatch(value):
            pairs.append((name, value.strip(" ")))
        else:
            log.debug("metadata %r is not sent as gRPC call metadata", key)
    return tuple(pairs)


class AppChannel(ABC):
    """How the runtime reaches the app: its port and protocol."""

    protocol: ClassVar[str]

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_ready(self, limit: float) -> None:
        """Return once the app accepts connections; ``TimeoutError`` after ``limit`` seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_log = started + _WAIT_LOG_EVERY
        while True:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                now = loop.time()
                if now - started >= limit:
                    raise TimeoutError(
                        f"the app did not listen on {self.address} within {limit:g}s"
                    ) from None
                if now >= next_log:
                    log.info(
                        "waiting for the app to listen on %s (%s), %.0fs so far",
                        self.address,
                        self.protocol,
                        now - started,
                    )
                    next_log = now + _WAIT_LOG_EVERY
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info(
                "app is listening on %s (%s) after %.1fs",
                self.address,
                self.protocol,
                loop.time() - started,
            )
            return

    @abstractmethod
    async def subscriptions(self) -> list[AppSubscription]:
        """The subscriptions the app asks for (none when it does not say)."""

    @abstractmethod
    async def listens_to_binding(self, name: str, route: str) -> bool:
        """Whether the app takes the events of input binding ``name``."""

    @abstractmethod
    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        """Deliver one CloudEvent; failures to reach the app are a RETRY answer."""

    @abstractmethod
    async def send_bulk(
        self, entries: Sequence[BulkEntry], path: str, subscription: AppSubscription
    ) -> BulkOutcome:
        """Deliver a batch of a bulk subscription's events (see
        :mod:`mechakit.runtime.bulk_subscribe`); failures to reach the app retry it all."""

    @abstractmethod
    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        """Deliver one input-binding event; raises when the app did not take it."""

    @abstractmethod
    async def send_configuration(self, method: str, body: bytes) -> None:
        """Call the app's ``method`` (``/configuration/<store>/<key>``) with a JSON ``body``;
        raises when the app did not take it."""

    async def close(self) -> None:
        return None


class HttpAppChannel(AppChannel):
    """The app over HTTP: ``GET /dapr/subscribe``, ``POST <route>``, ``POST /<binding>``."""

    protocol = "http"

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_CALL_TIMEOUT,
        app_protocol: str = "http",
    ) -> None:
        super().__init__(port, host=host, timeout=timeout)
        self._client = http_client(
            app_protocol,
            host,
            port,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"user-agent": "mechakit"},
        )

    async def subscriptions(self) -> list[AppSubscription]:
        try:
            response = await self._client.get("/dapr/subscribe")
        except httpx.HTTPError as exc:
            log.warning(
                "GET /dapr/subscribe on the app failed: %s; no programmatic subscriptions", exc
            )
            return []
        if response.status_code == 404:
            log.info("the app has no GET /dapr/subscribe (404): no programmatic subscriptions")
            return []
        if not response.is_success:
            log.warning(
                "GET /dapr/subscribe on the app answered HTTP %d; no programmatic subscriptions",
                response.status_code,
            )
            return []
        try:
            entries = response.json() if response.content.strip() else []
        except ValueError:
            log.warning("GET /dapr/subscribe on the app did not answer JSON; ignored")
            return []
        if not isinstance(entries, list):
            log.warning(
                "GET /dapr/subscribe on the app answered %s, not a list; ignored",
                type(entries).__name__,
            )
            return []
        found: list[AppSubscription] = []
        for position, entry in enumerate(entries):
            try:
                found.append(AppSubscription.from_json(entry))
            except ValueError as exc:
                log.error("GET /dapr/subscribe entry %d ignored: %s", position, exc)
        return found

    async def listens_to_binding(self, name: str, route: str) -> bool:
        try:
            response = await self._client.options(route)
        except httpx.HTTPError as exc:
            log.warning(
                "OPTIONS %s on the app failed (%s); delivering binding %r anyway", route, exc, name
            )
            return True
        return response.status_code != 404

    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        where = f"POST {path}"
        headers = http_headers(MESSAGE_METADATA.get())
        headers["content-type"] = cloudevents.CONTENT_TYPE
        headers.update(tracing.trace_headers())
        try:
            response = await self._client.post(
                path,
                content=json.dumps(event, separators=(",", ":")).encode(),
                headers=headers,
            )
        except httpx.TimeoutException:
            return AppAnswer(AppStatus.RETRY, f"{where}: no answer within {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return AppAnswer(AppStatus.RETRY, f"{where}: {type(exc).__name__}: {exc}")
        return http_answer(response.status_code, response.content, where)

    async def send_bulk(
        self, entries: Sequence[BulkEntry], path: str, subscription: AppSubscription
    ) -> BulkOutcome:
        where = f"POST {path}"
        headers = http_headers({"pubsubName": subscription.pubsub_name})
        headers["content-type"] = "application/json"
        try:
            response = await self._client.post(
                path, content=http_envelope(entries, subscription), headers=headers
            )
        except httpx.TimeoutException:
            return BulkOutcome(f"{where}: no answer within {self.timeout:g}s", whole="RETRY")
        except httpx.HTTPError as exc:
            return BulkOutcome(f"{where}: {type(exc).__name__}: {exc}", whole="RETRY")
        return http_outcome(response.status_code, response.content, where)

    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        headers = http_headers(event.metadata)
        headers["content-type"] = "application/json"
        try:
            response = await self._client.post(route, content=event.data, headers=headers)
        except httpx.HTTPError as exc:
            raise AppRetryError(
                f"POST {route} on the app failed: {type(exc).__name__}: {exc}",
                component=f"binding {name!r}",
            ) from None
        if not response.is_success:
            raise ComponentError(
                f"POST {route} on the app answered HTTP {response.status_code}",
                component=f"binding {name!r}",
            )

    async def send_configuration(self, method: str, body: bytes) -> None:
        try:
            response = await self._client.post(
                method, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ConnectionFailedError(
                f"POST {method} on the app failed: {type(exc).__name__}: {exc}"
            ) from None
        if not response.is_success:
            raise ComponentError(f"POST {method} on the app answered HTTP {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


def http_answer(status_code: int, body: bytes, where: str = "") -> AppAnswer:
    """Dapr's reading of an HTTP answer to an event.

    2xx: the body's ``status`` (case-insensitive; empty, missing or not JSON is SUCCESS,
    an unknown word RETRY); 404: DROP; anything else: RETRY.
    """
    prefix = f"{where}: " if where else ""
    if status_code == 404:
        return AppAnswer(AppStatus.DROP, f"{prefix}HTTP 404")
    if not 200 <= status_code < 300:
        return AppAnswer(AppStatus.RETRY, f"{prefix}HTTP {status_code}")
    try:
        answer = json.loads(body) if body.strip() else {}
    except ValueError:
        answer = {}
    status = answer.get("status") if isinstance(answer, dict) else None
    word = status.strip().upper() if isinstance(status, str) else ""
    if not word:
        return AppAnswer(AppStatus.SUCCESS, f"{prefix}HTTP {status_code}")
    try:
        return AppAnswer(AppStatus(word), f"{prefix}HTTP {status_code} {word}")
    except ValueError:
        return AppAnswer(
            AppStatus.RETRY, f"{prefix}HTTP {status_code} with unknown status {status!r}"
        )


class GrpcAppChannel(AppChannel):
    """The app over gRPC: Dapr's ``AppCallback`` service (the protos of the ``dapr`` package)."""

    protocol = "grpc"

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_CALL_TIMEOUT,
        app_protocol: str = "grpc",
    ) -> None:
        super().__init__(port, host=host, timeout=timeout)
        import grpc
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        self._grpc = grpc
        self._link = grpc_channel(app_protocol, host, port)
        self._channel = self._link.channel
        stub = appcallback_pb2_grpc.AppCallbackStub
        self._stub = stub(self._channel)  # type: ignore[no-untyped-call]
        alpha = appcallback_pb2_grpc.AppCallbackAlphaStub
        self._alpha = alpha(self._channel)  # type: ignore[no-untyped-call]
        self._bindings: set[str] | None = None

    async def wait_ready(self, limit: float) -> None:
        await super().wait_ready(limit)
        await asyncio.wait_for(self._channel.channel_ready(), limit)

    async def subscriptions(self) -> list[AppSubscription]:
        from google.protobuf import empty_pb2  # type: ignore[import-untyped,unused-ignore]

        try:
            answer = await self._stub.ListTopicSubscriptions(
                empty_pb2.Empty(), timeout=self.timeout
            )
        except self._grpc.aio.AioRpcError as exc:
            if exc.code() == self._grpc.StatusCode.UNIMPLEMENTED:
                log.info("the app does not implement ListTopicSubscriptions: no subscriptions")
            else:
                log.warning("ListTopicSubscriptions on the app failed: %s", exc.details())
            return []
        found: list[AppSubscription] = []
        for entry in answer.subscriptions:
            try:
                rules = tuple(
                    RouteRule.parse(r.match, r.path) for r in entry.routes.rules if r.match
                )
            except RouteSyntaxError as exc:
                log.error("the app's subscription to topic %r is ignored: %s", entry.topic, exc)
                continue
            bulk = entry.bulk_subscribe
            found.append(
                AppSubscription(
                    pubsub_name=entry.pubsub_name,
                    topic=entry.topic,
                    rules=rules,
                    default_route=entry.routes.default or (None if rules else ""),
                    dead_letter_topic=entry.dead_letter_topic or None,
                    metadata=dict(entry.metadata),
                    bulk=BulkConfig.of(
                        bulk.enabled, bulk.max_messages_count, bulk.max_await_duration_ms
                    ),
                )
            )
        return found

    async def listens_to_binding(self, name: str, route: str) -> bool:
        if self._bindings is None:
            from google.protobuf import empty_pb2  # type: ignore[import-untyped,unused-ignore]

            try:
                answer = await self._stub.ListInputBindings(empty_pb2.Empty(), timeout=self.timeout)
                self._bindings = set(answer.bindings)
            except self._grpc.aio.AioRpcError as exc:
                if exc.code() != self._grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("ListInputBindings on the app failed: %s", exc.details())
                self._bindings = set()
        return name in self._bindings

    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        from dapr.proto.runtime.v1 import appcallback_pb2

        from .grpc_codec import topic_event_request

        request = topic_event_request(event, path, subscription)
        where = f"OnTopicEvent {path or '(default)'}"
        try:
            answer = await self._stub.OnTopicEvent(
                request,
                timeout=self.timeout,
                metadata=tracing.with_trace(
                    grpc_metadata(MESSAGE_METADATA.get()), tracing.trace_metadata
                ),
            )
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{where}: {exc.code().name} {exc.details() or ''}".rstrip()
            if exc.code() == self._grpc.StatusCode.UNIMPLEMENTED:
                return AppAnswer(AppStatus.DROP, detail)
            return AppAnswer(AppStatus.RETRY, detail)
        statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
        if answer.status == statuses.SUCCESS:
            return AppAnswer(AppStatus.SUCCESS, f"{where}: SUCCESS")
        if answer.status == statuses.DROP:
            return AppAnswer(AppStatus.DROP, f"{where}: DROP")
        return AppAnswer(AppStatus.RETRY, f"{where}: {statuses.Name(answer.status)}")

    async def send_bulk(
        self, entries: Sequence[BulkEntry], path: str, subscription: AppSubscription
    ) -> BulkOutcome:
        from .grpc_codec import bulk_statuses, topic_event_bulk_request

        request = topic_event_bulk_request(entries, path, subscription)
        metadata = grpc_metadata({"pubsubName": subscription.pubsub_name})
        where = f"OnBulkTopicEvent {path or '(default)'}"
        calls = [self._stub.OnBulkTopicEvent, self._alpha.OnBulkTopicEventAlpha1]
        for call in calls:
            try:
                answer = await call(request, timeout=self.timeout, metadata=metadata)
            except self._grpc.aio.AioRpcError as exc:
                detail = f"{where}: {exc.code().name} {exc.details() or ''}".rstrip()
                if exc.code() != self._grpc.StatusCode.UNIMPLEMENTED:
                    return BulkOutcome(detail, whole="RETRY")
                if call is calls[-1]:
                    return BulkOutcome(detail, whole="DROP")
                continue
            return BulkOutcome(f"{where}: answered", statuses=bulk_statuses(answer))
        raise AssertionError("unreachable")

    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        from dapr.proto.runtime.v1 import appcallback_pb2

        request = appcallback_pb2.BindingEventRequest(
            name=name, data=event.data, metadata=dict(event.metadata)
        )
        try:
            await self._stub.OnBindingEvent(
                request, timeout=self.timeout, metadata=grpc_metadata(event.metadata)
            )
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
            raise ComponentError(
                f"OnBindingEvent on the app failed: {detail}",
                component=f"binding {name!r}",
            ) from None

    async def send_configuration(self, method: str, body: bytes) -> None:
        from dapr.proto.common.v1 import common_pb2
        from google.protobuf import any_pb2  # type: ignore[import-untyped,unused-ignore]

        request = common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=body),
            content_type="application/json",
            http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.Verb.POST),
        )
        try:
            await self._stub.OnInvoke(request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
            raise ComponentError(f"OnInvoke {method} on the app failed: {detail}") from None

    async def close(self) -> None:
        await self._link.close()


def app_channel(port: int, protocol: str, *, host: str = "127.0.0.1") -> AppChannel:
    """The channel for ``--app-protocol``: ``http``, ``https``, ``h2c``, ``grpc`` or ``grpcs``."""
    if protocol not in APP_PROTOCOLS:
        raise ValueError(f"app protocol {protocol!r} is not supported ({', '.join(APP_PROTOCOLS)})")
    if is_grpc(protocol):
        return GrpcAppChannel(port, host=host, app_protocol=protocol)
    return HttpAppChannel(port, host=host, app_protocol=protocol)


__all__ = [
    "MESSAGE_METADATA",
    "AppAnswer",
    "AppChannel",
    "AppRetryError",
    "AppStatus",
    "GrpcAppChannel",
    "HttpAppChannel",
    "app_channel",
    "grpc_metadata",
    "http_answer",
    "http_headers",
]
