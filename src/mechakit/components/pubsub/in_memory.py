"""pubsub.in-memory: a broker inside the process, for tests and single-process apps.

Each component instance is its own broker: two instances never see each other's messages,
even under the same name, so hosts and tests stay isolated. Every subscription on a topic
gets every message (fan-out). Delivery is at-least-once: a message is acked when its
handler returns; an exception redelivers it after a doubling backoff, ``DropMessage``
drops it, and once ``maxDeliveries`` are used up it goes to the dead-letter topic (the
subscription's, else ``deadLetterTopic``) or is dropped with a log line.

Unlike Dapr's in-memory broker, messages published to a topic nobody subscribes to are
not lost: up to ``backlogSize`` of them wait and go to the next subscriber (0 restores
Dapr's behaviour). A subscription cancelled as the topic's last one hands its unacked
messages back to that backlog. Publish metadata ``ttlInSeconds`` expires a message that
has not reached a handler in time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import types
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Annotated

from pydantic import Field

from mechakit.core.component import Subscription
from mechakit.core.delivery import DeliveryPolicy, DeliverySettings, SubscriptionEngines
from mechakit.core.metadata import Duration, setting
from mechakit.core.pubsub import (
    BulkPublisher,
    BulkPublishRequest,
    BulkPublishResponse,
    Delivery,
    Handler,
    Message,
    PublishRequest,
    PubSubFeature,
    SubscribeRequest,
    Transport,
)

NonNegativeDuration = Annotated[Duration, Field(ge=timedelta(0))]


class InMemoryPubSubSettings(DeliverySettings):
    redelivery_interval: NonNegativeDuration = setting(
        timedelta(milliseconds=500),
        aliases=("redeliverInterval",),
        description="Wait before the first redelivery of a failed message; doubles each time.",
        example="500ms",
    )
    max_redelivery_interval: NonNegativeDuration = setting(
        timedelta(seconds=10),
        description="Upper bound of the doubling redelivery wait.",
        example="10s",
    )
    backlog_size: Annotated[int, Field(ge=0)] = setting(
        1000,
        description=(
            "Messages kept per topic while nobody subscribes, handed to the next "
            "subscriber; the oldest go first when full. 0 drops them, as Dapr does."
        ),
        example="1000",
    )

    def delivery_policy(self) -> DeliveryPolicy:
        """A failed message comes back after redeliveryInterval, doubling up to the bound."""
        return replace(
            super().delivery_policy(),
            redelivery_delay=self.redelivery_interval.total_seconds(),
            max_redelivery_delay=self.max_redelivery_interval.total_seconds(),
        )


class InMemoryPubSub(BulkPublisher[InMemoryPubSubSettings]):
    """Topics in this instance's memory; see the module docstring for delivery rules."""

    FEATURES = frozenset({PubSubFeature.MESSAGE_TTL})

    def __init__(self) -> None:
        super().__init__()
        self._subscriptions: dict[str, list[_TopicQueue]] = {}
        self._engines = SubscriptionEngines(self)
        self._backlogs: dict[str, collections.deque[_Envelope]] = {}
        self._sequence = itertools.count()

    async def shut(self) -> None:
        """Cancels every subscription, waiting for running handlers; the backlogs go.

        Bound ``close`` with ``asyncio.wait_for`` to cancel handlers that do not finish in time.
        """
        try:
            await self._engines.stop()
        finally:
            self._subscriptions.clear()
            self._backlogs.clear()

    async def ping(self) -> None:
        self.require_open()

    async def publish(self, request: PublishRequest) -> None:
        self.require_open()
        self._route(request.topic, self._envelope(request))

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """Queues the entries in their order, in one step; a bad entry fails alone."""
        self.require_open()
        accepted, failed = self.prepare_each(request, self._envelope)
        for _entry_id, envelope in accepted:
            self._route(request.topic, envelope)
        return BulkPublishResponse(failed=failed)

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        self.require_open()
        queue = _TopicQueue(self, request.topic)
        subscribers = self._subscriptions.setdefault(request.topic, [])
        if not subscribers:
            for envelope in self._backlogs.pop(request.topic, ()):
                queue.enqueue(envelope)
        subscribers.append(queue)
        return self._engines.start(queue, request, handler)

    # --- broker internals, used by _TopicQueue --------------------------------------------

    def _envelope(self, request: PublishRequest) -> _Envelope:
        expires_at = self.message_expiry(request)
        message = Message(
            topic=request.topic,
            data=request.data,
            metadata=types.MappingProxyType(dict(request.metadata)),
            content_type=request.content_type,
            id=str(uuid.uuid4()),
        )
        return _Envelope(next(self._sequence), message, expires_at)

    def _route(self, topic: str, envelope: _Envelope) -> None:
        subscribers = self._subscriptions.get(topic)
        if subscribers:
            for subscription in subscribers:
                subscription.enqueue(envelope)
        else:
            self._keep(topic, [envelope])

    def _keep(self, topic: str, envelopes: Iterable[_Envelope]) -> None:
        """Adds messages to the topic's backlog in publish order, dropping the oldest past the bound."""
        if not self.is_open:  # closing: what is left goes with the broker
            return
        limit = self.settings.backlog_size
        backlog = self._backlogs.setdefault(topic, collections.deque())
        merged = list(heapq.merge(backlog, envelopes, key=lambda e: e.sequence))
        excess = max(0, len(merged) - limit)
        if excess and limit == 0:
            self.log.warning(
                "%s: topic %r has no subscriber; dropped %d message(s), e.g. %s (backlogSize is 0)",
                self.label,
                topic,
                excess,
                merged[0].message.id,
            )
        elif excess:
            self.log.warning(
                "%s: topic %r has no subscriber and its backlog is full (backlogSize %d); "
                "dropped the %d oldest message(s), e.g. %s",
                self.label,
                topic,
                limit,
                excess,
                merged[0].message.id,
            )
        backlog.clear()
        backlog.extend(merged[excess:])
        if not backlog:
            del self._backlogs[topic]

    def _detach(self, queue: _TopicQueue) -> bool:
        """Stops routing to ``queue``; True when it was the topic's last subscriber."""
        subscribers = self._subscriptions.get(queue.topic, [])
        with contextlib.suppress(ValueError):
            subscribers.remove(queue)
        if subscribers:
            return False
        self._subscriptions.pop(queue.topic, None)
        return True

    def _dead_letter(self, message: Message, topic: str) -> None:
        """Routes a copy of ``message`` to ``topic``: same id, a first delivery, no expiry."""
        dead = replace(message, topic=topic, delivery_count=1)
        self._route(topic, _Envelope(next(self._sequence), dead, None))


@dataclass(frozen=True)
class _Envelope:
    sequence: int
    message: Message
    expires_at: float | None
    """``time.time()`` after which the message must not reach a handler."""

    def redelivery(self) -> _Envelope:
        return replace(
            self, message=replace(self.message, delivery_count=self.message.delivery_count + 1)
        )


class _TopicQueue(Transport):
    """One subscription's own queue of what the broker routes to it, and its redeliveries."""

    def __init__(self, broker: InMemoryPubSub, topic: str) -> None:
        self.topic = topic
        self.source = f"topic {topic!r}"
        self._broker = broker
        self._queue: asyncio.Queue[_Envelope] = asyncio.Queue()
        self._retrying: dict[asyncio.Task[None], _Envelope] = {}

    def enqueue(self, envelope: _Envelope) -> None:
        self._queue.put_nowait(envelope)

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        envelopes = [await self._queue.get()]
        while len(envelopes) < max_count and not self._queue.empty():
            envelopes.append(self._queue.get_nowait())
        return [Delivery(e.message, receipt=e, expires_at=e.expires_at) for e in envelopes]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: a received message is in no queue any more."""

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        retry = delivery.receipt.redelivery()
        task = asyncio.create_task(self._enqueue_later(retry, delay))
        self._retrying[task] = retry
        task.add_done_callback(lambda done: self._retrying.pop(done, None))

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        self._broker._dead_letter(delivery.message, topic)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._queue.put_nowait(delivery.receipt)

    async def close(self) -> None:
        """Hands what is unacked back to the topic's backlog when no subscriber is left."""
        last = self._broker._detach(self)
        unacked = self._collect_unacked()
        if unacked and last:
            self._broker._keep(self.topic, unacked)
        elif unacked:
            self._broker.log.debug(
                "%s: subscription to %r cancelled with %d unacked message(s); "
                "other subscribers hold their own copies",
                self._broker.label,
                self.topic,
                len(unacked),
            )

    def _collect_unacked(self) -> list[_Envelope]:
        unacked: list[_Envelope] = []
        for task, envelope in list(self._retrying.items()):
            if not task.done():
                task.cancel()
                unacked.append(envelope)
        self._retrying.clear()
        while not self._queue.empty():
            unacked.append(self._queue.get_nowait())
        return sorted(unacked, key=lambda e: e.sequence)

    async def _enqueue_later(self, envelope: _Envelope, delay: float) -> None:
        await asyncio.sleep(delay)
        self._queue.put_nowait(envelope)
