"""bindings.mqtt3: Dapr's MQTT binding, input and output, on aiomqtt.

Output: ``create`` publishes the data to ``topic`` (request metadata ``topic`` overrides it
per request, ``retain`` overrides the component's ``retain``), waiting for the broker's
PUBACK at QoS 1.

Input: ``read`` subscribes ``topic`` (wildcards allowed) as the shared subscription
``$share/<consumerID>/<topic>`` (a topic already ``$share/...`` is kept), so instances of one
app share the events; each event carries the metadata ``topic`` it was published on. An
event is acked only after the handler returned; a failed one is handed over again after a
doubling delay (``backOffMaxRetries``, -1 by default: until it succeeds, then dropped with
an error log), and what a killed instance left unacked goes to its successor, as for
pubsub.mqtt3 (stable client ids, persistent sessions: ``mechakit.components._shared.mqtt``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mechakit.components._shared import mqtt
from mechakit.components._shared.requests import metadata_flag, metadata_value
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
from mechakit.core.errors import InvalidRequestError
from mechakit.core.metadata import setting

_ROUTE = BindingReads.ROUTE


class MQTTBindingSettings(mqtt.MQTTSettings, RetriedReadSettings):
    topic: str = setting(..., description="Topic to publish to and read from.", example="orders")


class MQTTBinding(OutputBinding[MQTTBindingSettings], InputBinding[MQTTBindingSettings]):
    def __init__(self) -> None:
        super().__init__()
        self._publisher: mqtt.Connection | None = None
        self._reads = BindingReads(self)
        self._consumer = ""
        self._instance = ""
        self._closing = False

    async def open(self) -> None:
        s = self.settings
        self._closing = False
        mqtt.check_filter(s.topic, component=self.label)
        self._consumer = s.consumer_id or self.metadata.app_id or self.metadata.name
        self._instance = mqtt.instance_identity(s, self.metadata.name, self._consumer)
        publisher = mqtt.Connection(
            self, s, identifier=mqtt.client_id(self._consumer, self._instance, "pub"), clean=True
        )
        await publisher.start()
        self._publisher = publisher

    async def shut(self) -> None:
        self._closing = True
        try:
            await self._reads.stop()
        finally:
            publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await publisher.close()
            mqtt.release_identity(self._instance, self._consumer)

    def operations(self) -> Sequence[str]:
        return (OperationKind.CREATE,)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        self.check_operation(request)
        publisher = self.opened(self._publisher)
        topic = metadata_value(request.metadata, "topic") or self.settings.topic
        if "+" in topic or "#" in topic or topic.startswith("$share/"):
            raise InvalidRequestError(
                f"cannot publish to {topic!r}: no wildcards or $share in a topic name",
                component=self.label,
                key=topic,
                field="topic",
            )
        retain = metadata_flag(
            metadata_value(request.metadata, "retain"), "retain", default=self.settings.retain,
            component=self.label, key=topic,
        )  # fmt: skip
        await mqtt.publish(
            publisher, self.settings, topic=topic, data=request.data, qos=self.settings.qos,
            retain=retain, component=self.label,
        )  # fmt: skip
        return InvokeResponse()

    async def read(self, handler: InputHandler) -> Subscription:
        self.require_open()
        if self._reads.reading:
            # A second client with the same id would make the broker drop the first.
            raise InvalidRequestError(
                "this binding is already being read; cancel that read first",
                component=self.label,
            )
        s = self.settings
        topic_filter = mqtt.shared_filter(self._consumer, s.topic)
        transport = mqtt.Subscriber(
            self,
            s,
            identifier=mqtt.client_id(self._consumer, self._instance, mqtt.topic_hash(s.topic)),
            topic_filter=topic_filter,
            route=_ROUTE,
            keep_session=lambda: self._closing and not s.clean_session,
        )
        await transport.start()
        policy = s.read_policy(prefetch=10, redelivery_delay=0.5)
        return self._reads.start(transport, policy, handler)


__all__ = ["MQTTBinding", "MQTTBindingSettings"]
