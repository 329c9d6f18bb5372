"""pubsub.kafka: Kafka topics, a consumer group per app id (kafka-python, off the loop).

A publish sends the message to the topic of the same name, keyed by the publish metadata
``partitionKey`` (or ``key``), so that the messages of one key land on one partition and are
handled in order; every other metadata entry, and the content type, travel as headers and
come back to the subscriber as metadata (with ``__key``, ``__topic``, ``__partition`` and
``__offset``). A bulk publish hands all its messages to the producer at once and waits for
their acknowledgements together.

Subscriptions of one component join the consumer group ``consumerGroup`` (default: the
consumer id, i.e. the app id), so instances of one app id share a topic's partitions and
other app ids each get every message. Delivery is at-least-once, by the shared engine:
an offset is committed only once every record before it was handled (see
``_shared.kafka_consumer`` for how retries, rebalances and crashes keep that), a failed
record is retried after ``consumeRetryInterval`` doubling, and after ``maxDeliveries`` it
goes to the dead-letter topic, else is dropped with an error log. ``sessionTimeout`` and
``heartbeatInterval`` set the group's timings (10 s and 3 s as Dapr's; kafka-python's own
45 s would make a takeover that slow). Topics are created by the brokers on first use
where they allow it, as upstream.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mechakit.components._shared.kafka import (
    KEY_METADATA,
    KafkaSettings,
    Producer,
    Record,
    headers_of,
    key_of,
)
from mechakit.components._shared.kafka_consumer import CONTENT_TYPE, GroupMember, GroupTransport
from mechakit.core.component import Subscription
from mechakit.core.delivery import DeliveryPolicy, DeliverySettings, SubscriptionEngines
from mechakit.core.metadata import Duration, setting
from mechakit.core.pubsub import (
    BulkPublisher,
    BulkPublishFailure,
    BulkPublishRequest,
    BulkPublishResponse,
    Delivery,
    Handler,
    PublishRequest,
    SubscribeRequest,
    consumer_id_setting,
)

_METADATA_MAX_AGE_MS = 10_000
"""How soon a group member sees a topic created after it subscribed (or new partitions)."""


class KafkaPubSubSettings(KafkaSettings, DeliverySettings):
    consumer_id: str = consumer_id_setting(
        description="The consumer group when consumerGroup is empty (default: the app id)."
    )
    consume_retry_interval: Duration = setting(
        timedelta(milliseconds=100),
        description="Wait before a failed message is delivered again, doubling up to 30s.",
        example="100ms",
    )

    def delivery_policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            concurrency=self.concurrency,
            prefetch=max(self.concurrency * 2, 10),
            max_deliveries=self.max_deliveries,
            redelivery_delay=max(self.consume_retry_interval.total_seconds(), 0.01),
            max_redelivery_delay=30.0,
            stop_grace=5.0,
        )


def record_of(request: PublishRequest) -> Record:
    """The Kafka message of a publish: key from the metadata, the rest as headers."""
    headers = headers_of(request.metadata, skip=(*KEY_METADATA, CONTENT_TYPE))
    if request.content_type:
        headers.append((CONTENT_TYPE, request.content_type.encode()))
    return Record(request.topic, bytes(request.data), key_of(request.metadata), headers)


def consumer_options(
    settings: KafkaSettings, options: dict[str, Any], group: str
) -> dict[str, Any]:
    """A group member's options: offsets committed by hand, Dapr's group timings."""
    return {
        **options,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if settings.initial_offset == "oldest" else "latest",
        "session_timeout_ms": int(settings.session_timeout.total_seconds() * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval.total_seconds() * 1000),
        "metadata_max_age_ms": _METADATA_MAX_AGE_MS,
        "bootstrap_timeout_ms": 3000,  # the member retries on its own: fail fast, warn early
    }


class KafkaPubSub(BulkPublisher[KafkaPubSubSettings]):
    """Dapr's pubsub.kafka on kafka-python; BULK_PUBLISH is native."""

    FEATURES = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self._producer: Producer | None = None
        self._member: GroupMember | None = None
        self._engines = SubscriptionEngines(self)

    async def open(self) -> None:
        s = self.settings
        client_id = f"dapr-{self.metadata.app_id or self.metadata.name}"
        options = s.client_options(self.label, client_id=client_id)
        self._engines = SubscriptionEngines(self)
        producer = Producer(s.producer_options(self.label, client_id=client_id), label=self.label)
        await producer.open()
        self._producer = producer
        group = s.consumer_group or s.consumer_id or self.metadata.app_id
        if group:  # else subscribe names what is missing
            self._member = GroupMember(consumer_options(s, options, group), label=self.label,
                                       log=self.log, room=s.delivery_policy().room)  # fmt: skip

    async def shut(self) -> None:
        try:
            await self._engines.stop()
        finally:
            producer, self._producer, self._member = self._producer, None, None
            if producer is not None:
                await producer.close()

    async def ping(self) -> None:
        await self.opened(self._producer).ping()

    async def publish(self, request: PublishRequest) -> None:
        await self.opened(self._producer).send(record_of(request))

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        producer = self.opened(self._producer)
        accepted, failed = self.prepare_each(request, record_of)
        if accepted:
            errors = await producer.send_many([record for _, record in accepted])
            failed += [
                BulkPublishFailure(entry_id, str(error))
                for (entry_id, _), error in zip(accepted, errors, strict=True)
                if error is not None
            ]
        return BulkPublishResponse(failed=failed)

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        self.opened(self._producer)
        s = self.settings
        if not s.consumer_group:
            self.consumer_id(s.consumer_id, names="the consumer group")  # raises: none given
        member = self.opened(self._member)
        await self.opened(self._producer).announce(request.topic)

        async def dead_letter(delivery: Delivery, topic: str) -> None:
            m = delivery.message
            metadata = {k: v for k, v in m.metadata.items() if not k.startswith("__")}
            key = m.metadata.get("__key")
            if key:
                metadata["partitionKey"] = key
            await self.publish(PublishRequest(topic, m.data, m.content_type, metadata))

        transport = GroupTransport(
            member, [request.topic], label=self.label, dead_letter=dead_letter
        )
        await transport.start()
        return self._engines.start(transport, request, handler)


__all__ = ["KafkaPubSub", "KafkaPubSubSettings", "consumer_options", "record_of"]
