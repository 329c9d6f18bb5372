"""pubsub.mqtt3: Dapr's MQTT pub/sub on aiomqtt, at-least-once with QoS 1 (the default).

Every subscription is a shared subscription ``$share/<consumerID>/<topic>`` on a client
of its own, so instances of one app id (consumerID, default the app id) share the work and
other app ids each get every message. Topics may use MQTT's wildcards ``+`` and ``#``
(SUBSCRIBE_WILDCARDS): the handler's ``Message.topic`` is the topic a message was published
on, also in the metadata ``topic``.

Delivery (``mechakit.core.delivery``): a message is acked (PUBACK) only after its handler
returned; a failed one stays unacked on the broker and is handed to the handler again
after a doubling delay, in process (MQTT has no nack), until ``maxDeliveries`` (or Dapr's
``backOffMaxRetries`` + 1), then it goes to the dead-letter topic or is dropped with an
error log. What a killed instance left unacked is sent by the broker to the next client
with its client id (stable per instance, see ``mechakit.components._shared.mqtt``); a
broker restart or a lost connection resumes the persistent session.

Cancelling a subscription unsubscribes; closing the component keeps the subscription in
the session (the broker keeps messages for this instance's successor) unless the
subscription's metadata says ``unsubscribeOnClose: "true"`` (Dapr's name).

MQTT 3.1.1 carries the payload only; with ``protocolVersion: "5"`` the content type and
metadata travel as MQTT 5 properties.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import Field

from mechakit.components._shared import mqtt
from mechakit.components._shared.requests import metadata_flag, metadata_value
from mechakit.core.component import Subscription
from mechakit.core.delivery import (
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
    dead_letter_topic_setting,
)
from mechakit.core.errors import InvalidRequestError
from mechakit.core.metadata import setting
from mechakit.core.pubsub import (
    Delivery,
    Handler,
    Message,
    PublishRequest,
    PubSub,
    PubSubFeature,
    SubscribeRequest,
)


def back_off_max_retries_setting() -> Any:
    return setting(
        None,
        description="Dapr's retries of a failed message (-1: forever); when set, it decides "
        "the deliveries instead of maxDeliveries.",
        example="3",
    )


class MQTTPubSubSettings(mqtt.MQTTSettings, DeliverySettings):
    back_off_max_retries: Annotated[int, Field(ge=-1)] | None = back_off_max_retries_setting()
    dead_letter_topic: str = dead_letter_topic_setting(
        description="Dead-letter topic for subscriptions that name none."
    )

    def delivery_policy(self) -> DeliveryPolicy:
        policy = DeliverySettings.delivery_policy(self)
        retries = self.back_off_max_retries
        if retries is not None:
            policy = dataclasses.replace(policy, max_deliveries=0 if retries < 0 else retries + 1)
        return dataclasses.replace(
            policy,
            prefetch=max(self.concurrency, 10),
            redelivery_delay=0.5,
            max_redelivery_delay=30.0,
            stop_grace=5.0,
        )


class MQTTPubSub(PubSub[MQTTPubSubSettings]):
    """Dapr's pubsub.mqtt3 with acks after success, shared subscriptions per app id, and
    stable sessions."""

    FEATURES = frozenset({PubSubFeature.SUBSCRIBE_WILDCARDS})

    def __init__(self) -> None:
        super().__init__()
        self._publisher: mqtt.Connection | None = None
        self._engines = SubscriptionEngines(self)
        self._consumer = ""
        self._instance = ""
        self._closing = False
        self._subscriptions: dict[str, Subscription] = {}

    async def open(self) -> None:
        s = self.settings
        self._closing = False
        self._engines = SubscriptionEngines(self)
        self._subscriptions = {}
        self._consumer = self.consumer_id(s.consumer_id, names="the shared subscriptions")
        self._instance = mqtt.instance_identity(s, self.metadata.name, self._consumer)
        publisher = mqtt.Connection(
            self, s, identifier=mqtt.client_id(self._consumer, self._instance, "pub"), clean=True
        )
        await publisher.start()
        self._publisher = publisher

    async def shut(self) -> None:
        self._closing = True  # subscriptions keep their sessions (and subscriptions)
        try:
            await self._engines.stop()
        finally:
            publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await publisher.close()
            mqtt.release_identity(self._instance, self._consumer)

    async def publish(self, request: PublishRequest) -> None:
        publisher = self.opened(self._publisher)
        if request.metadata:
            self.message_expiry(request)  # validates ttlInSeconds; MQTT 3.1.1 has no expiry
        await self._send(publisher, request.topic, request.data, request.content_type,
                         dict(request.metadata))  # fmt: skip

    async def _send(
        self,
        publisher: mqtt.Connection,
        topic: str,
        data: bytes,
        content_type: str | None,
        metadata: dict[str, str],
    ) -> None:
        retain, carried = self.settings.retain, metadata
        if metadata:
            retain = metadata_flag(
                metadata_value(metadata, "retain"), "retain", default=retain,
                component=self.label, key=topic,
            )  # fmt: skip
            carried = {
                k: v for k, v in metadata.items() if k.lower() not in ("retain", "ttlinseconds")
            }
        await mqtt.publish(
            publisher, self.settings, topic=topic, data=data, qos=self.settings.qos,
            retain=retain, properties=mqtt.publish_properties(self.settings, content_type, carried),
            component=self.label,
        )  # fmt: skip

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        self.opened(self._publisher)
        mqtt.check_filter(request.topic, component=self.label)
        running = self._subscriptions.get(request.topic)
        if running is not None and running.active:
            # A second client with the same id would make the broker drop the first.
            raise InvalidRequestError(
                f"topic {request.topic!r} already has a handler here",
                component=self.label,
                key=request.topic,
            )
        topic_filter = mqtt.shared_filter(self._consumer, request.topic)
        unsubscribe_on_close = metadata_flag(
            metadata_value(request.metadata, "unsubscribeOnClose"), "unsubscribeOnClose",
            default=self.settings.clean_session, component=self.label, key=request.topic,
        )  # fmt: skip
        transport = mqtt.Subscriber(
            self,
            self.settings,
            identifier=mqtt.client_id(
                self._consumer, self._instance, mqtt.topic_hash(request.topic)
            ),
            topic_filter=topic_filter,
            route=request.topic,
            dead_letter=self._dead_letter,
            keep_session=lambda: self._closing and not unsubscribe_on_close,
        )
        await transport.start()
        subscription = self._engines.start(transport, request, _with_real_topic(handler))
        self._subscriptions[request.topic] = subscription
        return subscription

    async def _dead_letter(self, delivery: Delivery, topic: str) -> None:
        m = delivery.message
        metadata = {k: v for k, v in m.metadata.items() if k != mqtt.TOPIC_METADATA}
        await self._send(self.opened(self._publisher), topic, m.data, m.content_type, metadata)


def _with_real_topic(handler: Handler) -> Callable[[Message], Awaitable[None]]:
    """The engine routes by the subscribed filter; the handler sees the published topic."""

    async def handle(message: Message) -> None:
        real = message.metadata.get(mqtt.TOPIC_METADATA) or message.topic
        await handler(
            message if real == message.topic else dataclasses.replace(message, topic=real)
        )

    return handle


__all__ = ["MQTTPubSub", "MQTTPubSubSettings"]
