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

Delivery is at-least-once, by the shared engine (``mechakit.core.delivery``): ``XACK`` only
after the handler returned. The stream is this driver's transport: reads are ``XREADGROUP
BLOCK``, and every ``redeliverInterval`` a reclaim pass (``XAUTOCLAIM`` of entries idle
``processingTimeout``) takes what failed here and what a crashed consumer of the group
left pending. A failed message stays pending and is marked idle (``XCLAIM … IDLE JUSTID``),
so it comes back within one interval; so do the unhandled ones of a cancelled
subscription, to any consumer of the group. ``Message.delivery_count`` is the stream's
delivery counter; an entry reclaimed past ``maxDeliveries`` (its consumers kept dying) is
not handled again. After ``maxDeliveries`` the message goes to the dead-letter topic (the
subscription's, else ``deadLetterTopic``) and is acked, or is acked and dropped with an
error log. ``DropMessage`` acks at once. Acks waiting while one XACK is under way go out
together in the next; an ack that comes while the subscription's reader is blocked in
XREADGROUP waits for the reader's next read and goes in one pipeline with it (or by itself
after ``ACK_DELAY``, when no message comes), which saves a round trip per message when
messages flow. At most ``queueDepth`` messages per subscription are read and not
yet handled; at most ``concurrency`` handler calls run at once; a cancelled subscription
gives running handlers ``processingTimeout`` to finish. Each subscription reads on a
connection of its own, so blocking reads never starve publishing.

Needs Redis 6.2 or later (``XAUTOCLAIM``). Like Dapr, a bare number for
``processingTimeout`` or ``redeliverInterval`` is milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from mechakit.components._shared.redis import (
    RedisDriver,
    RedisScript,
    RedisSettings,
    close_client,
    connect,
    map_error,
    redis_errors,
)
from mechakit.components._shared.redis_autopipe import AutoPipeline
from mechakit.core.component import Subscription
from mechakit.core.delivery import (
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
    concurrency_setting,
    dead_letter_topic_setting,
    max_deliveries_setting,
)
from mechakit.core.metadata import Duration, parse_duration, setting
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
    consumer_id_setting,
)


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


class RedisPubSubSettings(RedisSettings, DeliverySettings):
    consumer_id: str = consumer_id_setting(
        description="Consumer group of this subscriber (default: the app id)."
    )
    consumer_name: str = setting(
        "",
        description=(
            "Consumer name inside the group; must differ between replicas "
            "(default: host-pid-random, new for every component instance)."
        ),
    )
    processing_timeout: MillisDuration = setting(
        timedelta(seconds=60),
        description=(
            "How long a message may stay unacked before another consumer of the group "
            "claims it (a crashed or stuck consumer). 0 disables redelivery. A bare "
            "number is milliseconds, as in Dapr."
        ),
        example="60s",
    )
    redeliver_interval: MillisDuration = setting(
        timedelta(seconds=15),
        aliases=("redeliveryInterval",),
        description=(
            "How often pending messages are checked for redelivery. 0 disables redelivery. "
            "A bare number is milliseconds, as in Dapr."
        ),
        example="15s",
    )
    queue_depth: Annotated[int, Field(ge=1)] = setting(
        100,
        description="Messages per subscription read but not yet acked, at most.",
        example="100",
    )
    concurrency: Annotated[int, Field(ge=1)] = concurrency_setting(
        description=(
            "Handler calls that may run at once, per subscription (1: in publish order, "
            "redeliveries aside)."
        )
    )
    max_len_approx: Annotated[int, Field(ge=1)] | None = setting(
        None,
        description="Trim each stream to about this many entries on publish (default: unbounded).",
        example="10000",
    )
    stream_ttl: DaysDuration | None = setting(
        None,
        name="streamTTL",
        description="Trim entries older than this on publish (MINID ~, approximate).",
        example="24h",
    )
    max_deliveries: Annotated[int, Field(ge=0)] = max_deliveries_setting(
        10,
        description=(
            "Deliveries of a message (the first included) before it goes to the dead-letter "
            "topic, or is dropped with an error log when there is none. 0: never give up."
        ),
    )
    dead_letter_topic: str = dead_letter_topic_setting(
        description="Dead-letter topic for subscriptions that name none."
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

    def delivery_policy(self) -> DeliveryPolicy:
        """A failed entry waits for the next reclaim pass; a stopping subscription gives its
        handlers processingTimeout, after which another consumer may claim their entries."""
        redeliver = self.redeliver_interval.total_seconds()
        return replace(
            super().delivery_policy(),
            prefetch=self.queue_depth,
            redelivery_delay=redeliver if self.redelivery_enabled else None,
            stop_grace=self.processing_timeout.total_seconds() or None,
        )


class RedisPubSub(RedisDriver[RedisPubSubSettings], BulkPublisher[RedisPubSubSettings]):
    """Dapr's Redis Streams pub/sub with per-instance consumers and ack-after-success."""

    FEATURES = frozenset({PubSubFeature.MESSAGE_TTL})

    def __init__(self) -> None:
        super().__init__()
        self._group = ""
        self._consumer = ""
        self._engines = SubscriptionEngines(self)

    async def open(self) -> None:
        settings = self.settings
        self._group = self.consumer_id(settings.consumer_id, names="the consumer group")
        self._consumer = settings.consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        await super().open()

    async def shut(self) -> None:
        """Stops the subscriptions (their handlers get processingTimeout), then disconnects."""
        try:
            await self._engines.stop()
        finally:
            await super().shut()

    @property
    def consumer_group(self) -> str:
        return self._group

    @property
    def consumer_name(self) -> str:
        return self._consumer

    async def publish(self, request: PublishRequest) -> None:
        await self._xadd(self._redis, request.topic, self._fields(request), auto=self._calls)

    async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
        """One pipeline of XADDs; an entry that fails (bad TTL, rejected write) fails alone."""
        client = self._redis
        accepted, failed = self.prepare_each(request, self._fields)
        if not accepted:
            return BulkPublishResponse(failed=failed)
        trim = self._trim_args()
        pipe = client.pipeline(transaction=False)
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
        client = self._redis
        await self._ensure_group(client, request.topic)
        reader = await connect(self.settings, component=self.label)
        if self._client is not client:  # closed meanwhile: shut() has stopped the engines
            await close_client(reader)
            self.require_open()
        return self._engines.start(_Stream(self, client, request.topic, reader), request, handler)

    # --- internals shared with _Stream --------------------------------------
    # They take the client: a stopping subscription still acks and dead-letters while
    # shut() waits for its handlers, when the public operations already refuse.

    async def _xadd(
        self, client: Any, topic: str, fields: dict[str, bytes], auto: AutoPipeline | None = None
    ) -> None:
        """XADD (and XTRIM after it, when both limits apply); through ``auto`` when given."""
        trim = self._trim_args()
        with redis_errors(self.label, key=topic, action=f"publish to {topic!r}"):
            if trim.minid_after_maxlen is None and auto is not None:
                await auto.command(lambda r: r.xadd(topic, fields, **trim.xadd))
            elif trim.minid_after_maxlen is None:
                await client.xadd(topic, fields, **trim.xadd)
            else:
                pipe = client.pipeline(transaction=False)
                pipe.xadd(topic, fields, **trim.xadd)
                pipe.xtrim(topic, minid=trim.minid_after_maxlen, approximate=True)
                await pipe.execute()

    async def _dead_letter(self, client: Any, topic: str, message: Message) -> None:
        """Publishes a copy of ``message`` to ``topic``; its TTL does not start again."""
        copy = PublishRequest(topic, message.data, message.content_type, message.metadata)
        await self._xadd(client, topic, self._fields(copy, with_ttl=False))

    def _fields(self, request: PublishRequest, *, with_ttl: bool = True) -> dict[str, bytes]:
        expires_at = self.message_expiry(request) if with_ttl else None
        fields: dict[str, bytes] = {_DATA: bytes(request.data)}
        if request.content_type:
            fields[_CONTENT_TYPE] = request.content_type.encode()
        if request.metadata:
            metadata = json.dumps(dict(request.metadata), separators=(",", ":"))
            fields[_METADATA] = metadata.encode()
        if expires_at is not None:
            fields[_EXPIRES_AT] = str(int(expires_at * 1000)).encode()
        return fields

    def _trim_args(self) -> _Trim:
        settings = self.settings
        minid = None
        if settings.stream_ttl:
            cutoff_ms = int(time.time() * 1000 - settings.stream_ttl.total_seconds() * 1000)
            minid = f"{max(cutoff_ms, 0)}-0"
        if settings.max_len_approx is not None:
            return _Trim({"maxlen": settings.max_len_approx, "approximate": True}, minid)
        if minid is not None:
            return _Trim({"minid": minid, "approximate": True}, None)
        return _Trim({}, None)

    async def _ensure_group(self, client: Any, topic: str) -> None:
        """XGROUP CREATE … MKSTREAM; an existing group is fine (BUSYGROUP)."""
        try:
            with redis_errors(
                self.label, key=topic, action=f"create consumer group {self._group!r}"
            ):
                await client.xgroup_create(
                    topic, self._group, self.settings.group_start_id, mkstream=True
                )
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise


ACK_DELAY = 0.05
"""Longest an ack waits for the reader's next read before it goes alone (seconds)."""


@dataclass(frozen=True)
class _Trim:
    xadd: dict[str, Any]
    minid_after_maxlen: str | None
    """A MINID trim to run after XADD, when MAXLEN already took XADD's one trim slot."""


class _Stream(Transport):
    """One topic's stream as this consumer of the group reads it: new entries (XREADGROUP
    BLOCK) and, every redeliverInterval, entries idle for processingTimeout (XAUTOCLAIM)."""

    def __init__(self, pubsub: RedisPubSub, client: Any, topic: str, reader: Any) -> None:
        settings = pubsub.settings
        self.topic = topic
        self.source = f"topic {topic!r}"
        self._pubsub = pubsub
        self._client = client
        """The component's client, for acks and reclaims; ``reader`` blocks in XREADGROUP."""
        self._reader = reader
        self._group = pubsub.consumer_group
        self._consumer = pubsub.consumer_name
        self._reclaim_cursor: Any = "0-0"
        self._next_reclaim = time.monotonic() + settings.redeliver_interval.total_seconds()
        """``time.monotonic()`` of the next reclaim pass. The first read comes first: a new
        subscriber is blocked in XREADGROUP at once, as a publisher expects."""
        block = min(1.0, settings.socket_timeout / 2) if settings.socket_timeout > 0 else 1.0
        self._block_ms = max(10, int(block * 1000))
        self._reading = False
        self._parked: list[Any] = []
        """Ids handled while the reader was blocked: acked with its next read."""
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        try:
            if self._pubsub.settings.redelivery_enabled and time.monotonic() >= self._next_reclaim:
                reclaimed = await self._reclaim(max_count)
                if reclaimed:
                    return reclaimed
            return await self._read(max_count)
        except Exception as exc:
            if "NOGROUP" not in str(exc):
                raise
        self._pubsub.log.warning(
            "%s: consumer group %r of topic %r is gone (server restarted or stream deleted); "
            "creating it again",
            self._pubsub.label,
            self._group,
            self.topic,
        )
        await self._pubsub._ensure_group(self._client, self.topic)
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        ids = [d.message.id for d in deliveries]
        if not self._reading:
            await self._client.xack(self.topic, self._group, *ids)
            return
        self._parked += ids
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(ACK_DELAY, self._ack_parked)

    def _ack_parked(self) -> None:
        """No read came within ACK_DELAY: the parked ids go by themselves."""
        self._flush = None
        if self._parked:
            task = asyncio.get_running_loop().create_task(self._send_parked())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _send_parked(self) -> None:
        ids, self._parked = self._parked, []
        try:
            await self._client.xack(self.topic, self._group, *ids)
        except Exception as exc:
            self._ack_failed(ids, exc)

    def _ack_failed(self, ids: Sequence[Any], exc: BaseException) -> None:
        self._pubsub.log.warning(
            "%s: could not ack %d message(s) of topic %r, e.g. %s: %s; they will be "
            "delivered again",
            self._pubsub.label,
            len(ids),
            self.topic,
            _text(ids[0]),
            exc,
        )

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        """Backdates the entry's idle time so the next reclaim pass takes it at once."""
        await self._backdate([delivery])

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        await self._pubsub._dead_letter(self._client, topic, delivery.message)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Backdated too: any consumer of the group may claim them on its next pass."""
        await self._backdate(deliveries)

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._parked:
            await self._send_parked()
        await asyncio.gather(*self._flushing, return_exceptions=True)
        try:
            await self._forget_consumer_if_idle()
        finally:
            await close_client(self._reader)

    async def _read(self, max_count: int) -> list[Delivery]:
        block = self._block_ms
        if self._pubsub.settings.redelivery_enabled:
            until_reclaim = int((self._next_reclaim - time.monotonic()) * 1000)
            block = max(1, min(block, until_reclaim))
        acks, self._parked = self._parked, []
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._reading = True
        try:
            reply = await self._read_and_ack(acks, max_count, block)
        finally:
            self._reading = False
        return [
            _decode(self.topic, entry_id, fields, 1)
            for _stream, entries in reply or ()
            for entry_id, fields in entries
        ]

    async def _read_and_ack(self, acks: list[Any], max_count: int, block: int) -> Any:
        """XREADGROUP, after an XACK of ``acks`` in the same pipeline when there are some."""
        streams = {self.topic: ">"}
        if not acks:
            return await self._reader.xreadgroup(
                self._group, self._consumer, streams, count=max_count, block=block
            )
        pipe = self._reader.pipeline(transaction=False)
        pipe.xack(self.topic, self._group, *acks)
        pipe.xreadgroup(self._group, self._consumer, streams, count=max_count, block=block)
        try:
            acked, reply = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            self._parked[:0] = acks  # maybe not sent: close() sends them (again: harmless)
            raise
        except Exception as exc:
            self._ack_failed(acks, exc)  # pending: redelivered after processingTimeout
            raise
        if isinstance(acked, Exception):
            self._ack_failed(acks, acked)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _reclaim(self, max_count: int) -> list[Delivery]:
        """One XAUTOCLAIM page of entries idle for processingTimeout: failed here, given
        back, or held by a consumer that died. A pass ends when the cursor comes round."""
        min_idle = int(self._pubsub.settings.processing_timeout.total_seconds() * 1000)
        reply = await self._client.xautoclaim(
            self.topic, self._group, self._consumer, min_idle, self._reclaim_cursor, count=max_count
        )
        if _text(reply[0]) in ("0-0", "0"):
            self._reclaim_cursor = "0-0"
            interval = self._pubsub.settings.redeliver_interval.total_seconds()
            self._next_reclaim = time.monotonic() + interval
        else:
            self._reclaim_cursor = reply[0]
        # Entries trimmed from the stream come back empty (Redis 6.2) or not at all (7+).
        entries = [e for e in reply[1] if e and e[0] is not None and e[1] is not None]
        counts = await self._delivery_counts([entry_id for entry_id, _ in entries])
        return [
            _decode(self.topic, entry_id, fields, counts.get(_text(entry_id), 1))
            for entry_id, fields in entries
        ]

    async def _delivery_counts(self, ids: Sequence[Any]) -> dict[str, int]:
        if not ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.topic, self._group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _backdate(self, deliveries: Sequence[Delivery]) -> None:
        """XCLAIM … IDLE processingTimeout JUSTID: idle enough to be reclaimed, not counted."""
        if not deliveries or not self._pubsub.settings.redelivery_enabled:
            return
        idle_ms = int(self._pubsub.settings.processing_timeout.total_seconds() * 1000)
        ids = [d.message.id for d in deliveries]
        await self._client.xclaim(
            self.topic, self._group, self._consumer, 0, ids, idle=idle_ms, justid=True
        )

    async def _forget_consumer_if_idle(self) -> None:
        """Removes this consumer from the group when it holds no pending entries."""
        with contextlib.suppress(Exception):
            await _DELETE_IDLE_CONSUMER(self._client, [self.topic], [self._group, self._consumer])


_DATA, _CONTENT_TYPE, _METADATA, _EXPIRES_AT = "data", "contentType", "metadata", "expiresAt"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(topic: str, entry_id: Any, fields: Mapping[Any, Any], count: int) -> Delivery:
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
    expires_at: float | None = None
    if values.get(_EXPIRES_AT):
        with contextlib.suppress(ValueError):
            expires_at = int(_text(values[_EXPIRES_AT])) / 1000
    data = values.get(_DATA) or b""
    message = Message(
        topic=topic,
        data=data if isinstance(data, bytes) else str(data).encode(),
        metadata=types.MappingProxyType(metadata),
        content_type=_text(content_type) if content_type else None,
        id=_text(entry_id),
        delivery_count=max(count, 1),
    )
    return Delivery(message, expires_at=expires_at)


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
