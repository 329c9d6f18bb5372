"""The pub/sub contract: publish to a topic, subscribe a handler, at-least-once delivery."""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .component import Component, FeaturesMixin, SettingsT, Subscription
from .errors import InvalidRequestError, MetadataError
from .metadata import setting
from .state import TTL_METADATA, parse_ttl

PreparedT = TypeVar("PreparedT")


class PubSubFeature(enum.StrEnum):
    MESSAGE_TTL = "MESSAGE_TTL"
    SUBSCRIBE_WILDCARDS = "SUBSCRIBE_WILDCARDS"
    BULK_PUBLISH = "BULK_PUBLISH"
    BULK_SUBSCRIBE = "BULK_SUBSCRIBE"


@dataclass(frozen=True)
class PublishRequest:
    topic: str
    data: bytes
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_topic(self.topic)


@dataclass(frozen=True)
class Message:
    """A delivered message; ``delivery_count`` is 1 on first delivery and grows on redelivery."""

    topic: str
    data: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    id: str = ""
    delivery_count: int = 1


@dataclass(frozen=True)
class SubscribeRequest:
    topic: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    dead_letter_topic: str | None = None
    """Where a message goes once its deliveries are used up (None: the component's default)."""
    min_concurrency: int = 0
    """Handler calls the subscriber wants at once, at least (a bulk subscription's batch
    size, which fills only if that many messages are handed out together)."""

    def __post_init__(self) -> None:
        validate_topic(self.topic)


class DropMessage(Exception):
    """Raised by a handler for a message that must not be redelivered (Dapr's DROP)."""


Handler = Callable[[Message], Awaitable[None]]
"""Returns normally to ack; raises to ask for redelivery; raises ``DropMessage`` to drop."""


@dataclass(frozen=True)
class BulkPublishEntry:
    entry_id: str
    data: bytes
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkPublishRequest:
    topic: str
    entries: Sequence[BulkPublishEntry]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def entry_request(self, entry: BulkPublishEntry) -> PublishRequest:
        """The publish of one entry: its metadata over the request's."""
        return PublishRequest(
            topic=self.topic,
            data=entry.data,
            content_type=entry.content_type,
            metadata={**self.metadata, **entry.metadata},
        )


@dataclass(frozen=True)
class BulkPublishFailure:
    entry_id: str
    error: str


@dataclass(frozen=True)
class BulkPublishResponse:
    failed: Sequence[BulkPublishFailure] = ()


def validate_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidRequestError("topic must be a non-empty string")


class PubSub(FeaturesMixin[PubSubFeature], Component[SettingsT]):
    """A message broker. Delivery is at-least-once: ack only after the handler returned."""

    @abstractmethod
    async def publish(self, request: PublishRequest) -> None: ...

    @abstractmethod
    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        """Start delivering ``request.topic`` to ``handler`` until the subscription is cancelled."""

    def consumer_id(self, configured: str, *, names: str) -> str:
        """Dapr's ``consumerID``: ``configured``, else the app id; when there is neither, a
        ``MetadataError`` saying what it names (``names``, e.g. "the consumer group")."""
        consumer_id = configured or self.metadata.app_id
        if not consumer_id:
            raise MetadataError(
                "metadata 'consumerID' is required when the component has no app id "
                f"(it names {names})",
                component=self.label,
                field="consumerID",
            )
        return consumer_id

    def message_expiry(self, request: PublishRequest) -> float | None:
        """``time.time()`` after which a message of ``request`` must not reach a handler
        (``ttlInSeconds``), None for never; a bad value is an ``InvalidRequestError``
        naming this component, the topic and the field."""
        try:
            ttl = parse_ttl(request.metadata)
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                exc.reason, component=self.label, key=request.topic, field=TTL_METADATA
            ) from None
        return time.time() + ttl if ttl is not None and ttl > 0 else None

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """Publish each entry; failures are reported per entry, not raised (a component that
        is not open raises ``ComponentNotOpenError``, as every operation does)."""
        self.require_open()

        async def one(entry: BulkPublishEntry) -> BulkPublishFailure | None:
            try:
                await self.publish(request.entry_request(entry))
            except Exception as exc:
                return BulkPublishFailure(entry.entry_id, str(exc))
            return None

        results = await asyncio.gather(*(one(e) for e in request.entries))
        return BulkPublishResponse(failed=[r for r in results if r is not None])


def consumer_id_setting(*, description: str) -> Any:
    """The ``consumerID`` field of a broker with consumer groups or queues; empty means the
    app id (``PubSub.consumer_id``)."""
    return setting("", name="consumerID", description=description, example="orders-service")


class BulkPublisher(PubSub[SettingsT], feature=PubSubFeature.BULK_PUBLISH):
    """A broker with a native bulk publish: it has ``BULK_PUBLISH`` without listing it, and
    a ``PubSub`` that lists ``BULK_PUBLISH`` without being a ``BulkPublisher`` is refused
    when its class is defined."""

    @abstractmethod
    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse: ...

    def prepare_each(
        self, request: BulkPublishRequest, prepare: Callable[[PublishRequest], PreparedT]
    ) -> tuple[list[tuple[str, PreparedT]], list[BulkPublishFailure]]:
        """Every entry as a publish of its own, made ready to send by ``prepare``, before
        anything is sent: ``(entry id, prepared)`` of the good ones, and the failures of
        those ``prepare`` refused with ``InvalidRequestError`` (a bad entry fails alone)."""
        validate_topic(request.topic)
        accepted: list[tuple[str, PreparedT]] = []
        failed: list[BulkPublishFailure] = []
        for entry in request.entries:
            try:
                accepted.append((entry.entry_id, prepare(request.entry_request(entry))))
            except InvalidRequestError as exc:
                failed.append(BulkPublishFailure(entry.entry_id, str(exc)))
        return accepted, failed


# --- the driver kit: what a broker implements so that mechakit.core.delivery delivers -----


@dataclass(eq=False)
class Delivery:
    """A message taken from the broker, held until the delivery engine settles it."""

    message: Message
    receipt: Any = None
    """The broker's handle to settle it with (stream entry id, SQS receipt handle…)."""
    expires_at: float | None = None
    """``time.time()`` after which it is acked without reaching a handler (``ttlInSeconds``)."""
    ordering_key: str | None = None
    """Deliveries with one key are handled one at a time, in the order received; once one
    of them is not acked, the later ones already received are released, not handled."""
    key: str = ""
    """Identifies it while unsettled (default: ``message.id``); a second delivery with the
    key of an unsettled one is ignored, so a redelivery never runs beside the first."""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.message.id


class Transport(ABC):
    """One receive source of a broker (a stream, a queue), as the delivery engine sees it.

    The broker's own redelivery mechanism (pending entries, visibility timeouts, a local
    queue) stays in here; the engine decides *what* happens to each delivery and calls one
    of ``ack``, ``retry_later`` or ``release`` for it (``dead_letter`` then ``ack`` for one
    that is given up). Every method may raise: the engine logs the error and carries on.
    """

    source: str = "the broker"
    """What the engine's log lines name after the component, e.g. ``topic 'orders'``."""

    @abstractmethod
    async def receive(self, max_count: int) -> Sequence[Delivery]:
        """Waits a while (a long poll) for up to ``max_count`` deliveries; may return none.

        The engine calls it only when it has room, so what is returned counts against the
        subscription's prefetch. Cancelled when the engine stops: whatever it already took
        from the broker must then be given back or left where the broker redelivers it.
        ``Message.delivery_count`` is the broker's count; a transport without one counts.
        """

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settles for good: the handler succeeded, dropped it, or it expired or was
        dead-lettered. Acks that come in while one call runs arrive together in the next.
        Raise ``BulkError`` keyed by ``Delivery.key`` when only some of them failed."""

    @abstractmethod
    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        """The handler failed: deliver it again, counted as a new delivery, in about
        ``delay`` seconds (a broker that redelivers on a clock of its own may round)."""

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        """Publishes a copy of the message (data, content type, metadata) to ``topic``.

        The engine acks the delivery afterwards; when this raises it is retried later."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Gives back deliveries that reached no handler (stopping, no route, an earlier
        message of their ordering key failed), not counted as failures where the broker
        allows. Default: nothing, the broker redelivers them after its own timeout."""
        return None

    async def close(self) -> None:
        """The engine has stopped and settled what it could; release what is still held."""
        return None
