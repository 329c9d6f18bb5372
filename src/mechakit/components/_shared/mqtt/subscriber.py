"""The delivery engine's ``Transport`` over one subscription's connection."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mechakit.core.component import Component
from mechakit.core.pubsub import Delivery, Message, Transport

from .connection import Connection
from .settings import TOPIC_METADATA, MQTTSettings, plain_filter


def _message_fields(msg: Any) -> tuple[str | None, dict[str, str]]:
    properties = getattr(msg, "properties", None)
    content_type = getattr(properties, "ContentType", None) if properties is not None else None
    metadata = dict(getattr(properties, "UserProperty", None) or []) if properties else {}
    return content_type, metadata


@dataclass(frozen=True)
class Receipt:
    mid: int
    qos: int
    epoch: int


class Subscriber(Transport):
    """One subscription's connection, as the delivery engine sees it.

    Messages arrive through paho's callback into a local queue (the broker's in-flight
    window bounds it for QoS 1). ``retry_later`` puts a failed one back into that queue after
    the delay, still unacked on the broker; one the broker sends again after a reconnect
    while we still hold it is ignored. ``release`` leaves it unacked: the broker sends it
    again when this client id reconnects."""

    def __init__(
        self,
        owner: Component[Any],
        settings: MQTTSettings,
        *,
        identifier: str,
        topic_filter: str,
        route: str,
        dead_letter: Callable[[Delivery, str], Any] | None = None,
        keep_session: Callable[[], bool] = lambda: False,
    ) -> None:
        self._route, self._queue = route, asyncio.Queue[Delivery]()
        self._held: dict[int, Receipt] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._dead_letter, self._keep_session = dead_letter, keep_session
        self.connection = Connection(
            owner,
            settings,
            identifier=identifier,
            clean=settings.clean_session,
            filters=[topic_filter],
            on_message=self._arrived,
        )
        self.source = f"topic {plain_filter(topic_filter)!r}"

    def _arrived(self, msg: Any, epoch: int) -> None:
        held = self._held.get(msg.mid)
        if held is not None and held.epoch == epoch:
            return  # resent after a reconnect while we still hold it
        receipt = Receipt(int(msg.mid), int(msg.qos), epoch)
        if msg.qos:
            self._held[receipt.mid] = receipt
        content_type, metadata = _message_fields(msg)
        metadata[TOPIC_METADATA] = str(msg.topic)
        message = Message(
            topic=self._route,
            data=bytes(msg.payload),
            metadata=metadata,
            content_type=content_type,
            id=uuid.uuid4().hex,
            delivery_count=2 if msg.dup else 1,
        )
        key = f"{epoch}:{receipt.mid}" if msg.qos else message.id
        self._queue.put_nowait(Delivery(message, receipt=receipt, key=key))

    async def start(self) -> None:
        await self.connection.start()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._queue.empty():
            try:
                async with asyncio.timeout(1.0):  # no task of its own, unlike wait_for
                    first = await self._queue.get()
            except TimeoutError:
                return []
        else:
            first = self._queue.get_nowait()
        taken = [first]
        while len(taken) < max_count and not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            receipt: Receipt = d.receipt
            if self._held.get(receipt.mid) == receipt:
                del self._held[receipt.mid]
            self.connection.ack(receipt.mid, receipt.qos, receipt.epoch)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        again = dataclasses.replace(
            delivery,
            message=dataclasses.replace(
                delivery.message, delivery_count=delivery.message.delivery_count + 1
            ),
        )

        async def later() -> None:
            await asyncio.sleep(delay)
            self._queue.put_nowait(again)

        task = asyncio.create_task(later())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        if self._dead_letter is None:
            raise NotImplementedError("no dead-letter topics here")
        await self._dead_letter(delivery, topic)

    async def close(self) -> None:
        for task in list(self._timers):
            task.cancel()
        if not self._keep_session():
            await self.connection.unsubscribe()  # cancelled: the broker keeps nothing for us
        await self.connection.close()
        self._held.clear()
