"""pubsub.rabbitmq: a topic is an exchange, each app id reads it through a queue of its own.

A publish goes to the exchange named after the topic (``exchangeKind``, default fanout;
with topic or direct exchanges the publish metadata ``routingKey`` routes and the subscribe
metadata ``routingKey``, comma separated, binds). A subscription consumes the queue
``<consumerID>-<topic>`` (``consumerID`` defaults to the app id; subscribe metadata
``queueName`` overrides), so instances of one app id compete for its messages and other app
ids, with queues of their own, each get every message.

Dapr's defaults are kept for compatibility: ``durable`` false and ``deletedWhenUnused``
true, so a queue and the messages in it are deleted when its last consumer goes (a restart
of the only subscriber loses what was queued meanwhile). Set ``durable: true`` and
``deletedWhenUnused: false`` to keep them, and ``publisherConfirm: true`` (with
``deliveryMode: 2``) so that a publish returns only once the broker has the message.

Delivery is at-least-once, by the shared engine (``mechakit.core.delivery``): ack only
after the handler returned; a failed message is held for the engine's doubling delay, then
requeued; after ``maxDeliveries`` it goes to the dead-letter topic, else with
``enableDeadLetter`` to the broker's ``dlx-<queue>`` exchange and ``dlq-<queue>`` queue,
else it is dropped with an error log. ``requeueInFailure: true`` without ``maxDeliveries``
requeues forever, as upstream. The delivery count is the quorum queue's
``x-delivery-count`` (subscribe metadata ``queueType: quorum``), else counted here. A
consumer's unacked messages return to the queue when its connection dies, for another
instance. The connection is re-made after any drop (see ``_shared.rabbitmq``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field

from mechakit.components._shared.rabbitmq import (
    AmqpConnection,
    Publisher,
    RabbitMQConnectionSettings,
    client_properties,
    outgoing_message,
    reconnect_wait_setting,
)
from mechakit.components._shared.rabbitmq_queue import (
    ConsumerOptions,
    QueueConsumer,
    QueueSpec,
)
from mechakit.components._shared.requests import metadata_flag, metadata_value
from mechakit.components.pubsub.jetstream import Concurrency
from mechakit.core.component import Subscription
from mechakit.core.delivery import (
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
    concurrency_setting,
)
from mechakit.core.errors import MetadataError
from mechakit.core.metadata import Bool, Duration, setting
from mechakit.core.pubsub import (
    Delivery,
    Handler,
    PublishRequest,
    PubSub,
    PubSubFeature,
    SubscribeRequest,
    consumer_id_setting,
)
from mechakit.core.state import parse_ttl

ExchangeKind = Literal["fanout", "topic", "direct", "headers"]


class RabbitMQSettings(RabbitMQConnectionSettings, DeliverySettings):
    consumer_id: str = consumer_id_setting(
        description="Queues are named <consumerID>-<topic> (default: the app id)."
    )
    durable: Bool = setting(
        False, description="Exchanges and queues survive a broker restart (Dapr: false)."
    )
    deleted_when_unused: Bool = setting(
        True,
        description=(
            "Queues (with their messages) and exchanges are deleted when unused (Dapr: "
            "true): set false to keep messages while no subscriber runs."
        ),
    )
    auto_ack: Bool = setting(
        False, description="Ignored: mechakit acks only after the handler succeeded."
    )
    requeue_in_failure: Bool = setting(
        False, description="Requeue failed messages forever unless maxDeliveries is set."
    )
    delivery_mode: Annotated[int, Field(ge=0, le=2)] = setting(
        0, description="2: persistent messages (written to disk); 0 or 1: transient."
    )
    prefetch_count: Annotated[int, Field(ge=0)] = setting(
        0, description="Unacked messages per subscription, at most (0: twice concurrency, 10+)."
    )
    reconnect_wait: Duration = reconnect_wait_setting(
        "reconnectWaitSeconds", ("reconnectWait",), 3.0
    )
    max_len: Annotated[int, Field(ge=0)] = setting(0, description="Queue length limit (0: none).")
    max_len_bytes: Annotated[int, Field(ge=0)] = setting(
        0, description="Queue size limit in bytes (0: none)."
    )
    exchange_kind: ExchangeKind = setting("fanout", description="Exchange type of the topics.")
    ttl_in_seconds: Annotated[int, Field(ge=1)] | None = setting(
        None, description="Default message TTL in seconds, when a publish sets none."
    )
    publisher_confirm: Bool = setting(
        False, description="A publish returns only once the broker confirmed it."
    )
    enable_dead_letter: Bool = setting(
        False,
        description=(
            "Messages out of deliveries, with no dead-letter topic, go to the broker's "
            "dlx-<queue> exchange and dlq-<queue> queue."
        ),
    )
    publish_message_properties_to_metadata: Bool = setting(
        False, description="Message properties and headers also as metadata.<name>."
    )
    concurrency: Concurrency = concurrency_setting(
        description="Handler calls at once per subscription; 'single' is 1, 'parallel' 10."
    )

    def delivery_policy(self) -> DeliveryPolicy:
        """Redelivery after a doubling delay; ``requeueInFailure`` without ``maxDeliveries``
        never gives up; ``enableDeadLetter`` lets the broker's dead-letter queue take the
        given-up messages."""
        explicit = "max_deliveries" in self.model_fields_set
        limit = self.max_deliveries if explicit or not self.requeue_in_failure else 0
        return replace(
            DeliverySettings.delivery_policy(self),
            max_deliveries=limit,
            prefetch=self.prefetch_count or max(self.concurrency * 2, 10),
            redelivery_delay=1.0,
            max_redelivery_delay=30.0,
            drop_exhausted=not self.enable_dead_letter,
            stop_grace=5.0,
        )


class RabbitMQPubSub(PubSub[RabbitMQSettings]):
    """Dapr's pubsub.rabbitmq on aio-pika, with reconnection that never gives up."""

    FEATURES = frozenset({PubSubFeature.MESSAGE_TTL})

    def __init__(self) -> None:
        super().__init__()
        self._amqp: AmqpConnection | None = None
        self._publisher: Publisher | None = None
        self._engines = SubscriptionEngines(self)
        self._consumer = ""

    async def open(self) -> None:
        s = self.settings
        url = s.url(self.label)
        self._consumer = s.consumer_id or self.metadata.app_id
        if s.auto_ack:
            self.log.warning(
                "%s: autoAck is ignored: messages are acked only after the handler succeeded",
                self.label,
            )
        if not s.durable or s.deleted_when_unused:
            self.log.debug(
                "%s: durable=%s, deletedWhenUnused=%s (Dapr's defaults): a queue and its "
                "messages are deleted when its last consumer goes; set durable true and "
                "deletedWhenUnused false to keep them",
                self.label,
                s.durable,
                s.deleted_when_unused,
            )
        self._engines = SubscriptionEngines(self)
        name = s.client_name or f"dapr-{self.metadata.app_id or self.metadata.name}"
        self._amqp = AmqpConnection(
            url,
            label=self.label,
            log=self.log,
            reconnect_wait=s.reconnect_wait.total_seconds(),
            properties=client_properties(name),
            heartbeat=s.heart_beat.total_seconds(),
        )
        await self._amqp.open()
        self._publisher = Publisher(self._amqp, label=self.label, confirm=s.publisher_confirm)

    async def shut(self) -> None:
        try:
            await self._engines.stop()
        finally:
            publisher, amqp = self._publisher, self._amqp
            self._publisher, self._amqp = None, None
            if publisher is not None:
                with contextlib.suppress(Exception):
                    await publisher.close()
            if amqp is not None:
                await amqp.close()

    async def ping(self) -> None:
        await self.opened(self._amqp).connection(within=1.0)

    async def publish(self, request: PublishRequest) -> None:
        self.opened(self._publisher)
        ttl, routing_key = None, ""
        if request.metadata:  # most publishes have none: nothing to look up
            self.message_expiry(request)  # rejects a bad ttlInSeconds, naming this component
            ttl = parse_ttl(request.metadata)
            routing_key = metadata_value(request.metadata, "routingKey")
        if ttl is None:
            ttl = self.settings.ttl_in_seconds
        await self._send(
            request.topic,
            request.data,
            request.content_type,
            request.metadata,
            ttl=ttl,
            routing_key=routing_key,
        )

    async def _send(
        self,
        topic: str,
        data: bytes,
        content_type: str | None,
        metadata: Any,
        *,
        ttl: int | None,
        routing_key: str,
    ) -> None:
        import aio_pika

        s = self.settings
        message = outgoing_message(
            data,
            content_type=content_type,
            metadata=dict(metadata or {}),
            ttl=ttl,
            delivery_mode=s.delivery_mode,
            label=self.label,
            key=topic,
        )

        async def declare(channel: Any) -> Any:
            return await channel.declare_exchange(
                topic, aio_pika.ExchangeType(s.exchange_kind), durable=s.durable,
                auto_delete=s.deleted_when_unused,
            )  # fmt: skip

        publisher = self.opened(self._publisher)
        await publisher.publish(topic, routing_key, message, declare=declare, key=topic)

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        amqp = self.opened(self._amqp)
        s = self.settings
        spec = self._queue_spec(request)
        policy = s.delivery_policy()
        options = ConsumerOptions(
            prefetch=max(policy.room, request.min_concurrency),
            max_deliveries=policy.max_deliveries,
            dead_letter_on_give_up=s.enable_dead_letter,
            properties_to_metadata=s.publish_message_properties_to_metadata,
        )

        async def dead_letter(delivery: Delivery, topic: str) -> None:
            m = delivery.message
            await self._send(topic, m.data, m.content_type, m.metadata, ttl=None, routing_key="")

        consumer = QueueConsumer(
            amqp, spec, options, topic=request.topic, label=self.label, log=self.log,
            dead_letter=dead_letter,
        )  # fmt: skip
        try:
            await consumer.start()
        except BaseException:
            await consumer.close()
            raise
        return self._engines.start(consumer, request, handler)

    def _queue_spec(self, request: SubscribeRequest) -> QueueSpec:
        s, meta, topic = self.settings, request.metadata, request.topic
        queue = metadata_value(meta, "queueName")
        if not queue:
            queue = f"{self.consumer_id(s.consumer_id, names='the queues')}-{topic}"
        arguments: dict[str, Any] = {}
        max_len = self._number(meta, "maxLen", 2**62) or s.max_len
        max_len_bytes = self._number(meta, "maxLenBytes", 2**62) or s.max_len_bytes
        if max_len:
            arguments["x-max-length"] = max_len
        if max_len_bytes:
            arguments["x-max-length-bytes"] = max_len_bytes
        priority = self._number(meta, "maxPriority", 2**62)
        if priority:
            arguments["x-max-priority"] = min(priority, 255)
        queue_type = metadata_value(meta, "queueType").lower()
        durable, auto_delete = s.durable, s.deleted_when_unused
        if queue_type:
            if queue_type not in ("classic", "quorum"):
                raise MetadataError(
                    f"subscribe metadata 'queueType' must be classic or quorum, not {queue_type!r}",
                    component=self.label,
                    field="queueType",
                )
            if queue_type == "quorum" and (not durable or auto_delete):
                raise MetadataError(
                    "queueType quorum needs durable true and deletedWhenUnused false",
                    component=self.label,
                    field="queueType",
                )
            arguments["x-queue-type"] = queue_type
        single = metadata_value(meta, "singleActiveConsumer")
        if metadata_flag(single, "singleActiveConsumer", default=False, component=self.label):
            arguments["x-single-active-consumer"] = True
        dlx = dlq = ""
        if s.enable_dead_letter:
            dlx, dlq = f"dlx-{queue}", f"dlq-{queue}"
            arguments["x-dead-letter-exchange"] = dlx
        keys = tuple(k.strip() for k in metadata_value(meta, "routingKey").split(","))
        return QueueSpec(
            name=queue,
            durable=durable,
            auto_delete=auto_delete,
            arguments=arguments,
            exchange=topic,
            exchange_kind=s.exchange_kind,
            exchange_durable=durable,
            exchange_auto_delete=auto_delete,
            routing_keys=tuple(dict.fromkeys(keys)) or ("",),
            dead_letter_exchange=dlx,
            dead_letter_queue=dlq,
        )

    def _number(self, metadata: Any, name: str, most: int) -> int:
        raw = metadata_value(metadata, name)
        if not raw:
            return 0
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= most:
            raise MetadataError(
                f"subscribe metadata {name!r} must be a whole number of at least 0, got {raw!r}",
                component=self.label,
                field=name,
            )
        return value


__all__ = ["RabbitMQPubSub", "RabbitMQSettings"]
