"""The consumer's SQS queue as the delivery engine's transport, and one topic's route on it."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mechakit.components._shared.aws import call, map_error
from mechakit.core.component import Subscription, stop_tasks
from mechakit.core.delivery import DeliveryPolicy
from mechakit.core.errors import BulkError, ComponentError
from mechakit.core.pubsub import Delivery, Transport

from .entities import Entities, Queue
from .messages import Envelope
from .settings import SnsSqsSettings


class TopicSubscription(Subscription):
    """One topic's route on the queue's engine; the queue keeps receiving its messages."""

    def __init__(self, queue: QueueTransport, topic_arn: str, route: Subscription) -> None:
        self._queue = queue
        self._topic_arn = topic_arn
        self._route = route
        self._cancelled = False

    @property
    def active(self) -> bool:
        return not self._cancelled and self._route.active

    async def cancel(self) -> None:
        """From now on this topic's messages wait in the queue until it has a handler again."""
        if not self._cancelled:
            self._cancelled = True
            self._queue.topics.pop(self._topic_arn, None)
        await self._route.cancel()


class QueueTransport(Transport):
    """This consumer's SQS queue: long polls in a thread of its own, deletes, visibility.

    Messages being handled are kept invisible (renewed every half visibility timeout), so a
    slow handler gets no duplicate; a message of a topic without a handler is not deleted but
    made visible again after its receive count in seconds.
    """

    def __init__(
        self,
        entities: Entities,
        queue: Queue,
        *,
        forget: Callable[[QueueTransport], None],
    ) -> None:
        self.source = f"SQS queue {queue.name!r}"
        self.topics: dict[str, str] = {}
        """Topic ARN → the topic name as subscribed, for the topics with a handler."""
        self._entities = entities
        self._queue = queue
        self._sqs = entities.sqs
        self._label = entities.label
        self._log = entities.log
        self._forget = forget
        """Called once closed: the component then makes a new transport for a new subscriber."""
        self._held: dict[str, Delivery] = {}
        """Received and not yet settled, by SQS message id: kept invisible."""
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"sqs-poll-{queue.name}")
        self._poll: asyncio.Future[Any] | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"renew {self.source}")
        reply = await self._receive(min(max_count, self._entities.settings.message_max_number))
        return await self._accept(reply.get("Messages") or [])

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """DeleteMessageBatch, ten at a time; failures are reported per message."""
        for delivery in deliveries:
            self._held.pop(delivery.key, None)
        failed: dict[str, Exception] = {}
        for start in range(0, len(deliveries), 10):
            batch = deliveries[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(batch)]
            try:
                reply = await call(
                    self._sqs.delete_message_batch,
                    component=self._label,
                    action=f"delete messages from SQS queue {self._queue.name!r}",
                    QueueUrl=self._queue.url,
                    Entries=entries,
                )
            except Exception as exc:
                failed.update((d.key, exc) for d in batch)
                continue
            for item in reply.get("Failed") or []:
                reason = str(item.get("Message") or item.get("Code"))
                failed[batch[int(item["Id"])].key] = ComponentError(reason, component=self._label)
        if failed:
            raise BulkError(failed, component=self._label)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        self._held.pop(delivery.key, None)
        await self._set_visibility([(delivery.receipt, math.ceil(delay))])

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        """Publishes a copy (metadata and content type too), in the message's FIFO group."""
        message = delivery.message
        await self._entities.send(
            topic, message.data, message.content_type, message.metadata, delivery.ordering_key
        )

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._held.pop(delivery.key, None)
        await self._set_visibility([(d.receipt, 0) for d in deliveries])

    async def close(self) -> None:
        try:
            await self._give_back_last_poll()
            left, self._held = list(self._held.values()), {}
            await self._set_visibility_or_log([(d.receipt, 0) for d in left])
        finally:
            if self._renewer is not None:
                await stop_tasks(self._renewer)
            self._poller.shutdown(wait=False, cancel_futures=True)
            self._forget(self)

    async def _receive(self, count: int) -> Any:
        settings = self._entities.settings
        loop = asyncio.get_running_loop()
        self._poll = loop.run_in_executor(
            self._poller,
            functools.partial(
                self._sqs.receive_message,
                QueueUrl=self._queue.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=settings.message_wait_time_seconds,
                VisibilityTimeout=settings.message_visibility_timeout,
                AttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
                MessageAttributeNames=["All"],
            ),
        )
        try:
            result = await asyncio.shield(self._poll)  # cut short: close() gives it back
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._poll = None
            raise map_error(
                exc, component=self._label, action=f"receive from SQS queue {self._queue.name!r}"
            ) from exc
        self._poll = None
        return result

    async def _give_back_last_poll(self) -> None:
        """Waits for a poll cut short by stopping and makes what it got visible again."""
        poll, self._poll = self._poll, None
        if poll is None:
            return
        wait = self._entities.settings.message_wait_time_seconds + 5
        try:
            reply = await asyncio.wait_for(asyncio.shield(poll), wait)
        except Exception:
            return
        receipts = [m["ReceiptHandle"] for m in reply.get("Messages") or []]
        await self._set_visibility_or_log([(r, 0) for r in receipts])

    async def _accept(self, messages: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        bounce: list[tuple[str, int]] = []
        vis = self._entities.settings.message_visibility_timeout
        for raw in messages:
            attributes = raw.get("Attributes") or {}
            count = max(int(attributes.get("ApproximateReceiveCount", 1)), 1)
            sqs_id = str(raw.get("MessageId", ""))
            receipt = str(raw["ReceiptHandle"])
            held = self._held.get(sqs_id)
            if held is not None:
                held.receipt = receipt  # received again while still being handled here
                continue
            envelope = Envelope.parse(str(raw.get("Body", "")))
            topic = self.topics.get(envelope.topic_arn) if envelope is not None else None
            if envelope is None or topic is None:
                if envelope is None:
                    self._log.warning(
                        "%s: message %s in SQS queue %r is not an SNS notification (raw "
                        "delivery on, or sent to the queue directly); it is left to the "
                        "queue's redrive policy",
                        self._label,
                        sqs_id,
                        self._queue.name,
                    )
                bounce.append((receipt, min(count, vis)))
                continue
            delivery = Delivery(
                envelope.message(topic, count),
                receipt=receipt,
                ordering_key=attributes.get("MessageGroupId"),
                key=sqs_id,
            )
            self._held[sqs_id] = delivery
            deliveries.append(delivery)
        # Held before this await: if stopping cuts it short, close() gives them back.
        await self._set_visibility_or_log(bounce)
        return deliveries

    async def _renew_loop(self) -> None:
        """Keeps held messages invisible, so a slow handler does not get a duplicate."""
        vis = self._entities.settings.message_visibility_timeout
        every = max(vis / 2, 0.5)
        while True:
            await asyncio.sleep(every)
            await self._set_visibility_or_log([(d.receipt, vis) for d in self._held.values()])

    async def _set_visibility(self, changes: Sequence[tuple[str, int]]) -> None:
        for start in range(0, len(changes), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                for i, (receipt, seconds) in enumerate(changes[start : start + 10])
            ]
            await call(
                self._sqs.change_message_visibility_batch,
                component=self._label,
                action=f"change message visibility in SQS queue {self._queue.name!r}",
                QueueUrl=self._queue.url,
                Entries=entries,
            )

    async def _set_visibility_or_log(self, changes: Sequence[tuple[str, int]]) -> None:
        try:
            await self._set_visibility(changes)
        except Exception as exc:
            self._log.warning(
                "%s: could not change the visibility of %d message(s) in SQS queue %r: %s",
                self._label,
                len(changes),
                self._queue.name,
                exc,
            )


def delivery_policy(settings: SnsSqsSettings) -> DeliveryPolicy:
    """Redelivery after 1, 2, 4… s (at most the visibility timeout) after a failure.

    ApproximateReceiveCount also counts receives of a topic without a handler, so a message
    is never given up before its handler saw it; with a dead-letter queue, or when failed
    messages are kept, the queue's redrive policy (or nothing) ends its retries.
    """
    visibility = float(settings.message_visibility_timeout)
    return DeliveryPolicy(
        concurrency=settings.max_in_flight,
        max_deliveries=settings.message_retry_limit + 1,
        redelivery_delay=1.0,
        max_redelivery_delay=visibility,
        drop_exhausted=not (
            settings.sqs_dead_letters_queue_name or settings.disable_delete_on_retry_limit
        ),
        give_up_on_receive=False,
        stop_grace=visibility,
    )


__all__ = ["QueueTransport", "TopicSubscription", "delivery_policy"]
