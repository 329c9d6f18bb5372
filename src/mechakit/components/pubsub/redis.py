"""pubsub.redis: a topic is a Redis stream, a subscriber is a consumer group (``consumerID``).

Publish is one ``XADD`` of the fields ``data``, ``contentType``, ``metadata`` (the
publisher's metadata as JSON) and ``expiresAt`` (ms since the epoch, from ``ttlInSeconds``),
each only when present, so a stream written by Dapr (``data`` only) reads fine. Streams are
trimmed on publish with ``MAXLEN ~ maxLenApprox`` and/or ``MINID ~ now - streamTTL``.

Subscribing creates the group with ``MKSTREAM`` at ``groupStartID`` (default ``0``, as
Dapr: a new group also gets what the stream still holds from before it existed, so
messages published before the first subscriber are not lost; ``$`` means new messages
only). Every component instance reads as its own consumer (``consumerName``, default
``host-pid-random``), so replicas never share pending entries as they do upstream.

Delivery is at-least-once: ``XACK`` only after the handler returned. A failed message stays
pending and is marked idle, so the reclaim loop (``XAUTOCLAIM`` every ``redeliverInterval``
for entries idle ``processingTimeout``) delivers it again within one interval; a consumer
that crashed leaves its entries pending and another consumer of the group claims them
after ``processingTimeout``. ``Message.delivery_count`` is the stream's delivery counter.
After ``maxDeliveries`` the message goes to the dead-letter topic (the subscription's,
else ``deadLetterTopic``) and is acked, or is acked and dropped with an error log.
``DropMessage`` acks at once. Acks waiting while one XACK is under way go out together in
the next. At most ``queueDepth`` messages per subscription are read and not yet handled;
at most ``concurrency`` handler calls run at once. Each subscription reads (XREADGROUP
BLOCK) on a connection of its own, so blocking reads never starve publishing.

Needs Redis 6.2 or later (``XAUTOCLAIM``). Like Dapr, a bare number for
``processingTimeout`` or ``redeliverInterval`` is milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import socket
import time
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from mechakit.components._shared.redis import (
    RedisScript,
    RedisSettings,
    close_client,
    connect,
    map_error,
    redis_errors,
)
from mechakit.core.component import Backoff, ComponentMetadata, Subscription, stop_tasks
from mechakit.core.errors import ConnectionFailedError, InvalidRequestError, MetadataError
from mechakit.core.metadata import Duration, parse_duration, setting
from mechakit.core.pubsub import (
    BulkPublisher,
    BulkPublishFailure,
    BulkPublishRequest,
    BulkPublishResponse,
    DropMessage,
    Handler,
    Message,
    PublishRequest,
    PubSubFeature,
    SubscribeRequest,
    validate_topic,
)
from mechakit.core.state import TTL_METADATA, parse_ttl


def _bare_number_is_millis(value: object) -> object:
    """Dapr reads a bare number for processingTimeout and redeliverInterval as milliseconds."""
    if isinstance(value, str) and value.strip().isdigit():
        return timedelta(milliseconds=int(value.strip()))
    return value


def _days(value: object) -> object:
    """Accept a leading ``<n>d`` (Dapr's own example for streamTTL is ``30d``)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)d(.*)", value)
        if match:
            rest = match.group(2).strip()
            extra = parse_duration(rest) if rest else timedelta(0)
            return timedelta(days=int(match.group(1))) + extra
    return value


MillisDuration = Annotated[Duration, BeforeValidator(_bare_number_is_millis)]
DaysDuration = Annotated[Duration, BeforeValidator(_days)]

_STREAM_ID = re.compile(r"\d+(-\d+)?")


class RedisPubSubSettings(RedisSettings):
    consumer_id: str = setting(
        "",
        name="consumerID",
        description="Consumer group of this subscriber (default: the app id).",
        example="orders-service",
    )
    consumer_name: str = setting(
        "",
        name="consumerName",
        description=(
            "Consumer name inside the group; must differ between replicas "
            "(default: host-pid-random, new for every component instance)."
        ),
    )
    processing_timeout: MillisDuration = setting(
        timedelta(seconds=60),
        name="processingTimeout",
        description=(
            "How long a message may stay unacked before another consumer of the group "
            "claims it (a crashed or stuck consumer). 0 disables redelivery. A bare "
            "number is milliseconds, as in Dapr."
        ),
        example="60s",
    )
    redeliver_interval: MillisDuration = setting(
        timedelta(seconds=15),
        name="redeliverInterval",
        aliases=("redeliveryInterval",),
        description=(
            "How often pending messages are checked for redelivery. 0 disables redelivery. "
            "A bare number is milliseconds, as in Dapr."
        ),
        example="15s",
    )
    queue_depth: Annotated[int, Field(ge=1)] = setting(
        100,
        name="queueDepth",
        description="Messages per subscription read but not yet acked, at most.",
        example="100",
    )
    concurrency: Annotated[int, Field(ge=1)] = setting(
        10,
        name="concurrency",
        description=(
            "Handler calls that may run at once, per subscription (1: in publish order, "
            "redeliveries aside)."
        ),
        example="10",
    )
    max_len_approx: Annotated[int, Field(ge=1)] | None = setting(
        None,
        name="maxLenApprox",
        description="Trim each stream to about this many entries on publish (default: unbounded).",
        example="10000",
    )
    stream_ttl: DaysDuration | None = setting(
        None,
        name="streamTTL",
        description="Trim entries older than this on publish (MINID ~, approximate).",
        example="24h",
    )
    max_deliveries: Annotated[int, Field(ge=0)] = setting(
        10,
        name="maxDeliveries",
        aliases=("maxDeliveryCount",),
        description=(
            "Deliveries of a message (the first included) before it goes to the dead-letter "
            "topic, or is dropped with an error log when there is none. 0: never give up."
        ),
        example="10",
    )
    dead_letter_topic: str = setting(
        "",
        name="deadLetterTopic",
        description="Dead-letter topic for subscriptions that name none.",
        example="poison",
    )
    group_start_id: str = setting(
        "0",
        name="groupStartID",
        description=(
            "Where a newly created consumer group starts: '0' delivers what the stream "
            "still holds (Dapr's behaviour), '$' only messages published afterwards."
        ),
        example="0",
    )

    @field_validator("group_start_id")
    @classmethod
    def _check_start(cls, value: str) -> str:
        value = value.strip()
        if value != "$" and not _STREAM_ID.fullmatch(value):
            raise ValueError("must be '0', '$' or a stream entry id such as 1700000000000-0")
        return value

    @field_validator("processing_timeout", "redeliver_interval", "stream_ttl")
    @classmethod
    def _duration_not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @property
    def redelivery_enabled(self) -> bool:
        return self.processing_timeout > timedelta(0) and self.redeliver_interval > timedelta(0)


class RedisPubSub(BulkPublisher[RedisPubSubSettings]):
    """Dapr's Redis Streams pub/sub with per-instance consumers and ack-after-success."""

    settings_model = RedisPubSubSettings
    FEATURES = frozenset({PubSubFeature.BULK_PUBLISH, PubSubFeature.MESSAGE_TTL})

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._settings: RedisPubSubSettings | None = None
        self._group = ""
        self._consumer = ""
        self._subscriptions: set[_StreamSubscription] = set()

    async def init(self, metadata: ComponentMetadata) -> None:
        settings = self.decode_settings(metadata)
        self._group = settings.consumer_id or metadata.app_id
        if not self._group:
            raise MetadataError(
                "metadata 'consumerID' is required when the component has no app id "
                "(it names the consumer group)",
                component=self.label,
                field="consumerID",
            )
        self._consumer = settings.consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._client = await connect(settings, component=self.label)
        self._settings = settings

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        await asyncio.gather(*(s.cancel() for s in subscriptions), return_exceptions=True)
        client, self._client = self._client, None
        self._settings = None
        await close_client(client)

    async def ping(self) -> None:
        with redis_errors(self.label, action="ping"):
            await self._redis.ping()

    @property
    def consumer_group(self) -> str:
        return self._group

    @property
    def consumer_name(self) -> str:
        return self._consumer

    async def publish(self, request: PublishRequest) -> None:
        fields = self._fields(request.topic, request.data, request.content_type, request.metadata)
        await self._xadd(request.topic, fields)

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """One pipeline of XADDs; an entry that fails (bad TTL, rejected write) fails alone."""
        validate_topic(request.topic)
        failed: list[BulkPublishFailure] = []
        accepted: list[tuple[str, dict[str, bytes]]] = []
        for entry in request.entries:
            try:
                metadata = {**request.metadata, **entry.metadata}
                fields = self._fields(request.topic, entry.data, entry.content_type, metadata)
            except InvalidRequestError as exc:
                failed.append(BulkPublishFailure(entry.entry_id, str(exc)))
                continue
            accepted.append((entry.entry_id, fields))
        if not accepted:
            return BulkPublishResponse(failed=failed)
        trim = self._trim_args()
        pipe = self._redis.pipeline(transaction=False)
        for _entry_id, fields in accepted:
            pipe.xadd(request.topic, fields, **trim.xadd)
        if trim.minid_after_maxlen is not None:
            pipe.xtrim(request.topic, minid=trim.minid_after_maxlen, approximate=True)
        action = f"bulk publish to {request.topic!r}"
        with redis_errors(self.label, key=request.topic, action=action):
            results = await pipe.execute(raise_on_error=False)
        for (entry_id, _fields), result in zip(accepted, results[: len(accepted)], strict=True):
            if isinstance(result, Exception):
                error = map_error(result, component=self.label, key=request.topic, action=action)
                failed.append(BulkPublishFailure(entry_id, str(error)))
        return BulkPublishResponse(failed=failed)

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        settings = self._open_settings()
        await self._ensure_group(request.topic)
        reader = await connect(settings, component=self.label)
        subscription = _StreamSubscription(
            self,
            settings,
            request.topic,
            handler,
            request.dead_letter_topic or settings.dead_letter_topic,
            reader,
        )
        self._subscriptions.add(subscription)
        subscription.start()
        return subscription

    # --- internals shared with _StreamSubscription --------------------------------------

    @property
    def _redis(self) -> Any:
        if self._client is None:
            raise ConnectionFailedError(
                "the component is not initialised or closed", component=self.label
            )
        return self._client

    def _open_settings(self) -> RedisPubSubSettings:
        if self._settings is None or self._client is None:
            raise ConnectionFailedError(
                "the component is not initialised or closed", component=self.label
            )
        return self._settings

    async def _xadd(self, topic: str, fields: dict[str, bytes]) -> None:
        trim = self._trim_args()
        with redis_errors(self.label, key=topic, action=f"publish to {topic!r}"):
            if trim.minid_after_maxlen is None:
                await self._redis.xadd(topic, fields, **trim.xadd)
            else:
                pipe = self._redis.pipeline(transaction=False)
                pipe.xadd(topic, fields, **trim.xadd)
                pipe.xtrim(topic, minid=trim.minid_after_maxlen, approximate=True)
                await pipe.execute()

    async def _dead_letter(self, topic: str, message: Message) -> None:
        """Publishes a copy of ``message`` to ``topic``; its TTL does not start again."""
        fields = self._fields(
            topic, message.data, message.content_type, message.metadata, with_ttl=False
        )
        await self._xadd(topic, fields)

    def _fields(
        self,
        topic: str,
        data: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
        *,
        with_ttl: bool = True,
    ) -> dict[str, bytes]:
        try:
            ttl = parse_ttl(metadata) if with_ttl else None
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                exc.reason, component=self.label, key=topic, field=TTL_METADATA
            ) from None
        fields: dict[str, bytes] = {_DATA: bytes(data)}
        if content_type:
            fields[_CONTENT_TYPE] = content_type.encode()
        if metadata:
            fields[_METADATA] = json.dumps(dict(metadata), separators=(",", ":")).encode()
        if ttl is not None and ttl > 0:
            fields[_EXPIRES_AT] = str(int(time.time() * 1000) + ttl * 1000).encode()
        return fields

    def _trim_args(self) -> _Trim:
        settings = self._open_settings()
        minid = None
        if settings.stream_ttl:
            cutoff_ms = int(time.time() * 1000 - settings.stream_ttl.total_seconds() * 1000)
            minid = f"{max(cutoff_ms, 0)}-0"
        if settings.max_len_approx is not None:
            return _Trim({"maxlen": settings.max_len_approx, "approximate": True}, minid)
        if minid is not None:
            return _Trim({"minid": minid, "approximate": True}, None)
        return _Trim({}, None)

    async def _ensure_group(self, topic: str) -> None:
        """XGROUP CREATE … MKSTREAM; an existing group is fine (BUSYGROUP)."""
        settings = self._open_settings()
        try:
            with redis_errors(
                self.label, key=topic, action=f"create consumer group {self._group!r}"
            ):
                await self._redis.xgroup_create(
                    topic, self._group, settings.group_start_id, mkstream=True
                )
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _forget(self, subscription: _StreamSubscription) -> None:
        self._subscriptions.discard(subscription)


@dataclass(frozen=True)
class _Trim:
    xadd: dict[str, Any]
    minid_after_maxlen: str | None
    """A MINID trim to run after XADD, when MAXLEN already took XADD's one trim slot."""


@dataclass(frozen=True)
class _Delivery:
    message: Message
    expires_at_ms: int | None


class _StreamSubscription(Subscription):
    """One topic for one handler: a reader loop, a reclaim loop, a task per message."""

    def __init__(
        self,
        pubsub: RedisPubSub,
        settings: RedisPubSubSettings,
        topic: str,
        handler: Handler,
        dead_letter_topic: str,
        reader: Any,
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self._pubsub = pubsub
        self._settings = settings
        self._handler = handler
        self._reader = reader
        self._group = pubsub.consumer_group
        self._consumer = pubsub.consumer_name
        self._label = pubsub.label
        self._log = pubsub.log
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._started: set[asyncio.Task[None]] = set()
        """Tasks past their wait for a slot: calling the handler, then acking."""
        self._wake = asyncio.Event()
        self._unsent_acks: list[str] = []
        self._acking = False
        self._room = asyncio.Event()
        self._room.set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        block = min(1.0, settings.socket_timeout / 2) if settings.socket_timeout > 0 else 1.0
        self._block_ms = max(10, int(block * 1000))

    def start(self) -> None:
        name = f"{self._label} {self.topic}"
        self._loops.append(asyncio.create_task(self._read_loop(), name=f"read {name}"))
        if self._settings.redelivery_enabled:
            self._loops.append(asyncio.create_task(self._reclaim_loop(), name=f"reclaim {name}"))

    @property
    def active(self) -> bool:
        return not self._stopping and any(not t.done() for t in self._loops)

    async def cancel(self) -> None:
        """Stops reading; running handlers may finish (bounded); unacked messages stay pending."""
        caller = asyncio.current_task()
        if self._stopping:
            if caller not in self._started:
                await self._stopped.wait()
            return
        self._stopping = True
        self._wake.set()
        try:
            await stop_tasks(*self._loops)
            await stop_tasks(*[t for t in self._in_flight.values() if t not in self._started])
            running = [t for t in self._in_flight.values() if t is not caller]
            if running:
                grace = self._settings.processing_timeout.total_seconds() or None
                _done, late = await asyncio.wait(running, timeout=grace)
                await stop_tasks(*late)
            await self._forget_consumer_if_idle()
        finally:
            self._pubsub._forget(self)
            await close_client(self._reader)
            self._stopped.set()

    # --- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            room = await self._wait_for_room()
            try:
                reply = await self._reader.xreadgroup(
                    self._group,
                    self._consumer,
                    {self.topic: ">"},
                    count=room,
                    block=self._block_ms,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._recover(exc, backoff, "read from")
                continue
            backoff.reset()
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    await self._accept(_decode(self.topic, entry_id, fields, 1))

    async def _reclaim_loop(self) -> None:
        """Claims entries idle for processingTimeout: failed here, or held by a dead consumer."""
        interval = self._settings.redeliver_interval.total_seconds()
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._reclaim_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._recover(exc, backoff, "reclaim pending messages of")
                continue
            backoff.reset()
            await self._pause(interval)

    async def _reclaim_once(self) -> None:
        min_idle = int(self._settings.processing_timeout.total_seconds() * 1000)
        cursor: Any = "0-0"
        while True:
            room = self._settings.queue_depth - len(self._in_flight)
            if room <= 0:
                return
            reply = await self._pubsub._redis.xautoclaim(
                self.topic, self._group, self._consumer, min_idle, cursor, count=room
            )
            cursor = reply[0]
            # Entries trimmed from the stream come back empty (Redis 6.2) or not at all (7+).
            entries = [e for e in reply[1] if e and e[0] is not None and e[1] is not None]
            counts = await self._delivery_counts([entry_id for entry_id, _ in entries])
            for entry_id, fields in entries:
                delivery = _decode(self.topic, entry_id, fields, counts.get(_text(entry_id), 1))
                if delivery.message.id in self._in_flight:
                    continue  # still being handled here: a slow handler, not a lost message
                limit = self._settings.max_deliveries
                if limit and delivery.message.delivery_count > limit:
                    await self._exhausted(delivery.message, None)
                else:
                    await self._accept(delivery)
            if _text(cursor) in ("0-0", "0"):
                return

    async def _delivery_counts(self, ids: Sequence[Any]) -> dict[str, int]:
        if not ids:
            return {}
        pipe = self._pubsub._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.topic, self._group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _wait_for_room(self) -> int:
        while len(self._in_flight) >= self._settings.queue_depth:
            self._room.clear()
            await self._room.wait()
        return self._settings.queue_depth - len(self._in_flight)

    async def _recover(self, exc: Exception, backoff: Backoff, doing: str) -> None:
        """Logs a failed loop step and waits; re-creates the group if the server lost it."""
        delay = backoff.next()
        if "NOGROUP" in str(exc):
            self._log.warning(
                "%s: consumer group %r of topic %r is gone (server restarted or stream "
                "deleted); creating it again",
                self._label,
                self._group,
                self.topic,
            )
            with contextlib.suppress(Exception):
                await self._pubsub._ensure_group(self.topic)
        else:
            self._log.warning(
                "%s: could not %s topic %r: %s; retrying in %.2gs",
                self._label,
                doing,
                self.topic,
                exc,
                delay,
            )
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Sleeps, but wakes at once when the subscription stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # --- delivering ---------------------------------------------------------------------

    async def _accept(self, delivery: _Delivery) -> None:
        message = delivery.message
        if delivery.expires_at_ms is not None and time.time() * 1000 >= delivery.expires_at_ms:
            self._log.info(
                "%s: message %s on topic %r expired (%s) before delivery; dropped",
                self._label,
                message.id,
                self.topic,
                TTL_METADATA,
            )
            await self._ack(message)
            return
        task = asyncio.create_task(self._deliver(message), name=f"{self._label} {message.id}")
        self._in_flight[message.id] = task
        task.add_done_callback(functools.partial(self._done, message.id))

    def _done(self, message_id: str, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(message_id, None)
        self._started.discard(task)
        self._room.set()

    async def _deliver(self, message: Message) -> None:
        async with self._slots:
            if self._stopping:
                return
            task = asyncio.current_task()
            assert task is not None
            self._started.add(task)
            try:
                await self._handler(message)
            except DropMessage as exc:
                self._log.info(
                    "%s: message %s on topic %r dropped by its handler%s",
                    self._label,
                    message.id,
                    self.topic,
                    f": {exc}" if str(exc) else "",
                )
            except Exception as exc:
                await self._failed(message, exc)
                return
        await self._ack(message)

    async def _failed(self, message: Message, error: Exception) -> None:
        limit = self._settings.max_deliveries
        if limit and message.delivery_count >= limit:
            await self._exhausted(message, error)
            return
        if not self._settings.redelivery_enabled:
            self._log.warning(
                "%s: handler failed on message %s of topic %r: %r; it stays pending "
                "(redelivery is disabled)",
                self._label,
                message.id,
                self.topic,
                error,
            )
            return
        self._log.warning(
            "%s: handler failed on message %s of topic %r (delivery %d%s): %r; redelivering",
            self._label,
            message.id,
            self.topic,
            message.delivery_count,
            f" of {limit}" if limit else "",
            error,
        )
        idle_ms = int(self._settings.processing_timeout.total_seconds() * 1000)
        try:
            # Backdate the entry's idle time so the next reclaim pass takes it at once.
            await self._pubsub._redis.xclaim(
                self.topic, self._group, self._consumer, 0, [message.id], idle=idle_ms, justid=True
            )
        except Exception as exc:
            self._log.warning(
                "%s: could not mark message %s of topic %r for redelivery (%s); it is "
                "redelivered after processingTimeout",
                self._label,
                message.id,
                self.topic,
                exc,
            )

    async def _exhausted(self, message: Message, error: Exception | None) -> None:
        """Dead-letters (or drops) a message whose deliveries are used up, then acks it."""
        target = self.dead_letter_topic
        why = f"last error: {error!r}" if error is not None else "its consumers did not ack it"
        if target and target != self.topic:
            try:
                await self._pubsub._dead_letter(target, message)
            except Exception as exc:
                self._log.warning(
                    "%s: could not move message %s of topic %r to dead-letter topic %r: %s; "
                    "it stays pending",
                    self._label,
                    message.id,
                    self.topic,
                    target,
                    exc,
                )
                return
            self._log.warning(
                "%s: message %s on topic %r failed %d deliveries (%s); moved to dead-letter "
                "topic %r",
                self._label,
                message.id,
                self.topic,
                message.delivery_count,
                why,
                target,
            )
        else:
            self._log.error(
                "%s: message %s on topic %r failed %d deliveries (%s) and was dropped "
                "(no dead-letter topic)",
                self._label,
                message.id,
                self.topic,
                message.delivery_count,
                why,
            )
        await self._ack(message)

    async def _ack(self, message: Message) -> None:
        """Queues the ack; one caller at a time sends every queued id in one XACK.

        Under load acks batch up by themselves, and a subscription never holds more than
        one connection for acking.
        """
        self._unsent_acks.append(message.id)
        if self._acking:
            return
        self._acking = True
        try:
            while self._unsent_acks:
                ids, self._unsent_acks = self._unsent_acks, []
                try:
                    await self._pubsub._redis.xack(self.topic, self._group, *ids)
                except Exception as exc:
                    self._log.warning(
                        "%s: could not ack %d message(s) of topic %r, e.g. %s (%s); they will "
                        "be delivered again",
                        self._label,
                        len(ids),
                        self.topic,
                        ids[0],
                        exc,
                    )
        finally:
            self._acking = False

    async def _forget_consumer_if_idle(self) -> None:
        """Removes this consumer from the group when it holds no pending entries."""
        with contextlib.suppress(Exception):
            await _DELETE_IDLE_CONSUMER(
                self._pubsub._redis, [self.topic], [self._group, self._consumer]
            )


_DATA, _CONTENT_TYPE, _METADATA, _EXPIRES_AT = "data", "contentType", "metadata", "expiresAt"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(topic: str, entry_id: Any, fields: Mapping[Any, Any], count: int) -> _Delivery:
    """A stream entry as a Message; unknown or malformed optional fields are ignored."""
    values = {_text(k): v for k, v in fields.items()}
    metadata: dict[str, str] = {}
    raw_metadata = values.get(_METADATA)
    if raw_metadata:
        with contextlib.suppress(ValueError, TypeError):
            decoded = json.loads(raw_metadata)
            if isinstance(decoded, dict):
                metadata = {str(k): str(v) for k, v in decoded.items()}
    content_type = values.get(_CONTENT_TYPE)
    expires_at: int | None = None
    if values.get(_EXPIRES_AT):
        with contextlib.suppress(ValueError):
            expires_at = int(_text(values[_EXPIRES_AT]))
    data = values.get(_DATA) or b""
    message = Message(
        topic=topic,
        data=data if isinstance(data, bytes) else str(data).encode(),
        metadata=types.MappingProxyType(metadata),
        content_type=_text(content_type) if content_type else None,
        id=_text(entry_id),
        delivery_count=max(count, 1),
    )
    return _Delivery(message, expires_at)


# KEYS: stream; ARGV: group, consumer. Deletes the consumer only if nothing is pending for it.
_DELETE_IDLE_CONSUMER = RedisScript(
    """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""
)

__all__ = ["RedisPubSub", "RedisPubSubSettings"]
