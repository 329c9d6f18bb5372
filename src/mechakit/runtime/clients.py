"""Typed facades over running components: what ``rt.state("statestore")`` and friends return.

Each method takes plain arguments for the common case and also the core request object
(``SetRequest``, ``GetRequest`` …) for every option; mixing both is a ``TypeError``.
Pub/sub follows Dapr: payloads travel in a CloudEvent unless ``rawPayload`` is set, and
handlers receive the payload decoded back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from mechakit.core import cloudevents
from mechakit.core.bindings import (
    InputBinding,
    InputHandler,
    InvokeRequest,
    InvokeResponse,
    OutputBinding,
)
from mechakit.core.component import Component, Subscription
from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    ConfigurationStore,
)
from mechakit.core.errors import (
    ComponentError,
    InvalidRequestError,
    NotFoundError,
    NotSupportedError,
)
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus
from mechakit.core.pubsub import (
    DropMessage,
    Message,
    PublishRequest,
    PubSub,
    PubSubFeature,
    SubscribeRequest,
)
from mechakit.core.secretstores import GetSecretRequest, SecretStore
from mechakit.core.state import (
    TTL_METADATA,
    BulkGetItem,
    Concurrency,
    DeleteRequest,
    GetRequest,
    Query,
    QueryResponse,
    SetRequest,
    StateFeature,
    StateItem,
    StateOptions,
    StateStore,
    TransactionOperation,
    parse_ttl,
)

from .service import DaprError, as_component_error
from .service.bindings import BindingsService
from .service.configuration import ConfigurationService
from .service.lock import LockService
from .service.pubsub import PubSubService
from .service.secrets import SecretsService
from .service.state import StateService

log = logging.getLogger("mechakit.runtime")

RequestT = TypeVar("RequestT")
ComponentT = TypeVar("ComponentT", bound=Component[Any])
ServiceT = TypeVar("ServiceT")
T = TypeVar("T")
_UNSET: Any = object()

RAW_PAYLOAD = "rawPayload"


class SubscriptionTracker:
    """What clients started (subscriptions, reads, watches), stopped when the runtime closes."""

    def __init__(self) -> None:
        self._running: list[Subscription] = []

    def add(self, subscription: Subscription) -> Subscription:
        self._running.append(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._running.remove(subscription)

    async def cancel_all(self) -> None:
        while self._running:
            subscription = self._running.pop()
            try:
                await subscription.cancel()
            except Exception as exc:
                log.warning("a subscription did not stop cleanly: %s", exc)


class _Client(Generic[ComponentT, ServiceT]):
    """A typed client: the component it fronts, the service block its calls go through (the
    rules of the HTTP and gRPC APIs), and the tracker of the subscriptions it starts, which
    the runtime stops when it closes."""

    def __init__(
        self, component: ComponentT, service: ServiceT, *, tracker: SubscriptionTracker
    ) -> None:
        self._component = component
        self._service = service
        self._tracker = tracker

    @property
    def component(self) -> ComponentT:
        return self._component

    @property
    def name(self) -> str:
        return self._component.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._component.label}>"


def _request(
    given: RequestT | str, cls: type[RequestT], options: Mapping[str, Any]
) -> RequestT | None:
    """``given`` when it is already a request; a TypeError when options were passed as well."""
    if not isinstance(given, cls):
        return None
    passed = sorted(
        name
        for name, value in options.items()
        if value is not None and value is not False and value is not _UNSET
    )
    if passed:
        raise TypeError(f"pass {', '.join(passed)} inside the {cls.__name__}, not next to it")
    return given


async def _served(call: Awaitable[T]) -> T:
    """``call``, with a service error raised as the component's own (or a core) error."""
    try:
        return await call
    except DaprError as exc:
        raise as_component_error(exc) from None


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidRequestError(f"key must be a non-empty string, got {key!r}", field="key")
    return key


def _with_ttl(metadata: Mapping[str, str] | None, ttl: int | timedelta | None) -> dict[str, str]:
    out = dict(metadata or {})
    if ttl is None:
        return out
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
        if seconds != int(seconds):
            raise InvalidRequestError(f"ttl must be whole seconds, got {ttl}", field="ttl")
        ttl = int(seconds)
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidRequestError(f"ttl must be whole seconds, got {ttl!r}", field="ttl")
    out[TTL_METADATA] = str(ttl)
    parse_ttl(out)
    return out


# --- state ------------------------------------------------------------------------------


class StateClient(_Client[StateStore[Any], StateService]):
    """Key/value state: ``await store.set("k", {"n": 1})``, ``item = await store.get("k")``.

    Calls go through the Dapr service layer (the rules of the HTTP and gRPC APIs); errors
    are the component's own (``ETagError``, ``BulkError`` …) or core errors of their kind.
    """

    def features(self) -> frozenset[StateFeature]:
        return self._component.features()

    async def get(
        self,
        key: str | GetRequest,
        *,
        consistency: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StateItem | None:
        """The item (value, etag, metadata) or None when the key does not exist."""
        request = _request(key, GetRequest, {"consistency": consistency, "metadata": metadata})
        if request is None:
            request = GetRequest(
                key=_check_key(key),
                metadata=dict(metadata or {}),
                consistency=StateOptions.parse(consistency=consistency).consistency,
            )
        return await _served(self._service.get(self.name, request))

    async def set(
        self,
        key: str | SetRequest,
        value: Any = _UNSET,
        *,
        etag: str | None = None,
        ttl: int | timedelta | None = None,
        first_write: bool = False,
        consistency: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write ``value`` (bytes raw, anything else as JSON); ``ETagError`` on a failed check.

        ``ttl`` is whole seconds (or -1 for no expiry); ``first_write`` fails when the key
        exists, or, with an ``etag``, when it changed.
        """
        options = {"etag": etag, "ttl": ttl, "first_write": first_write}
        request = _request(
            key,
            SetRequest,
            {**options, "consistency": consistency, "metadata": metadata, "value": value},
        )
        if request is None:
            if value is _UNSET:
                raise TypeError("set() needs a value")
            request = SetRequest(
                key=_check_key(key),
                value=value,
                etag=etag,
                metadata=_with_ttl(metadata, ttl),
                options=_options(first_write, consistency),
            )
        await _served(self._service.save(self.name, [request]))

    async def delete(
        self,
        key: str | DeleteRequest,
        *,
        etag: str | None = None,
        first_write: bool = False,
        consistency: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Delete; a missing key without an ``etag`` is not an error."""
        given = {
            "etag": etag,
            "first_write": first_write,
            "consistency": consistency,
            "metadata": metadata,
        }
        request = _request(key, DeleteRequest, given)
        if request is None:
            request = DeleteRequest(
                key=_check_key(key),
                etag=etag,
                metadata=dict(metadata or {}),
                options=_options(first_write, consistency),
            )
        await _served(self._service.delete(self.name, request))

    async def bulk_get(
        self, keys: Iterable[str | GetRequest], *, metadata: Mapping[str, str] | None = None
    ) -> list[BulkGetItem]:
        """One entry per key, in order: found, missing (``found`` False) or failed (``error``)."""
        requests = [
            k if isinstance(k, GetRequest) else GetRequest(_check_key(k), dict(metadata or {}))
            for k in keys
        ]
        return await _served(self._service.bulk_get(self.name, requests))

    async def bulk_set(
        self,
        items: Mapping[str, Any] | Iterable[SetRequest],
        *,
        ttl: int | timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write many keys; ``BulkError`` names every key that failed."""
        if isinstance(items, Mapping):
            meta = _with_ttl(metadata, ttl)
            requests = [SetRequest(_check_key(k), v, metadata=meta) for k, v in items.items()]
        else:
            requests = list(items)
        await _served(self._service.save(self.name, requests, bulk=True))

    async def bulk_delete(
        self, keys: Iterable[str | DeleteRequest], *, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Delete many keys; ``BulkError`` names every key that failed."""
        requests = [
            k
            if isinstance(k, DeleteRequest)
            else DeleteRequest(_check_key(k), metadata=dict(metadata or {}))
            for k in keys
        ]
        await _served(self._service.bulk_delete(self.name, requests))

    async def transact(
        self,
        operations: Sequence[TransactionOperation],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Apply ``SetRequest``/``DeleteRequest`` operations in order, all or none."""
        await _served(self._service.transact(self.name, list(operations), metadata))

    async def query(
        self, query: Query | Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
    ) -> QueryResponse:
        """Run a Dapr state query (``{"filter": …, "sort": […], "page": {…}}`` or a ``Query``)."""
        if isinstance(query, Query) and metadata:
            raise TypeError("pass metadata inside the Query, not next to it")
        return await _served(self._service.query(self.name, query, metadata))


def _options(first_write: bool, consistency: str | None) -> StateOptions:
    return StateOptions.parse(
        concurrency=Concurrency.FIRST_WRITE if first_write else None, consistency=consistency
    )


# --- pub/sub ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicEvent:
    """A delivered message, unwrapped from its CloudEvent.

    ``data`` is decoded by content type: JSON as Python values, text as ``str``, anything
    else as ``bytes``. ``raw`` is the payload's bytes; ``cloud_event`` the envelope (None
    for raw payloads).
    """

    topic: str
    data: Any
    raw: bytes
    content_type: str | None
    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    cloud_event: Mapping[str, Any] | None = None
    delivery_count: int = 1


EventHandler = Callable[[TopicEvent], Awaitable[None]]
"""Return to acknowledge; raise to have it redelivered; raise ``DropMessage`` to drop it."""


class PubSubClient(_Client[PubSub[Any], PubSubService]):
    """``await pubsub.publish("orders", {"id": 1})``; ``await pubsub.subscribe("orders", handler)``."""

    def features(self) -> frozenset[PubSubFeature]:
        return self._component.features()

    async def publish(
        self,
        topic: str | PublishRequest,
        data: Any = None,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Publish ``data``: ``bytes`` and ``str`` as they are, anything else as JSON.

        The payload is wrapped in a CloudEvent (source: the app id) unless metadata
        ``rawPayload`` is ``true`` or ``content_type`` says it is a CloudEvent already.
        Metadata ``ttlInSeconds`` sets the event's expiration when the broker has no
        message TTL of its own.
        """
        if isinstance(topic, PublishRequest):
            if data is not None or content_type or metadata:
                raise TypeError("pass data, content_type and metadata inside the PublishRequest")
            await self._component.publish(topic)
            return
        payload, content_type = _encode_payload(data, content_type)
        await _served(
            self._service.publish(self.name, topic, payload, content_type, dict(metadata or {}))
        )

    async def subscribe(
        self,
        topic: str,
        handler: EventHandler,
        *,
        metadata: Mapping[str, str] | None = None,
        dead_letter_topic: str | None = None,
    ) -> Subscription:
        """Deliver ``topic`` to ``handler`` until the subscription is cancelled (or the runtime closes)."""
        request = SubscribeRequest(
            topic=topic, metadata=dict(metadata or {}), dead_letter_topic=dead_letter_topic
        )

        async def deliver(message: Message) -> None:
            event = to_topic_event(message)
            if event.cloud_event is not None and cloudevents.is_expired(event.cloud_event):
                log.info(
                    "%s: event %s on topic %r expired; dropped",
                    self._component.label,
                    event.id,
                    topic,
                )
                return
            await handler(event)

        subscription = await self._component.subscribe(request, deliver)
        return self._tracker.add(subscription)


def _encode_payload(data: Any, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), content_type or "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), content_type or "text/plain"
    try:
        encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"data is not JSON serialisable: {exc}", field="data") from None
    return encoded, content_type or "application/json"


def _is_cloud_event_type(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == cloudevents.CONTENT_TYPE


def to_topic_event(message: Message) -> TopicEvent:
    """A broker message as handlers see it: the CloudEvent unwrapped, the payload decoded."""
    envelope = cloudevents.parse_event(message.data)
    if envelope is None:
        return TopicEvent(
            topic=message.topic,
            data=_decode(message.data, message.content_type),
            raw=message.data,
            content_type=message.content_type,
            id=message.id,
            metadata=message.metadata,
            delivery_count=message.delivery_count,
        )
    # CloudEvents: an event without datacontenttype carries JSON.
    content_type = envelope.get("datacontenttype") or "application/json"
    raw = cloudevents.event_data(envelope)
    if "data_base64" in envelope:
        data: Any = raw
    elif cloudevents.is_json_content(content_type) or isinstance(envelope.get("data"), str):
        data = envelope.get("data")
    else:
        data = _decode(raw, content_type)
    return TopicEvent(
        topic=message.topic,
        data=data,
        raw=raw,
        content_type=content_type,
        id=str(envelope.get("id") or message.id),
        metadata=message.metadata,
        cloud_event=envelope,
        delivery_count=message.delivery_count,
    )


def _decode(data: bytes, content_type: str | None) -> Any:
    if cloudevents.is_json_content(content_type):
        try:
            return json.loads(data)
        except ValueError:
            return data
    if (content_type or "").startswith("text/"):
        return data.decode("utf-8", errors="replace")
    return data


# --- locks ------------------------------------------------------------------------------


class LockNotAcquiredError(ComponentError):
    """``hold`` could not get the lock: someone else held it for the whole wait."""


class LockLostError(ComponentError):
    """The lock expired (or was taken) before ``hold``'s block finished: it was not exclusive."""


class LockClient(_Client[LockStore[Any], LockService]):
    """``async with locks.hold("order-1", owner="worker-a", expiry_seconds=10): ...``."""

    async def try_lock(
        self, resource_id: str | TryLockRequest, owner: str = "", expiry_seconds: int = 0
    ) -> bool:
        """True when acquired; False when anyone holds it (the same owner included)."""
        if isinstance(resource_id, TryLockRequest):
            given = resource_id
            resource_id, owner, expiry_seconds = (
                given.resource_id,
                given.owner,
                given.expiry_seconds,
            )
        return await _served(self._service.try_lock(self.name, resource_id, owner, expiry_seconds))

    async def unlock(self, resource_id: str | UnlockRequest, owner: str = "") -> UnlockStatus:
        if isinstance(resource_id, UnlockRequest):
            given_release = resource_id
            resource_id, owner = given_release.resource_id, given_release.owner
        return await _served(self._service.unlock(self.name, resource_id, owner))

    @contextlib.asynccontextmanager
    async def hold(
        self,
        resource_id: str,
        owner: str,
        expiry_seconds: int,
        *,
        wait: float = 0.0,
        retry_interval: float = 0.1,
    ) -> AsyncIterator[None]:
        """Hold the lock for the block; retry for up to ``wait`` seconds to get it.

        Raises ``LockNotAcquiredError`` when it stays taken, and ``LockLostError`` after the
        block when the lock had expired meanwhile (so the block did not run exclusively).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not await self.try_lock(resource_id, owner, expiry_seconds):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LockNotAcquiredError(
                    f"lock {resource_id!r} is held by another owner"
                    + (f" (waited {wait:g}s)" if wait else ""),
                    component=self._component.label,
                    key=resource_id,
                )
            await asyncio.sleep(min(retry_interval, remaining))
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            status = await self.unlock(resource_id, owner)
            if status is not UnlockStatus.SUCCESS:
                message = (
                    f"lock {resource_id!r} was no longer held by {owner!r} when the block "
                    f"ended ({status.name}); raise expiry_seconds"
                )
                if failed:
                    log.warning("%s: %s", self._component.label, message)
                else:
                    raise LockLostError(message, component=self._component.label, key=resource_id)


# --- secrets ----------------------------------------------------------------------------


class SecretsClient(_Client[SecretStore[Any], SecretsService]):
    """Secrets, filtered by the Configuration's secret scopes: ``await secrets.get("db")``."""

    async def get(
        self, name: str | GetSecretRequest, *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The secret's keys and values; ``SecretNotFoundError`` when it does not exist."""
        request = (
            name
            if isinstance(name, GetSecretRequest)
            else GetSecretRequest(name=name, metadata=dict(metadata or {}))
        )
        return await _served(self._service.get(self.name, request))

    async def bulk_get(
        self, *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, str]]:
        """Every secret the app may read: name → (key → value)."""
        return await _served(self._service.bulk_get(self.name, metadata))


# --- bindings ---------------------------------------------------------------------------


class BindingClient(_Client[Component[Any], BindingsService]):
    """``await binding.invoke("create", b"...", {"fileName": "a.txt"})``."""

    def operations(self) -> list[str]:
        return list(self._output().operations())

    async def invoke(
        self,
        operation: str | InvokeRequest,
        data: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> InvokeResponse:
        """Run an operation; ``data`` as bytes, ``str`` as UTF-8, anything else as JSON."""
        if isinstance(operation, InvokeRequest):
            if data is not None or metadata:
                raise TypeError("pass data and metadata inside the InvokeRequest")
            request = operation
        else:
            payload = b"" if data is None else _encode_payload(data, None)[0]
            request = InvokeRequest(
                operation=operation, data=payload, metadata=dict(metadata or {})
            )
        return await _served(self._service.invoke(self.name, request))

    async def read(self, handler: InputHandler) -> Subscription:
        """Deliver input events to ``handler`` until cancelled (or the runtime closes)."""
        if not isinstance(self._component, InputBinding):
            raise NotSupportedError("it is not an input binding", component=self._component.label)
        return self._tracker.add(await self._component.read(handler))

    def _output(self) -> OutputBinding[Any]:
        if not isinstance(self._component, OutputBinding):
            raise NotSupportedError(
                "it is an input binding only; it has no operations to invoke",
                component=self._component.label,
            )
        return self._component


# --- configuration ----------------------------------------------------------------------


class _ConfigurationWatch(Subscription):
    def __init__(self, store: ConfigurationStore[Any], subscription_id: str) -> None:
        self.store, self.subscription_id = store, subscription_id
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    async def cancel(self) -> None:
        if self._active:
            self._active = False
            with contextlib.suppress(NotFoundError):
                await self.store.unsubscribe(self.subscription_id)


class ConfigurationClient(_Client[ConfigurationStore[Any], ConfigurationService]):
    """``items = await config.get(["flag"])``; ``sub_id = await config.subscribe([], handler)``."""

    def __init__(
        self,
        store: ConfigurationStore[Any],
        service: ConfigurationService,
        *,
        tracker: SubscriptionTracker,
    ) -> None:
        super().__init__(store, service, tracker=tracker)
        self._watches: dict[str, _ConfigurationWatch] = {}

    async def get(
        self, keys: str | Sequence[str] = (), *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, ConfigurationItem]:
        """The items that exist among ``keys`` (no keys: every item)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        return await _served(self._service.get(self.name, keys, metadata))

    async def subscribe(
        self,
        keys: str | Sequence[str],
        handler: ConfigurationHandler,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Watch ``keys`` (empty: every key); returns the id ``unsubscribe`` takes."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        subscription_id = await _served(self._service.subscribe(self.name, keys, handler, metadata))
        watch = _ConfigurationWatch(self._component, subscription_id)
        self._watches[subscription_id] = watch
        self._tracker.add(watch)
        return subscription_id

    async def unsubscribe(self, subscription_id: str) -> None:
        watch = self._watches.pop(subscription_id, None)
        if watch is not None:
            self._tracker.discard(watch)
            watch._active = False
        await _served(self._service.unsubscribe(self.name, subscription_id, missing_ok=False))


__all__ = [
    "BindingClient",
    "ConfigurationClient",
    "DropMessage",
    "EventHandler",
    "LockClient",
    "LockLostError",
    "LockNotAcquiredError",
    "PubSubClient",
    "SecretsClient",
    "StateClient",
    "SubscriptionTracker",
    "TopicEvent",
    "to_topic_event",
]
