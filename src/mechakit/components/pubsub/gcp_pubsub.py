"""pubsub.gcp.pubsub: Google Cloud Pub/Sub, a subscription per (consumer id, topic).

Every subscription is ``<consumerID>-<topic>`` (consumerID defaults to the app id), so the
instances of one app id share the work and different app ids each get every message.
Topics and subscriptions are created on first use unless ``disableEntityManagement``.
``endpoint`` names an emulator (as ``PUBSUB_EMULATOR_HOST`` does): then no credentials are
used; otherwise the service-account fields, else the SDK's default credentials.

Delivery bridges the SDK's streaming pull, whose callbacks run on the SDK's threads, into
the shared engine (``mechakit.core.delivery``): the callback only hands the message to the
event loop, where the engine calls the handler. While a message is held, the SDK's lease
management keeps extending its ack deadline (``ackDeadline`` is the subscription's, the
deadline a crashed consumer's messages come back after), within ``maxOutstandingMessages``
/ ``maxOutstandingBytes``. Acks go out only after the handler returned; a failed message
is dropped from lease management with its deadline set to the engine's doubling delay, so
Pub/Sub redelivers it then (one with an ordering key is nacked at once instead: Pub/Sub
then redelivers it and the later messages of its key in order; the emulator does not keep
that order on redelivery). ``Message.delivery_count`` is Pub/Sub's delivery attempt where
the subscription has a dead-letter policy, else counted here.

Dead letters: ``deadLetterTopic`` + ``maxDeliveryAttempts`` become the subscription's own
dead-letter policy (covering messages whose consumers died), and the engine moves a message
whose handler failed ``maxDeliveryAttempts`` times there itself (the emulator stores the
policy but does not forward). Without a dead-letter topic a failing message keeps being
redelivered, as upstream. ``enableMessageOrdering`` orders by the publish metadata
``orderingKey`` (default: the ``orderingKey`` setting): the engine handles one message of
a key at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import types
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field

from mechakit.components._shared.gcp import GcpSettings
from mechakit.core.component import Subscription
from mechakit.core.delivery import (
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
    dead_letter_topic_setting,
)
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
)
from mechakit.core.metadata import Bool, ByteSize, Duration, setting
from mechakit.core.pubsub import (
    Delivery,
    Handler,
    Message,
    PublishRequest,
    PubSub,
    SubscribeRequest,
    Transport,
    consumer_id_setting,
)

ORDERING_KEY = "orderingKey"
"""Publish metadata: the message's ordering key (with enableMessageOrdering)."""
_CONTENT_TYPE = "Content-Type"
"""The attribute carrying a message's content type."""
_UNLIMITED = 2**31 - 1
_DEFAULT_OUTSTANDING = 1000
_CALL_TIMEOUT = 30.0


class GCPPubSubSettings(GcpSettings, DeliverySettings):
    consumer_id: str = consumer_id_setting(
        description="First part of each subscription's name, <consumerID>-<topic> (default: the app id)."
    )
    endpoint: str = setting(
        "", description="Pub/Sub emulator host:port (no credentials are used).",
        example="localhost:8085",
    )  # fmt: skip
    enable_message_ordering: Bool = setting(
        False, description="Create subscriptions ordered by key, and publish with ordering keys."
    )
    ordering_key: str = setting(
        "", description="Ordering key of published messages whose metadata names none."
    )
    disable_entity_management: Bool = setting(
        False, description="Use existing topics and subscriptions only; never create them."
    )
    dead_letter_topic: str = dead_letter_topic_setting(
        description=(
            "Dead-letter topic: set as the subscription's dead-letter policy, and the default "
            "of subscriptions that name none. Empty: failing messages keep being redelivered."
        )
    )
    max_deliveries: Annotated[int, Field(ge=1)] = setting(
        5,
        name="maxDeliveryAttempts",
        aliases=("maxDeliveries", "maxDeliveryCount"),
        description="Deliveries before a message goes to the dead-letter topic (5 to 100).",
        example="5",
    )
    ack_deadline: Duration = setting(
        timedelta(seconds=20),
        description=(
            "The subscription's ack deadline (10s to 600s): extended while a handler runs; "
            "a crashed consumer's messages are redelivered after it."
        ),
        example="20s",
    )
    max_outstanding_messages: int = setting(
        0, description="Messages held unacked per subscription (0: 1000, negative: no limit)."
    )
    max_outstanding_bytes: ByteSize = setting(
        0, description="Bytes held unacked per subscription (0: 100MiB, negative: no limit)."
    )
    max_concurrent_connections: int = setting(
        0, description="Accepted for compatibility; one stream per subscription is opened."
    )
    max_reconnection_attempts: Annotated[int, Field(ge=0)] = setting(
        30, description="Restarts of a streaming pull that ended with an error.", example="30"
    )
    connection_recovery_in_sec: Annotated[int, Field(ge=0)] = setting(
        2, description="Seconds between those restarts.", example="2"
    )

    def delivery_policy(self) -> DeliveryPolicy:
        """Failed messages come back after a doubling delay (Pub/Sub's deadline, at most
        600s); exhausted ones without a dead-letter topic keep coming back; a stopping
        subscription gives its handlers one ack deadline."""
        outstanding = self.max_outstanding_messages or _DEFAULT_OUTSTANDING
        return DeliveryPolicy(
            concurrency=self.concurrency,
            prefetch=max(outstanding if outstanding > 0 else _DEFAULT_OUTSTANDING, 1),
            max_deliveries=self.max_deliveries,
            redelivery_delay=1.0,
            max_redelivery_delay=60.0,
            drop_exhausted=False,
            give_up_on_receive=False,
            stop_grace=self.ack_deadline.total_seconds(),
        )


class GCPPubSub(PubSub[GCPPubSubSettings]):
    """Dapr's pubsub.gcp.pubsub over google-cloud-pubsub, its blocking calls off the loop."""

    FEATURES = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self._publisher: Any = None
        self._subscriber: Any = None
        self._topics: set[str] = set()
        self._entities = asyncio.Lock()
        self._engines = SubscriptionEngines(self)

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        s = self.settings
        self._engines = SubscriptionEngines(self)
        self._topics = set()
        deadline = s.ack_deadline.total_seconds()
        if not 10 <= deadline <= 600:
            raise MetadataError(
                f"ackDeadline must be between 10s and 600s, got {deadline:g}s",
                component=self.label,
                field="ackDeadline",
            )
        if s.dead_letter_topic and not 5 <= s.max_deliveries <= 100:
            raise MetadataError(
                "maxDeliveryAttempts must be between 5 and 100 with a deadLetterTopic, "
                f"got {s.max_deliveries}",
                component=self.label,
                field="maxDeliveryAttempts",
            )
        await asyncio.to_thread(self._make_clients)
        try:
            await self.ping()
        except ConnectionFailedError as exc:
            raise ConnectionFailedError(
                f"cannot reach Pub/Sub for project {s.project_id!r}: {exc.reason}",
                component=self.label,
            ) from exc

    def _make_clients(self) -> None:
        from google.cloud import pubsub_v1  # type: ignore[import-untyped]

        s = self.settings
        options = pubsub_v1.types.PublisherOptions(
            enable_message_ordering=s.enable_message_ordering
        )
        if s.endpoint:
            import grpc
            from google.pubsub_v1.services.publisher.transports.grpc import (
                PublisherGrpcTransport,
            )
            from google.pubsub_v1.services.subscriber.transports.grpc import (
                SubscriberGrpcTransport,
            )

            self._publisher = pubsub_v1.PublisherClient(
                publisher_options=options,
                transport=PublisherGrpcTransport(channel=grpc.insecure_channel(s.endpoint)),
            )
            self._subscriber = pubsub_v1.SubscriberClient(
                transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(s.endpoint))
            )
            return
        credentials = None
        if not os.environ.get("PUBSUB_EMULATOR_HOST"):
            credentials = s.service_account_credentials(self.label)
        try:
            self._publisher = pubsub_v1.PublisherClient(
                publisher_options=options, credentials=credentials
            )
            self._subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
        except Exception as exc:  # google.auth's DefaultCredentialsError, mostly
            raise ConnectionFailedError(
                f"cannot create the Pub/Sub clients: {exc}", component=self.label
            ) from exc

    async def shut(self) -> None:
        try:
            await self._engines.stop()
        finally:
            publisher, subscriber = self._publisher, self._subscriber
            self._publisher = self._subscriber = None
            await asyncio.to_thread(_close_clients, publisher, subscriber)

    async def ping(self) -> None:
        publisher = self.opened(self._publisher)
        project = f"projects/{self.settings.project_id}"

        def first_topic() -> None:
            pages = publisher.list_topics(
                request={"project": project, "page_size": 1}, retry=None, timeout=10.0
            )
            next(iter(pages), None)

        try:
            await asyncio.wait_for(asyncio.to_thread(first_topic), 12.0)
        except Exception as exc:
            raise ConnectionFailedError(str(exc), component=self.label) from exc

    # --- publishing -------------------------------------------------------------------

    async def publish(self, request: PublishRequest) -> None:
        self.require_open()
        await self._publish(request.topic, request.data, request.content_type, request.metadata)

    async def _publish(
        self, topic: str, data: bytes, content_type: str | None, metadata: Mapping[str, str]
    ) -> None:
        publisher = self.opened(self._publisher)
        s = self.settings
        await self._ensure_topic(topic)
        attributes = {str(k): str(v) for k, v in metadata.items() if k != ORDERING_KEY}
        if content_type:
            attributes[_CONTENT_TYPE] = content_type
        key = ""
        if s.enable_message_ordering:
            key = metadata.get(ORDERING_KEY) or s.ordering_key
        path = publisher.topic_path(s.project_id, topic)
        for attempt in (1, 2):
            try:
                future = publisher.publish(path, bytes(data), ordering_key=key, **attributes)
                await asyncio.wait_for(asyncio.wrap_future(future), _CALL_TIMEOUT)
                return
            except Exception as exc:
                if key:  # the SDK pauses a key after a failure until resumed
                    with contextlib.suppress(Exception):
                        publisher.resume_publish(path, key)
                if attempt == 1 and self._gone(exc):  # deleted since: made again, once
                    self._topics.discard(topic)
                    await self._ensure_topic(topic)
                    continue
                raise self._failure(f"publish to {topic!r} failed", topic, exc) from exc

    def _gone(self, exc: BaseException) -> bool:
        """A topic or subscription this component made has gone (deleted, or an emulator
        restarted empty) and may be made again."""
        from google.api_core.exceptions import NotFound

        return isinstance(exc, NotFound) and not self.settings.disable_entity_management

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics or self.settings.disable_entity_management:
            return
        publisher = self.opened(self._publisher)
        path = publisher.topic_path(self.settings.project_id, topic)

        def create() -> None:
            from google.api_core.exceptions import AlreadyExists

            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(request={"name": path}, timeout=_CALL_TIMEOUT)

        async with self._entities:
            if topic not in self._topics:
                try:
                    await asyncio.to_thread(create)
                except Exception as exc:
                    raise self._failure(f"cannot create topic {topic!r}", topic, exc) from exc
                self._topics.add(topic)

    def _failure(self, what: str, topic: str, exc: Exception) -> ComponentError:
        """The error for a failed call: Pub/Sub refusing the request itself (a topic name it
        does not allow, ...) is an InvalidRequestError, not worth a retry; anything else may
        pass."""
        from google.api_core.exceptions import InvalidArgument, NotFound

        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if isinstance(exc, InvalidArgument):
            return InvalidRequestError(f"{what}: {reason}", component=self.label, key=topic)
        if isinstance(exc, NotFound) and self.settings.disable_entity_management:
            reason += " (disableEntityManagement is true, so nothing is created)"
        return ConnectionFailedError(f"{what}: {reason}", component=self.label, key=topic)

    # --- subscribing ------------------------------------------------------------------

    def subscription_id(self, topic: str) -> str:
        """``<consumerID>-<topic>``: one per app id, shared by its instances."""
        consumer = self.consumer_id(self.settings.consumer_id, names="the subscriptions")
        return f"{consumer}-{topic}"

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        subscriber = self.opened(self._subscriber)
        s = self.settings
        name = self.subscription_id(request.topic)
        path = subscriber.subscription_path(s.project_id, name)
        await self._ensure_subscription(request.topic, path)
        from google.cloud.pubsub_v1.types import FlowControl  # type: ignore[import-untyped]

        messages, size = s.max_outstanding_messages, s.max_outstanding_bytes
        flow = FlowControl(
            max_messages=_UNLIMITED if messages < 0 else messages or _DEFAULT_OUTSTANDING,
            max_bytes=_UNLIMITED if size < 0 else size or 100 * 1024 * 1024,
            # each lease extension lasts one ackDeadline: a crashed consumer's messages
            # come back within about that (the SDK's own start is 60s)
            min_duration_per_lease_extension=int(s.ack_deadline.total_seconds()),
            max_duration_per_lease_extension=int(s.ack_deadline.total_seconds()),
        )
        transport = _StreamingPull(self, subscriber, path, request.topic, flow)
        transport.start()
        return self._engines.start(transport, request, handler)

    async def _ensure_subscription(self, topic: str, path: str) -> None:
        s = self.settings
        subscriber = self.opened(self._subscriber)
        if s.disable_entity_management:
            try:
                await asyncio.to_thread(
                    subscriber.get_subscription,
                    request={"subscription": path},
                    timeout=_CALL_TIMEOUT,
                )
            except Exception as exc:
                raise self._failure(f"subscription {path!r} is not usable", topic, exc) from exc
            return
        await self._ensure_topic(topic)
        config: dict[str, Any] = {
            "name": path,
            "topic": subscriber.topic_path(s.project_id, topic),
            "ack_deadline_seconds": int(s.ack_deadline.total_seconds()),
            "enable_message_ordering": s.enable_message_ordering,
        }
        if s.dead_letter_topic:
            await self._ensure_topic(s.dead_letter_topic)
            config["dead_letter_policy"] = {
                "dead_letter_topic": subscriber.topic_path(s.project_id, s.dead_letter_topic),
                "max_delivery_attempts": s.max_deliveries,
            }

        def create() -> None:
            from google.api_core.exceptions import AlreadyExists

            with contextlib.suppress(AlreadyExists):  # made by another instance: shared
                subscriber.create_subscription(request=config, timeout=_CALL_TIMEOUT)

        try:
            await asyncio.to_thread(create)
        except Exception as exc:
            raise self._failure(f"cannot create subscription {path!r}", topic, exc) from exc


class _StreamingPull(Transport):
    """One subscription's streaming pull: SDK callbacks → an asyncio queue → the engine."""

    def __init__(
        self, pubsub: GCPPubSub, subscriber: Any, path: str, topic: str, flow: Any
    ) -> None:
        self.source = f"topic {topic!r}"
        self._pubsub, self._subscriber, self._path, self._topic = pubsub, subscriber, path, topic
        self._flow = flow
        self._loop = asyncio.get_running_loop()
        self._arrived: asyncio.Queue[Any] = asyncio.Queue()
        self._future: Any = None
        self._restarts = 0
        self._counts: dict[str, int] = {}
        """Deliveries seen here, by message id, where Pub/Sub does not count them."""
        self._held: set[str] = set()
        self._closed = False

    def start(self) -> None:
        self._future = self._subscriber.subscribe(
            self._path,
            callback=self._on_message,
            flow_control=self._flow,
            await_callbacks_on_shutdown=False,
        )

    def _on_message(self, msg: Any) -> None:
        """Runs on an SDK thread: hand over to the loop; the SDK keeps the lease."""
        try:
            self._loop.call_soon_threadsafe(self._take, msg)
        except RuntimeError:  # the loop is gone: let another consumer have it
            msg.nack()

    def _take(self, msg: Any) -> None:
        if self._closed:  # the stream delivered while stopping: give it back
            msg.nack()
        else:
            self._arrived.put_nowait(msg)

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        await self._check_stream()
        try:
            first = await asyncio.wait_for(self._arrived.get(), 1.0)
        except TimeoutError:
            return []
        batch = [first]
        while len(batch) < max_count and not self._arrived.empty():
            batch.append(self._arrived.get_nowait())
        deliveries = []
        for msg in batch:
            if msg.message_id in self._held:  # redelivered while its first copy is held
                msg.drop()
                continue
            self._held.add(msg.message_id)
            deliveries.append(self._delivery(msg))
        return deliveries

    async def _check_stream(self) -> None:
        """A stream the SDK gave up on is restarted (connectionRecoveryInSec apart, up to
        maxReconnectionAttempts times); after that each receive fails with its error."""
        future = self._future
        if future is None or not future.done() or future.cancelled():
            return
        error = future.exception()
        settings = self._pubsub.settings
        if self._restarts >= settings.max_reconnection_attempts:
            raise ConnectionFailedError(
                f"streaming pull of {self._path} ended: {error}", component=self._pubsub.label
            )
        self._restarts += 1
        self._pubsub.log.warning(
            "%s: streaming pull of %s ended (%s); restarting (%d of %d)",
            self._pubsub.label,
            self._path,
            error,
            self._restarts,
            settings.max_reconnection_attempts,
        )
        await asyncio.sleep(settings.connection_recovery_in_sec)
        if error is not None and self._pubsub._gone(error):
            self._pubsub._topics.discard(self._topic)
            await self._pubsub._ensure_subscription(self._topic, self._path)
        self.start()

    def _delivery(self, msg: Any) -> Delivery:
        attributes = dict(msg.attributes or {})
        content_type = attributes.pop(_CONTENT_TYPE, None)
        count = msg.delivery_attempt
        if not count:
            count = self._counts.get(msg.message_id, 0) + 1
            self._counts[msg.message_id] = count
        message = Message(
            topic=self._topic,
            data=bytes(msg.data),
            metadata=types.MappingProxyType(attributes),
            content_type=content_type,
            id=str(msg.message_id),
            delivery_count=int(count),
        )
        return Delivery(message, receipt=msg, ordering_key=msg.ordering_key or None)

    def _settled(self, delivery: Delivery, *, done: bool) -> None:
        self._held.discard(delivery.message.id)
        if done:
            self._counts.pop(delivery.message.id, None)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._settled(d, done=True)
            d.receipt.ack()

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        self._settled(delivery, done=False)
        msg = delivery.receipt
        if delivery.ordering_key:  # Pub/Sub redelivers it with the later ones of its key
            msg.nack()
            return
        if delay < 1:
            msg.nack()
            return
        msg.drop()  # out of lease management first, so the deadline below stands
        msg.modify_ack_deadline(min(math.ceil(delay), 600))

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        m = delivery.message
        await self._pubsub._publish(topic, m.data, m.content_type, m.metadata)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._settled(d, done=False)
            d.receipt.nack()

    async def close(self) -> None:
        self._closed = True
        future, self._future = self._future, None
        if future is not None:
            await asyncio.to_thread(_stop_stream, future)
        while not self._arrived.empty():  # handed over but never taken: give them back
            self._arrived.get_nowait().nack()
        self._held.clear()


def _stop_stream(future: Any) -> None:
    future.cancel()
    with contextlib.suppress(Exception):
        future.result(timeout=10)


def _close_clients(publisher: Any, subscriber: Any) -> None:
    if publisher is not None:
        with contextlib.suppress(Exception):
            publisher.stop()
        with contextlib.suppress(Exception):
            publisher.transport.close()
    if subscriber is not None:
        with contextlib.suppress(Exception):
            subscriber.close()


__all__ = ["ORDERING_KEY", "GCPPubSub", "GCPPubSubSettings"]
