"""The pub/sub contract: publish to a topic, subscribe a handler, at-least-once delivery."""

from __future__ import annotations

import asyncio
import enum
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .component import Component, FeaturesMixin, SettingsT, Subscription
from .errors import InvalidRequestError


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

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """Publish each entry; failures are reported per entry, not raised."""

        async def one(entry: BulkPublishEntry) -> BulkPublishFailure | None:
            try:
                await self.publish(
                    PublishRequest(
                        topic=request.topic,
                        data=entry.data,
                        content_type=entry.content_type,
                        metadata={**request.metadata, **entry.metadata},
                    )
                )
            except Exception as exc:
                return BulkPublishFailure(entry.entry_id, str(exc))
            return None

        results = await asyncio.gather(*(one(e) for e in request.entries))
        return BulkPublishResponse(failed=[r for r in results if r is not None])


class BulkPublisher(PubSub[SettingsT]):
    """A broker with a native bulk publish (declares ``BULK_PUBLISH``)."""

    @abstractmethod
    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse: ...
