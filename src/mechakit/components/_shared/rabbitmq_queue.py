"""A RabbitMQ queue as the delivery engine's ``Transport``, for pubsub.rabbitmq (a queue per
app id and topic) and bindings.rabbitmq (one named queue).

The consumer has a channel of its own and declares its queue (with exchange, bindings and
dead-letter queue) on every connection ``AmqpConnection`` makes, so consuming starts once
the broker is reachable and resumes after every restart. Deliveries of a dead channel are
the broker's again (it requeues them): they are never acked on a newer channel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechakit.components._shared.rabbitmq import (
    AmqpConnection,
    Log,
    is_connection_error,
    when_closed,
)
from mechakit.core.errors import BulkError, ComponentError
from mechakit.core.pubsub import Delivery, Message, Transport

_READY_WITHIN = 10.0
"""Seconds a consumer started while connected waits for its queue to be declared."""
_COUNTED = 10_000
"""Failed deliveries remembered by message id (classic queues count none themselves)."""
_NO_HEADERS: Mapping[str, Any] = types.MappingProxyType({})


@dataclass(frozen=True)
class QueueSpec:
    """What a consumer declares on every (re)connection."""

    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    exchange: str = ""
    """The exchange to bind to ('': none, e.g. a binding's queue)."""
    exchange_kind: str = "fanout"
    exchange_durable: bool = False
    exchange_auto_delete: bool = False
    routing_keys: tuple[str, ...] = ("",)
    dead_letter_exchange: str = ""
    """Declared (fanout, durable) with ``dead_letter_queue`` bound, before the queue."""
    dead_letter_queue: str = ""


@dataclass(frozen=True)
class ConsumerOptions:
    prefetch: int
    max_deliveries: int = 0
    """With ``dead_letter_on_give_up``: a failure at this delivery is rejected to the queue's
    dead-letter exchange instead of requeued."""
    dead_letter_on_give_up: bool = False
    properties_to_metadata: bool = False


async def declare_queue(channel: Any, spec: QueueSpec) -> Any:
    """Declares ``spec``'s dead-letter exchange and queue, the queue, its exchange and the
    bindings (idempotent: run on every new channel); returns the queue."""
    import aio_pika

    if spec.dead_letter_exchange:
        dlx = await channel.declare_exchange(
            spec.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True,
            auto_delete=spec.auto_delete,
        )  # fmt: skip
        dlq = await channel.declare_queue(
            spec.dead_letter_queue, durable=True, auto_delete=spec.auto_delete,
            arguments={"x-queue-mode": "lazy"},
        )  # fmt: skip
        await dlq.bind(dlx, "")
    queue = await channel.declare_queue(
        spec.name, durable=spec.durable, auto_delete=spec.auto_delete,
        exclusive=spec.exclusive, arguments=dict(spec.arguments) or None,
    )  # fmt: skip
    if spec.exchange:
        exchange = await channel.declare_exchange(
            spec.exchange, aio_pika.ExchangeType(spec.exchange_kind),
            durable=spec.exchange_durable, auto_delete=spec.exchange_auto_delete,
        )  # fmt: skip
        for key in spec.routing_keys:
            await queue.bind(exchange, key)
    return queue


class QueueConsumer(Transport):
    """The engine's view of one queue: consumes on a channel of its own, re-made (with the
    queue) on every new connection; what was in flight on a dead channel is the broker's
    again and is not acked here."""

    def __init__(
        self,
        amqp: AmqpConnection,
        spec: QueueSpec,
        options: ConsumerOptions,
        *,
        topic: str,
        label: str,
        log: Log,
        dead_letter: Callable[[Delivery, str], Any],
    ) -> None:
        self.topic = topic
        self.source = f"queue {spec.name!r}"
        self._amqp, self._spec, self._options = amqp, spec, options
        self._label, self._log, self._dead_letter = label, log, dead_letter
        self._inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._generation = 0
        self._channel: Any = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._later: set[asyncio.Task[None]] = set()
        self._failures: collections.OrderedDict[str, int] = collections.OrderedDict()

    async def start(self) -> None:
        """Starts consuming in the background; while the broker is reachable waits for the
        queue to be declared (a declaration the broker refuses is raised here)."""
        up = self._amqp.is_up
        self._task = asyncio.create_task(self._consume_forever(), name=f"{self._label} consume")
        if not up:
            self._log.warning(
                "%s: RabbitMQ is not reachable; %s starts consuming once it is",
                self._label,
                self.source,
            )
            return
        waiter = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=_READY_WITHIN, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if self._task in done:
            self._task.result()

    async def _consume_forever(self) -> None:
        first = True
        while True:
            connection = await self._amqp.connection()
            try:
                channel = await self._declare(connection)
            except Exception as exc:
                refused = not is_connection_error(exc)
                if first and refused:
                    raise ComponentError(
                        f"RabbitMQ refused to declare {self.source}: {exc}",
                        component=self._label,
                        key=self.topic,
                    ) from exc
                self._log.warning(
                    "%s: could not set up %s: %s; retrying", self._label, self.source, exc
                )
                await asyncio.sleep(self._amqp.reconnect_wait)
                continue
            first = False
            gone = when_closed(channel)
            self._ready.set()
            await gone
            self._ready.clear()
            self._generation += 1  # what the dead channel delivered is redelivered
            while not self._inbox.empty():
                self._inbox.get_nowait()

    async def _declare(self, connection: Any) -> Any:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=self._options.prefetch)
            queue = await declare_queue(channel, self._spec)
            generation = self._generation

            async def on_message(message: Any) -> None:
                self._inbox.put_nowait((generation, message))

            await queue.consume(on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._channel = channel
        return channel

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._inbox.empty():
            try:
                async with asyncio.timeout(1.0):  # no task of its own, unlike wait_for
                    first = await self._inbox.get()
            except TimeoutError:
                return []
        else:
            first = self._inbox.get_nowait()
        got = [first]
        while len(got) < max_count and not self._inbox.empty():
            got.append(self._inbox.get_nowait())
        return [self._delivery(g, m) for g, m in got if g == self._generation]

    def _delivery(self, generation: int, msg: Any) -> Delivery:
        headers = msg.headers or _NO_HEADERS
        count = 1
        if isinstance(headers.get("x-delivery-count"), int):  # quorum queues count
            count = int(headers["x-delivery-count"]) + 1
        elif self._failures:
            count = self._failures.get(_identity(msg), 0) + 1
        if msg.redelivered:
            count = max(count, 2)
        metadata: Mapping[str, str] = _NO_HEADERS
        if headers or self._options.properties_to_metadata:
            found = {str(k): _text(v) for k, v in headers.items() if not str(k).startswith("x-")}
            if self._options.properties_to_metadata:
                found.update(_properties(msg))
            metadata = types.MappingProxyType(found)
        message = Message(
            topic=self.topic,
            data=bytes(msg.body),
            metadata=metadata,
            content_type=msg.content_type or None,
            id=str(msg.message_id or msg.delivery_tag),
            delivery_count=count,
        )
        return Delivery(message, receipt=(generation, msg), key=f"{generation}:{msg.delivery_tag}")

    def _live(self, delivery: Delivery) -> Any:
        generation, msg = delivery.receipt
        return msg if generation == self._generation else None

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if self._failures:
            for delivery in deliveries:
                self._failures.pop(_identity(delivery.receipt[1]), None)
        failed: dict[str, Exception] = {}
        for delivery in deliveries:
            msg = self._live(delivery)
            if msg is None:
                continue
            try:  # an ack has no reply: queued for the channel's writer, not waited for
                await msg.channel.basic_ack(msg.delivery_tag, wait=False)
            except Exception as exc:
                failed[delivery.key] = exc
        if failed:
            raise BulkError(failed, component=self._label)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        msg = self._live(delivery)
        if msg is None:
            return
        options = self._options
        given_up = (
            options.dead_letter_on_give_up
            and options.max_deliveries
            and delivery.message.delivery_count >= options.max_deliveries
        )
        identity = _identity(msg)
        if given_up:
            self._failures.pop(identity, None)
            self._log.warning(
                "%s: message %s of %s goes to dead-letter exchange %r",
                self._label, delivery.message.id, self.source, self._spec.dead_letter_exchange,
            )  # fmt: skip
            await msg.reject(requeue=False)
            return
        self._failures[identity] = delivery.message.delivery_count
        self._failures.move_to_end(identity)
        while len(self._failures) > _COUNTED:
            self._failures.popitem(last=False)

        async def later() -> None:
            await asyncio.sleep(delay)  # held unacked meanwhile: a crash hands it on
            if self._live(delivery) is not None:
                await msg.nack(requeue=True)

        task = asyncio.create_task(later())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        await self._dead_letter(delivery, topic)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            msg = self._live(delivery)
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nack(requeue=True)

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._later) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        channel, self._channel = self._channel, None
        self._generation += 1
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()  # the broker requeues whatever is still unacked


def _identity(msg: Any) -> str:
    return str(msg.message_id or hashlib.sha1(bytes(msg.body)).hexdigest())


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def _properties(msg: Any) -> dict[str, str]:
    """Upstream's ``publishMessagePropertiesToMetadata``: properties and headers as
    ``metadata.<name>``."""
    found = {
        "metadata.messageid": msg.message_id,
        "metadata.correlationid": msg.correlation_id,
        "metadata.type": msg.type,
        "metadata.contenttype": msg.content_type,
    }
    out = {k: str(v) for k, v in found.items() if v}
    for key, value in dict(msg.headers or {}).items():
        if value is not None:
            out[f"metadata.{key}"] = _text(value)
    return out


__all__ = ["ConsumerOptions", "QueueConsumer", "QueueSpec", "declare_queue"]
