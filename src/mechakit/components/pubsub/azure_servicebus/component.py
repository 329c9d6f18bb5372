"""The Service Bus drivers: the client, entity management, publishing and the receiver
transport (see the package docstring for the semantics)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from mechakit.core.component import Subscription
from mechakit.core.delivery import SubscriptionEngines
from mechakit.core.errors import (
    BulkError,
    ConnectionFailedError,
    InvalidRequestError,
    MissingDependencyError,
)
from mechakit.core.pubsub import (
    BulkPublisher,
    BulkPublishFailure,
    BulkPublishRequest,
    BulkPublishResponse,
    Delivery,
    Handler,
    Message,
    PublishRequest,
    PubSubFeature,
    SubscribeRequest,
    Transport,
)

from .messages import message_fields, received_message
from .settings import ServiceBusSettings

_RECEIVE_BATCH = 100


class _ServiceBusDriver(BulkPublisher[ServiceBusSettings]):
    """What topics and queues share; ``entity`` says which one a topic maps to."""

    FEATURES = frozenset({PubSubFeature.MESSAGE_TTL})
    entity = "topic"

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._admin: Any = None
        self._credential: Any = None
        self._senders: dict[str, Any] = {}
        self._known: set[str] = set()
        self._entities = asyncio.Lock()
        self._engines = SubscriptionEngines(self)

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        s = self.settings
        kind, value = s.endpoint(self.label)
        self._engines = SubscriptionEngines(self)
        self._senders, self._known = {}, set()
        from azure.servicebus.aio import ServiceBusClient
        from azure.servicebus.aio.management import ServiceBusAdministrationClient

        options: dict[str, Any] = {
            "retry_total": s.publish_max_retries,
            "retry_backoff_factor": s.publish_initial_retry_interval_in_ms / 1000,
        }
        if kind == "connection":
            self._client = ServiceBusClient.from_connection_string(value, **options)
            if not s.disable_entity_management:
                self._admin = ServiceBusAdministrationClient.from_connection_string(value)
            return
        self._credential = azure_credential(self.label)
        self._client = ServiceBusClient(value, self._credential, **options)
        if not s.disable_entity_management:
            self._admin = ServiceBusAdministrationClient(value, self._credential)

    async def shut(self) -> None:
        try:
            await self._engines.stop()
        finally:
            senders, self._senders = list(self._senders.values()), {}
            for closable in (*senders, self._client, self._admin, self._credential):
                if closable is not None:
                    with contextlib.suppress(Exception):
                        await closable.close()
            self._client = self._admin = self._credential = None

    # --- publishing -------------------------------------------------------------------

    async def publish(self, request: PublishRequest) -> None:
        fields = message_fields(request, component=self.label)
        await self._send(request.topic, [fields])

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """Entries go out in ``ServiceBusMessageBatch``es, as many as fit in each; a
        batch that fails to send fails its entries alone."""
        self.require_open()
        accepted, failed = self.prepare_each(
            request, lambda r: message_fields(r, component=self.label)
        )
        if not accepted:
            return BulkPublishResponse(failed=failed)
        sender = await self._sender(request.topic)
        from azure.servicebus import ServiceBusMessage
        from azure.servicebus.exceptions import MessageSizeExceededError

        batch: Any = await sender.create_message_batch()
        ids: list[str] = []
        batches: list[tuple[Any, list[str]]] = []
        for entry_id, fields in accepted:
            message = ServiceBusMessage(**fields)
            try:
                batch.add_message(message)
            except MessageSizeExceededError:
                if not ids:  # too large on its own
                    failed.append(BulkPublishFailure(entry_id, "message too large for a batch"))
                    continue
                batches.append((batch, ids))
                batch, ids = await sender.create_message_batch(), []
                try:
                    batch.add_message(message)
                except MessageSizeExceededError:
                    failed.append(BulkPublishFailure(entry_id, "message too large for a batch"))
                    continue
            ids.append(entry_id)
        if ids:
            batches.append((batch, ids))
        for batch, ids in batches:
            try:
                await sender.send_messages(batch, timeout=self.settings.timeout_in_sec)
            except Exception as exc:
                failed.extend(BulkPublishFailure(i, f"send failed: {exc}") for i in ids)
        return BulkPublishResponse(failed=failed)

    async def _send(self, topic: str, messages: list[dict[str, Any]]) -> None:
        from azure.servicebus import ServiceBusMessage

        sender = await self._sender(topic)
        try:
            await sender.send_messages(
                [ServiceBusMessage(**m) for m in messages], timeout=self.settings.timeout_in_sec
            )
        except Exception as exc:
            raise ConnectionFailedError(
                f"publish to {self.entity} {topic!r} failed: {exc}", component=self.label,
                key=topic,
            ) from exc  # fmt: skip

    async def _sender(self, topic: str) -> Any:
        client = self.opened(self._client)
        await self._ensure_entity(topic)
        if topic not in self._senders:
            if self.entity == "topic":
                self._senders[topic] = client.get_topic_sender(topic_name=topic)
            else:
                self._senders[topic] = client.get_queue_sender(queue_name=topic)
        return self._senders[topic]

    # --- entities ---------------------------------------------------------------------

    def _entity_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {}
        if s.default_message_time_to_live_in_sec is not None:
            options["default_message_time_to_live"] = timedelta(
                seconds=s.default_message_time_to_live_in_sec
            )
        return options

    def _receiver_options(self) -> dict[str, Any]:
        s = self.settings
        options = self._entity_options()
        options["max_delivery_count"] = s.max_deliveries
        if s.lock_duration_in_sec is not None:
            options["lock_duration"] = timedelta(seconds=s.lock_duration_in_sec)
        if s.auto_delete_on_idle_in_sec is not None:
            options["auto_delete_on_idle"] = timedelta(seconds=s.auto_delete_on_idle_in_sec)
        return options

    async def _ensure_entity(self, topic: str) -> None:
        """The topic (or queue) exists after this, unless entities are not managed."""
        if self._admin is None or topic in self._known:
            return
        async with self._entities:
            if topic in self._known:
                return
            if self.entity == "topic":
                await self._create(
                    topic, self._admin.get_topic, self._admin.create_topic, (topic,),
                    self._entity_options(),
                )  # fmt: skip
            else:
                await self._create(
                    topic, self._admin.get_queue, self._admin.create_queue, (topic,),
                    self._receiver_options(),
                )  # fmt: skip
            self._known.add(topic)

    async def _ensure_subscription(self, topic: str, subscription: str) -> None:
        await self._ensure_entity(topic)
        if self._admin is None:
            return
        await self._create(
            topic, self._admin.get_subscription, self._admin.create_subscription,
            (topic, subscription), self._receiver_options(),
        )  # fmt: skip

    async def _create(
        self, topic: str, get: Any, create: Any, names: tuple[str, ...], options: dict[str, Any]
    ) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        what = f"{self.entity} {'/'.join(names)!r}"
        try:
            try:
                await get(*names)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # made meanwhile: fine
                    await create(*names, **options)
        except Exception as exc:
            raise ConnectionFailedError(
                f"cannot find or create {what}: {exc} (set disableEntityManagement to use "
                "existing entities only)",
                component=self.label,
                key=topic,
            ) from exc

    # --- subscribing ------------------------------------------------------------------

    def _open_receiver(self, client: Any, topic: str) -> Any:
        raise NotImplementedError

    async def _prepare(self, topic: str) -> None:
        raise NotImplementedError

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        client = self.opened(self._client)
        await self._prepare(request.topic)
        receiver = self._open_receiver(client, request.topic)
        transport = ReceiverTransport(self, receiver, request.topic)
        return self._engines.start(transport, request, self._bounded(handler))

    def _bounded(self, handler: Handler) -> Handler:
        """``handlerTimeoutInSec``: a handler running longer fails (and is redelivered)."""
        limit = self.settings.handler_timeout_in_sec
        if not limit:
            return handler

        async def bounded(message: Message) -> None:
            try:
                await asyncio.wait_for(handler(message), limit)
            except TimeoutError:
                raise TimeoutError(f"the handler took longer than {limit}s") from None

        return bounded


class ServiceBusTopicsPubSub(_ServiceBusDriver):
    """Dapr's pubsub.azure.servicebus.topics: a subscription per consumerID (the app id)."""

    entity = "topic"

    def subscription_name(self) -> str:
        return self.consumer_id(self.settings.consumer_id, names="the topic subscription")

    async def _prepare(self, topic: str) -> None:
        await self._ensure_subscription(topic, self.subscription_name())

    def _open_receiver(self, client: Any, topic: str) -> Any:
        return client.get_subscription_receiver(
            topic_name=topic, subscription_name=self.subscription_name(), prefetch_count=0
        )


class ServiceBusQueuesPubSub(_ServiceBusDriver):
    """Dapr's pubsub.azure.servicebus.queues: a queue per topic name, shared by all."""

    entity = "queue"

    async def _prepare(self, topic: str) -> None:
        await self._ensure_entity(topic)

    def _open_receiver(self, client: Any, topic: str) -> Any:
        return client.get_queue_receiver(queue_name=topic, prefetch_count=0)


class ReceiverTransport(Transport):
    """A peek-lock receiver; every held message's lock is renewed by ``AutoLockRenewer``."""

    def __init__(self, pubsub: _ServiceBusDriver, receiver: Any, topic: str) -> None:
        from azure.servicebus.aio import AutoLockRenewer

        self.source = f"{pubsub.entity} {topic!r}"
        self._pubsub, self._receiver, self._topic = pubsub, receiver, topic
        timeout = pubsub.settings.handler_timeout_in_sec
        self._renewer = AutoLockRenewer(
            max_lock_renewal_duration=timeout + 300 if timeout else 7 * 86400,
            on_lock_renew_failure=self.lock_lost,
        )
        self._held: dict[str, Any] = {}
        """The latest received copy of each unsettled message, by message id."""
        self._lost: set[str] = set()
        self._waits: dict[str, tuple[asyncio.Task[None], Any]] = {}

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        msgs = await self._receiver.receive_messages(
            max_message_count=min(max_count, _RECEIVE_BATCH), max_wait_time=1.0
        )
        deliveries = []
        for msg in msgs:
            self._renewer.register(self._receiver, msg)
            message = received_message(self._topic, msg)
            again = message.id in self._held  # its lock was lost while held here
            self._held[message.id] = msg
            self._lost.discard(message.id)
            if not again:
                deliveries.append(Delivery(message, receipt=msg))
        return deliveries

    async def lock_lost(self, renewable: Any, error: Exception | None) -> None:
        """AutoLockRenewer's failure callback: the broker will deliver it again; settling
        the copy held here will fail and is logged by the engine."""
        message_id = str(getattr(renewable, "message_id", "") or "")
        if message_id not in self._held:
            return  # settled meanwhile
        self._lost.add(message_id)
        self._pubsub.log.warning(
            "%s: could not renew the lock of message %s of %s: %s; Service Bus will deliver "
            "it again",
            self._pubsub.label,
            message_id,
            self.source,
            error or "the lock expired",
        )

    @property
    def lost(self) -> frozenset[str]:
        return frozenset(self._lost)

    def _take(self, delivery: Delivery) -> Any:
        self._lost.discard(delivery.message.id)
        return self._held.pop(delivery.message.id, delivery.receipt)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        msgs = [self._take(d) for d in deliveries]
        results = await asyncio.gather(
            *(self._receiver.complete_message(m) for m in msgs), return_exceptions=True
        )
        errors = {
            d.key: r for d, r in zip(deliveries, results, strict=True) if isinstance(r, Exception)
        }
        if errors:
            raise BulkError(errors, component=self._pubsub.label)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        """Keeps the lock (renewed) for ``delay``, then abandons: Service Bus has no
        delayed abandon, and an immediate one would redeliver at once."""
        msg = self._take(delivery)
        key = delivery.message.id

        async def later() -> None:
            await asyncio.sleep(delay)
            if self._waits.pop(key, None) is not None:
                await self._abandon(msg)

        self._waits[key] = (asyncio.create_task(later(), name=f"retry {key}"), msg)

    async def _abandon(self, msg: Any) -> None:
        with contextlib.suppress(Exception):  # a lost lock: redelivered anyway
            await self._receiver.abandon_message(msg)

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        m = delivery.message
        copy = PublishRequest(
            topic=topic,
            data=m.data,
            content_type=m.content_type,
            metadata={k: v for k, v in m.metadata.items() if not k.startswith("metadata.")},
        )
        try:
            fields = message_fields(copy, component=self._pubsub.label)
        except InvalidRequestError:
            fields = {"body": m.data, "content_type": m.content_type}
        await self._pubsub._send(topic, [fields])

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await self._abandon(self._take(d))

    async def close(self) -> None:
        waits, self._waits = list(self._waits.values()), {}
        for task, _msg in waits:
            task.cancel()
        await asyncio.gather(*(task for task, _msg in waits), return_exceptions=True)
        for _task, msg in waits:  # given back now rather than after their delay
            await self._abandon(msg)
        for msg in list(self._held.values()):
            await self._abandon(msg)
        self._held.clear()
        with contextlib.suppress(Exception):
            await self._renewer.close()
        with contextlib.suppress(Exception):
            await self._receiver.close()


def azure_credential(component: str) -> Any:
    """Azure AD credentials for ``namespaceName`` (azure-identity's default chain)."""
    try:
        from azure.identity.aio import DefaultAzureCredential  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDependencyError(
            "metadata 'namespaceName' (Azure AD) needs the azure-identity package: "
            "pip install azure-identity, or give a connectionString",
            component=component,
            field="namespaceName",
        ) from None
    return DefaultAzureCredential()


__all__ = ["ReceiverTransport", "ServiceBusQueuesPubSub", "ServiceBusTopicsPubSub"]
