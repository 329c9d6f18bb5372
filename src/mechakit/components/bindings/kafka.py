"""bindings.kafka: Dapr's Kafka binding, input and output, on kafka-python.

Output: ``create`` sends the data to ``publishTopic`` (request metadata ``topic`` overrides
it per request), keyed by the request metadata ``partitionKey`` (or ``key``), the other
metadata as headers.

Input: ``read`` joins the consumer group ``consumerGroup`` (default: the app id) on
``topics`` (comma separated); each event carries the record's headers as metadata, plus
``__key``, ``__topic``, ``__partition`` and ``__offset``. Offsets are committed only past
events whose handler returned (``_shared.kafka_consumer``); a failed event is handed over
again after a doubling delay until it succeeds (``backOffMaxRetries`` bounds that, then
it is dropped with an error log), without holding up a rebalance.
"""

from __future__ import annotations

from collections.abc import Sequence

from mechakit.components._shared.kafka import KafkaSettings, Producer
from mechakit.components._shared.kafka_consumer import GroupMember, GroupTransport
from mechakit.components._shared.requests import metadata_value
from mechakit.components.pubsub.kafka import consumer_options, record_of
from mechakit.core.bindings import (
    BindingReads,
    InputBinding,
    InputHandler,
    InvokeRequest,
    InvokeResponse,
    OperationKind,
    OutputBinding,
    RetriedReadSettings,
)
from mechakit.core.component import Subscription
from mechakit.core.errors import InvalidRequestError, MetadataError
from mechakit.core.metadata import StrList, setting
from mechakit.core.pubsub import PublishRequest


class KafkaBindingSettings(KafkaSettings, RetriedReadSettings):
    topics: StrList = setting((), description="Topics the input binding reads, comma separated.",
                              example="orders,payments")  # fmt: skip
    publish_topic: str = setting(
        "", description="Topic the output binding sends to.", example="orders"
    )


class KafkaBinding(OutputBinding[KafkaBindingSettings], InputBinding[KafkaBindingSettings]):
    def __init__(self) -> None:
        super().__init__()
        self._producer: Producer | None = None
        self._reads = BindingReads(self)

    async def open(self) -> None:
        s = self.settings
        client_id = f"dapr-{self.metadata.app_id or self.metadata.name}"
        producer = Producer(s.producer_options(self.label, client_id=client_id), label=self.label)
        await producer.open()
        self._producer = producer

    async def shut(self) -> None:
        try:
            await self._reads.stop()
        finally:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.close()

    async def ping(self) -> None:
        await self.opened(self._producer).ping()

    def operations(self) -> Sequence[str]:
        return (OperationKind.CREATE,)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        self.check_operation(request)
        producer = self.opened(self._producer)
        metadata = dict(request.metadata)
        topic = metadata.pop("topic", "") or self.settings.publish_topic
        if not topic:
            raise InvalidRequestError(
                "no topic to send to: set publishTopic or the request metadata 'topic'",
                component=self.label,
                field="publishTopic",
            )
        content_type = metadata_value(metadata, "contentType") or None
        await producer.send(record_of(PublishRequest(topic, request.data, content_type, metadata)))
        return InvokeResponse()

    async def read(self, handler: InputHandler) -> Subscription:
        self.opened(self._producer)
        s = self.settings
        if not s.topics:
            raise MetadataError("the input binding needs topics to read", component=self.label,
                                field="topics")  # fmt: skip
        group = s.consumer_group or self.metadata.app_id or self.metadata.name
        policy = s.read_policy(prefetch=max(s.concurrency * 2, 10), redelivery_delay=0.1)
        for topic in s.topics:
            await self.opened(self._producer).announce(topic)
        options = s.client_options(self.label, client_id=f"dapr-{group}")
        member = GroupMember(consumer_options(s, options, group), label=self.label,
                             log=self.log, room=policy.room)  # fmt: skip
        transport = GroupTransport(member, list(s.topics), label=self.label,
                                   route=lambda _topic: BindingReads.ROUTE)  # fmt: skip
        await transport.start()
        return self._reads.start(transport, policy, handler)


__all__ = ["KafkaBinding", "KafkaBindingSettings"]
