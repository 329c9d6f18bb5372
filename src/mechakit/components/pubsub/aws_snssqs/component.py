"""``SnsSqsPubSub``: opens the clients and entities, publishes, and routes each subscribed
topic to its handler on the one engine of the consumer's queue."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mechakit.components._shared.aws import client
from mechakit.core.component import Subscription
from mechakit.core.delivery import DeliveryEngine
from mechakit.core.errors import ComponentNotOpenError, InvalidRequestError, MetadataError
from mechakit.core.pubsub import Handler, PublishRequest, PubSub, SubscribeRequest

from .entities import Entities, aws_name
from .messages import FIFO_GROUP_METADATA
from .settings import SnsSqsSettings
from .transport import QueueTransport, TopicSubscription, delivery_policy


class SnsSqsPubSub(PubSub[SnsSqsSettings]):
    """Dapr's SNS/SQS pub/sub that keeps metadata and never drops unhandled messages."""

    def __init__(self) -> None:
        super().__init__()
        self._clients: list[Any] = []
        """The boto3 clients made so far (closed by ``shut``, also after a failed ``open``)."""
        self._entities: Entities | None = None
        self._receiver: tuple[QueueTransport, DeliveryEngine] | None = None
        """The queue's transport and engine, while some topic has a handler."""

    async def open(self) -> None:
        settings = self.settings
        consumer_id = self.consumer_id(settings.consumer_id, names="the SQS queue")
        if not aws_name(consumer_id, fifo=False):
            raise MetadataError(
                f"metadata 'consumerID' {consumer_id!r} has no letter, digit, '-' or '_' "
                "to name an SQS queue with",
                component=self.label,
                field="consumerID",
            )
        if settings.disable_delete_on_retry_limit and settings.sqs_dead_letters_queue_name:
            raise MetadataError(
                "metadata 'disableDeleteOnRetryLimit' cannot be true while "
                "'sqsDeadLettersQueueName' is set (the redrive policy removes the message)",
                component=self.label,
                field="disableDeleteOnRetryLimit",
            )
        sns = await client(settings, "sns", component=self.label)
        self._clients.append(sns)
        sqs = await client(settings, "sqs", component=self.label)
        self._clients.append(sqs)
        entities = Entities(sns, sqs, settings, consumer_id, label=self.label, log=self.log)
        self._entities = entities
        if settings.disable_entity_management:
            await entities.queue()

    async def shut(self) -> None:
        """Stops the queue's subscriptions (handlers get messageVisibilityTimeout), then
        closes the clients."""
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await receiver[1].stop()
        self._entities = None
        clients, self._clients = self._clients, []
        for made in clients:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(made.close)

    async def ping(self) -> None:
        entities = self._opened()
        await entities.call(entities.sqs.list_queues, "ping", MaxResults=1)

    @property
    def queue_name(self) -> str:
        """The SQS queue of this consumer (consumerID, sanitized)."""
        return self._opened().queue_name

    async def publish(self, request: PublishRequest) -> None:
        entities = self._opened()
        group = request.metadata.get(FIFO_GROUP_METADATA) or self.settings.fifo_message_group_id
        await entities.send(
            request.topic, request.data, request.content_type, request.metadata, group
        )

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        entities = self._opened()
        topic_arn = await entities.topic_arn(request.topic)
        queue = await entities.queue()
        await entities.connect(topic_arn, request.topic, queue)
        if self._opened() is not entities:  # closed (and opened again) meanwhile
            raise ComponentNotOpenError(component=self.label)
        if self._receiver is None or self._receiver[1].stopping:
            transport = QueueTransport(entities, queue, forget=self._forget)
            policy = delivery_policy(entities.settings)
            engine = DeliveryEngine(transport, policy, label=self.label, log=self.log)
            self._receiver = (transport, engine)
        transport, engine = self._receiver
        if topic_arn in transport.topics:
            raise InvalidRequestError(
                f"topic {request.topic!r} already has a handler on this component (one SQS "
                "queue delivers each message once per consumerID; use another consumerID for a "
                "second subscriber)",
                component=self.label,
                key=request.topic,
            )
        route = engine.subscribe(
            request.topic, handler, dead_letter_topic=request.dead_letter_topic or ""
        )
        transport.topics[topic_arn] = request.topic
        return TopicSubscription(transport, topic_arn, route)

    def _opened(self) -> Entities:
        return self.opened(self._entities)

    def _forget(self, transport: QueueTransport) -> None:
        if self._receiver is not None and self._receiver[0] is transport:
            self._receiver = None


__all__ = ["SnsSqsPubSub"]
