"""bindings.rabbitmq: Dapr's RabbitMQ binding, input and output on one queue (aio-pika).

Output: ``create`` sends the data to ``queueName`` through the default exchange, with the
component's ``contentType``; request metadata ``ttlInSeconds`` sets the message's expiry
and ``priority`` its priority (with a ``maxPriority`` queue); any other request metadata
travels as message headers. The broker confirms every send, so a create that returns is
on the broker; a create while the broker is unreachable waits a few ``reconnectWait`` and
then fails with ``ConnectionFailedError``.

Input: ``read`` consumes the queue; an event is acked only after the handler returned; a
failed one is requeued after a doubling delay until it succeeds (as upstream, which
requeues at once); what a killed instance held unacked goes back to the queue for another.
The queue (``durable``, ``deleteWhenUnused``, ``exclusive``, ``ttlInSeconds`` as the
queue's message TTL, ``maxPriority``) is declared on every (re)connection, so reading
resumes after a broker restart (see ``_shared.rabbitmq``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Annotated, Any

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
    declare_queue,
)
from mechakit.core.bindings import (
    BindingReads,
    BrokerReadSettings,
    InputBinding,
    InputHandler,
    InvokeRequest,
    InvokeResponse,
    OperationKind,
    OutputBinding,
)
from mechakit.core.component import Subscription
from mechakit.core.errors import InvalidRequestError
from mechakit.core.metadata import Bool, Duration, setting
from mechakit.core.pubsub import Delivery
from mechakit.core.state import parse_ttl

_ROUTE = BindingReads.ROUTE


class RabbitMQBindingSettings(RabbitMQConnectionSettings, BrokerReadSettings):
    queue_name: str = setting(..., description="The queue to send to and read from.")
    durable: Bool = setting(False, description="The queue survives a broker restart.")
    delete_when_unused: Bool = setting(
        False, description="The queue is deleted when its last consumer goes."
    )
    exclusive: Bool = setting(False, description="Only this connection may use the queue.")
    ttl_in_seconds: Annotated[int, Field(ge=1)] | None = setting(
        None, description="Message TTL of the queue (x-message-ttl), in seconds."
    )
    max_priority: Annotated[int, Field(ge=1, le=255)] | None = setting(
        None, description="Makes the queue a priority queue with priorities 0 to this."
    )
    prefetch_count: Annotated[int, Field(ge=0)] = setting(
        0, description="Unacked events at most (0: twice concurrency, 10 or more)."
    )
    content_type: str = setting("text/plain", description="Content type of sent messages.")
    reconnect_wait: Duration = reconnect_wait_setting(
        "reconnectWait", ("reconnectWaitInSeconds",), 5.0
    )
    delivery_mode: Annotated[int, Field(ge=0, le=2)] = setting(
        0, description="2: persistent messages (written to disk); 0 or 1: transient."
    )

    def queue_spec(self) -> QueueSpec:
        arguments: dict[str, Any] = {}
        if self.ttl_in_seconds:
            arguments["x-message-ttl"] = self.ttl_in_seconds * 1000
        if self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        return QueueSpec(
            name=self.queue_name,
            durable=self.durable,
            auto_delete=self.delete_when_unused,
            exclusive=self.exclusive,
            arguments=arguments,
        )


class RabbitMQBinding(
    OutputBinding[RabbitMQBindingSettings], InputBinding[RabbitMQBindingSettings]
):
    def __init__(self) -> None:
        super().__init__()
        self._amqp: AmqpConnection | None = None
        self._publisher: Publisher | None = None
        self._reads = BindingReads(self)

    async def open(self) -> None:
        s = self.settings
        name = s.client_name or f"dapr-{self.metadata.app_id or self.metadata.name}"
        self._amqp = AmqpConnection(
            s.url(self.label),
            label=self.label,
            log=self.log,
            reconnect_wait=s.reconnect_wait.total_seconds(),
            properties=client_properties(name),
            heartbeat=s.heart_beat.total_seconds(),
        )
        await self._amqp.open()
        self._publisher = Publisher(self._amqp, label=self.label, confirm=True)
        connection = await self._amqp.connection(within=5.0)
        channel = await connection.channel()
        try:  # a queue the broker refuses (other arguments) fails init, not the first use
            await declare_queue(channel, s.queue_spec())
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def shut(self) -> None:
        try:
            await self._reads.stop()
        finally:
            publisher, amqp = self._publisher, self._amqp
            self._publisher, self._amqp = None, None
            if publisher is not None:
                with contextlib.suppress(Exception):
                    await publisher.close()
            if amqp is not None:
                await amqp.close()

    def operations(self) -> Sequence[str]:
        return (OperationKind.CREATE,)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        self.check_operation(request)
        publisher = self.opened(self._publisher)
        s = self.settings
        try:
            ttl = parse_ttl(request.metadata)
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                exc.reason, component=self.label, key=s.queue_name, field="ttlInSeconds"
            ) from None
        message = outgoing_message(
            request.data,
            content_type=s.content_type,
            metadata=request.metadata,
            ttl=ttl,
            delivery_mode=s.delivery_mode,
            label=self.label,
            key=s.queue_name,
        )
        spec = s.queue_spec()

        async def declare(channel: Any) -> Any:
            await declare_queue(channel, spec)  # again after a reconnection: it may be new
            return channel.default_exchange

        await publisher.publish("", s.queue_name, message, declare=declare, key=s.queue_name)
        return InvokeResponse()

    async def read(self, handler: InputHandler) -> Subscription:
        amqp = self.opened(self._amqp)
        s = self.settings
        prefetch = s.prefetch_count or max(s.concurrency * 2, 10)
        policy = s.read_policy(prefetch=prefetch, redelivery_delay=0.5)

        async def no_dead_letter(delivery: Delivery, topic: str) -> None:
            raise AssertionError("bindings.rabbitmq has no dead-letter topic")

        consumer = QueueConsumer(
            amqp, s.queue_spec(), ConsumerOptions(prefetch=policy.room), topic=_ROUTE,
            label=self.label, log=self.log, dead_letter=no_dead_letter,
        )  # fmt: skip
        try:
            await consumer.start()
        except BaseException:
            await consumer.close()
            raise
        return self._reads.start(consumer, policy, handler)


__all__ = ["RabbitMQBinding", "RabbitMQBindingSettings"]
