"""pubsub.jetstream: NATS JetStream with a durable pull consumer per (topic, consumer id).

A topic is a NATS subject; a message is one JetStream publish with the publisher's metadata
as headers (the content type as ``Content-Type``). Publishing and subscribing find the
stream that captures the subject: ``streamName`` when given, else whatever stream already
holds the subject, else a stream named after the topic, created on first use (unless
``createStream`` is false; a named stream that exists gets the subject added).

Competing consumers and fan-out need no extra metadata (upstream, cc#2827, needs
``durableName`` and ``queueGroupName`` by hand): every subscription binds the durable pull
consumer ``<consumer>-<topic>`` where ``<consumer>`` is ``durableName``, else
``queueGroupName``, else ``consumerID``, else the app id. Instances of one app share that
consumer and so share the work; another app id has its own consumer and gets every message.

Delivery is at-least-once, by the shared engine (``mechakit.core.delivery``): ack only after
the handler returned, a failed handler is nak'ed with a delay (``backOff`` by delivery, else
the engine's doubling wait), ``maxDeliver`` deliveries are the engine's limit (then the
dead-letter topic or an acked drop), and what a killed subscriber held unacked comes back
after ``ackWait``. ``Message.delivery_count`` is JetStream's delivery counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import re
import ssl
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BeforeValidator, Field, SecretStr

from mechakit.core.component import Subscription
from mechakit.core.delivery import (
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
    concurrency_setting,
    dead_letter_topic_setting,
)
from mechakit.core.errors import (
    BulkError,
    ConnectionFailedError,
    MetadataError,
    MissingDependencyError,
)
from mechakit.core.metadata import Bool, Duration, setting
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

_CONTENT_TYPE = "Content-Type"
_CONNECT_WITHIN = 10.0
"""Seconds init waits for the first connection (connection errors, TLS refusals)."""
_NAME_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_NO_HEADERS: types.MappingProxyType[str, str] = types.MappingProxyType({})


def _concurrency(value: object) -> object:
    """Dapr's jetstream ``concurrency`` is ``single`` or ``parallel``; a number works too."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "single":
            return 1
        if word == "parallel":
            return 10
    return value


Concurrency = Annotated[int, Field(ge=1), BeforeValidator(_concurrency)]


def _duration_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


DurationList = Annotated[list[Duration], BeforeValidator(_duration_list)]


class NatsConnectionSettings(DeliverySettings):
    """How to reach NATS, and the engine's metadata: shared by pubsub.jetstream and
    pubsub.natsstreaming."""

    nats_url: str = setting(
        ..., name="natsURL", description="NATS server URL(s), comma separated.",
        example="nats://localhost:4222",
    )  # fmt: skip
    jwt: SecretStr | None = setting(None, description="User JWT (with seedKey).")
    seed_key: SecretStr | None = setting(None, description="User NKey seed (with jwt).")
    token: SecretStr | None = setting(None, description="Authentication token.")
    tls_client_cert: str = setting(
        "", name="tls_client_cert", description="Client certificate file (PEM), for mTLS."
    )
    tls_client_key: str = setting(
        "", name="tls_client_key", description="Client key file (PEM), for mTLS."
    )
    ca: str = setting("", aliases=("tls_ca",), description="CA file (PEM) to trust.")
    name: str = setting("", description="Client connection name (default: dapr-<app id>).")


class JetStreamSettings(NatsConnectionSettings):
    stream_name: str = setting(
        "",
        description=(
            "Stream holding the topics (default: the stream that captures the subject, "
            "else one named after the topic)."
        ),
        example="orders",
    )
    create_stream: Bool = setting(
        True, description="Create the stream (or add the subject to it) when missing."
    )
    consumer_id: str = consumer_id_setting(
        description="Names the durable consumer of each topic (default: the app id)."
    )
    durable_name: str = setting("", description="Used instead of consumerID in consumer names.")
    queue_group_name: str = setting(
        "", description="Used instead of consumerID in consumer names (when no durableName)."
    )
    deliver_policy: Literal["all", "last", "new", "sequence", "time"] = setting(
        "all", description="Where a new consumer starts.", example="all"
    )
    start_sequence: Annotated[int, Field(ge=1)] | None = setting(
        None, description="First stream sequence, with deliverPolicy sequence."
    )
    start_time: datetime | None = setting(
        None, description="First message time (RFC 3339 or epoch seconds), with deliverPolicy time."
    )
    ack_wait: Duration = setting(
        timedelta(seconds=30),
        description="How long a delivered message may stay unacked before it is redelivered.",
        example="30s",
    )
    max_deliveries: Annotated[int, Field(ge=0)] = setting(
        0,
        aliases=("maxDeliver", "maxDeliveryCount"),
        description=(
            "Deliveries of a message (the first included) before it goes to the dead-letter "
            "topic, or is dropped with an error log. 0: never give up."
        ),
        example="5",
    )
    max_ack_pending: Annotated[int, Field(ge=1)] = setting(
        1000, description="Unacked messages per consumer, at most (server-side).", example="1000"
    )
    back_off: DurationList = setting(
        [], description="Nak delays by delivery (the last repeats).", example="1s,5s,30s"
    )
    concurrency: Concurrency = concurrency_setting(
        description="Handler calls at once per subscription; 'single' is 1, 'parallel' 10."
    )
    dead_letter_topic: str = dead_letter_topic_setting(
        description="Dead-letter topic for subscriptions that name none."
    )

    def delivery_policy(self) -> DeliveryPolicy:
        return nats_policy(self, self.ack_wait.total_seconds(), self.max_ack_pending)


def nats_policy(
    settings: DeliverySettings, ack_wait: float, max_ack_pending: int
) -> DeliveryPolicy:
    """The engine's policy on JetStream: a failed message is nak'ed with a doubling delay,
    receives the server counted but no handler saw never count against the limit, and a
    stopping subscription gives its handlers ackWait. Up to ten messages per handler slot
    are fetched ahead (100 at the default concurrency, as a plain fetch loop would), since
    a fetch costs a round trip and held messages are kept alive."""
    return replace(
        DeliverySettings.delivery_policy(settings),
        prefetch=min(max_ack_pending, settings.concurrency * 10),
        redelivery_delay=1.0,
        max_redelivery_delay=30.0,
        give_up_on_receive=False,
        stop_grace=ack_wait,
    )


@dataclass(frozen=True)
class JetStreamConfig:
    """What both NATS drivers run on, decoded from either's metadata."""

    stream_name: str = ""
    create_stream: bool = True
    consumer: str = ""
    per_instance: bool = False
    """True: every component instance has its own consumer (every instance gets every
    message); False: instances with one consumer name share the work."""
    deliver_policy: str = "all"
    start_sequence: int | None = None
    start_time: datetime | None = None
    ack_wait: float = 30.0
    max_ack_pending: int = 1000
    back_off: tuple[float, ...] = ()


S = TypeVar("S", bound=NatsConnectionSettings)


class JetStreamDriver(PubSub[S], Generic[S]):
    """The NATS connection, streams and consumers; subclasses say how metadata maps."""

    def __init__(self) -> None:
        super().__init__()
        self._nc: Any = None
        self._js: Any = None
        self._config = JetStreamConfig()
        self._streams: dict[str, str] = {}
        self._stream_lock = asyncio.Lock()
        self._engines = SubscriptionEngines(self)
        self._instance = uuid.uuid4().hex[:10]

    def jetstream_config(self) -> JetStreamConfig:
        raise NotImplementedError

    async def open(self) -> None:
        import nats

        self._config = self.jetstream_config()
        self._engines = SubscriptionEngines(self)
        self._streams = {}
        settings = self.settings
        options: dict[str, Any] = {
            "servers": [u.strip() for u in settings.nats_url.split(",") if u.strip()],
            "name": settings.name or f"dapr-{self.metadata.app_id or self.metadata.name}",
            "connect_timeout": 5,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
        }
        if settings.token is not None:
            options["token"] = settings.token.get_secret_value()
        if (settings.jwt is None) != (settings.seed_key is None):
            raise MetadataError(
                "metadata 'jwt' and 'seedKey' go together", component=self.label, field="jwt"
            )
        if settings.jwt is not None and settings.seed_key is not None:
            from nats.aio.client import RawCredentials

            if importlib.util.find_spec("nkeys") is None:  # nats-py signs the nonce with it
                raise MissingDependencyError(
                    "metadata 'jwt' and 'seedKey' need the nkeys package: pip install nkeys",
                    component=self.label,
                    field="seedKey",
                )

            options["user_credentials"] = RawCredentials(
                _creds(settings.jwt.get_secret_value(), settings.seed_key.get_secret_value())
            )
        if settings.tls_client_cert or settings.ca:
            context = ssl.create_default_context(cafile=settings.ca or None)
            if settings.tls_client_cert:
                context.load_cert_chain(settings.tls_client_cert, settings.tls_client_key or None)
            options["tls"] = context

        async def on_error(error: Exception) -> None:
            self.log.warning("%s: NATS connection error: %s", self.label, error)

        options["error_cb"] = on_error
        try:
            # nats-py keeps retrying the first connect when reconnects are unbounded.
            self._nc = await asyncio.wait_for(nats.connect(**options), _CONNECT_WITHIN)
        except Exception as exc:
            raise ConnectionFailedError(
                f"cannot connect to NATS at {settings.nats_url}: {exc}", component=self.label
            ) from exc
        self._js = self._nc.jetstream()

    async def shut(self) -> None:
        try:
            await self._engines.stop()
        finally:
            nc, self._nc, self._js = self._nc, None, None
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.drain()
                with contextlib.suppress(Exception):
                    await nc.close()

    @property
    def config(self) -> JetStreamConfig:
        return self._config

    async def publish(self, request: PublishRequest) -> None:
        js = self.opened(self._js)
        await self._publish(js, request.topic, request.data, request.content_type, request.metadata)

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        js = self.opened(self._js)
        stream = await self._stream_of(js, request.topic)
        config = self._config
        durable = _name(f"{config.consumer}-{request.topic}")
        if config.per_instance:
            durable = _name(f"{config.consumer}-{self._instance}-{request.topic}")
        from nats.js.api import ConsumerConfig, DeliverPolicy

        policies = {
            "all": DeliverPolicy.ALL,
            "last": DeliverPolicy.LAST,
            "new": DeliverPolicy.NEW,
            "sequence": DeliverPolicy.BY_START_SEQUENCE,
            "time": DeliverPolicy.BY_START_TIME,
        }
        consumer = ConsumerConfig(
            durable_name=durable,
            deliver_policy=policies[config.deliver_policy],
            opt_start_seq=config.start_sequence if config.deliver_policy == "sequence" else None,
            opt_start_time=_rfc3339(config.start_time) if config.deliver_policy == "time" else None,  # type: ignore[arg-type]
            ack_wait=config.ack_wait,
            max_deliver=-1,
            max_ack_pending=config.max_ack_pending,
            filter_subject=request.topic,
            inactive_threshold=max(config.ack_wait * 4, 60.0) if config.per_instance else None,
        )
        try:
            sub = await js.pull_subscribe(
                request.topic, durable=durable, stream=stream, config=consumer
            )
        except Exception as exc:
            raise ConnectionFailedError(
                f"cannot create consumer {durable!r} on stream {stream!r}: {exc}",
                component=self.label,
                key=request.topic,
            ) from exc
        transport = _Consumer(self, js, request.topic, sub)
        return self._engines.start(transport, request, handler)

    # --- internals --------------------------------------------------------------------

    async def _publish(
        self,
        js: Any,
        topic: str,
        data: bytes,
        content_type: str | None,
        metadata: Any,
    ) -> None:
        if topic not in self._streams:
            await self._stream_of(js, topic)
        headers = {str(k): str(v) for k, v in metadata.items()} if metadata else {}
        if content_type:
            headers[_CONTENT_TYPE] = content_type
        try:
            await js.publish(topic, bytes(data), headers=headers or None)
        except Exception as exc:
            raise ConnectionFailedError(
                f"publish to {topic!r} failed: {exc}", component=self.label, key=topic
            ) from exc

    async def _stream_of(self, js: Any, topic: str) -> str:
        """The stream capturing ``topic``, made (or extended) on first use if allowed."""
        if topic in self._streams:
            return self._streams[topic]
        async with self._stream_lock:
            if topic not in self._streams:
                try:
                    self._streams[topic] = await self._find_or_create(js, topic)
                except MetadataError:
                    raise
                except Exception as exc:
                    raise ConnectionFailedError(
                        f"cannot find or create the stream of {topic!r}: {exc}",
                        component=self.label,
                        key=topic,
                    ) from exc
        return self._streams[topic]

    async def _find_or_create(self, js: Any, topic: str) -> str:
        from nats.js.errors import NotFoundError

        config = self._config
        if config.stream_name:
            try:
                info = await js.stream_info(config.stream_name)
            except NotFoundError:
                self._refuse_create(config.stream_name, topic)
                with contextlib.suppress(Exception):
                    await js.add_stream(name=config.stream_name, subjects=[topic])
                info = await js.stream_info(config.stream_name)
            subjects = list(info.config.subjects or [])
            if not any(_matches(s, topic) for s in subjects):
                self._refuse_create(config.stream_name, topic)
                await js.update_stream(replace(info.config, subjects=[*subjects, topic]))
            return str(config.stream_name)
        try:
            return str(await js.find_stream_name_by_subject(topic))
        except NotFoundError:
            pass
        name = _name(topic)
        self._refuse_create(name, topic)
        with contextlib.suppress(Exception):  # made meanwhile by another instance: fine
            await js.add_stream(name=name, subjects=[topic])
        return str(await js.find_stream_name_by_subject(topic))

    def _refuse_create(self, stream: str, topic: str) -> None:
        if not self._config.create_stream:
            raise MetadataError(
                f"no stream captures topic {topic!r} (stream {stream!r}) and createStream is false",
                component=self.label,
                field="streamName",
            )


class _Consumer(Transport):
    """One subscription's durable pull consumer."""

    def __init__(self, pubsub: JetStreamDriver[Any], js: Any, topic: str, sub: Any) -> None:
        self.topic = topic
        self.source = f"topic {topic!r}"
        self._pubsub, self._js, self._sub = pubsub, js, sub
        self._held: dict[int, Any] = {}
        """Received and not yet settled, by ``id(msg)``: kept alive every ackWait / 3."""
        self._keeper: asyncio.Task[None] | None = None

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        import nats.errors

        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_alive(), name=f"keep {self.source}")
        try:
            msgs = await self._sub.fetch(max_count, timeout=1.0)
        except nats.errors.TimeoutError:
            return []
        for msg in msgs:
            self._held[id(msg)] = msg
        return [_delivery(self.topic, m) for m in msgs]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """One after the other: an ack is a fire-and-forget publish that only queues bytes
        for the connection's flusher, so a task each (``gather``) would cost more than it."""
        self._settled(deliveries)
        failed: dict[str, Exception] = {}
        for d in deliveries:
            try:
                await d.receipt.ack()
            except Exception as exc:
                failed[d.key] = exc
        if failed:
            raise BulkError(failed, component=self._pubsub.label)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        self._settled([delivery])
        back_off = self._pubsub.config.back_off
        if back_off:
            delay = back_off[min(delivery.message.delivery_count, len(back_off)) - 1]
        await delivery.receipt.nak(delay=delay if delay > 0 else None)

    def _settled(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._held.pop(id(d.receipt), None)

    async def _keep_alive(self) -> None:
        """Tells JetStream every ackWait / 3 that held messages are being worked on, so a
        handler (or a message waiting for a free handler) outlasting ackWait is not handed to
        another instance meanwhile; a killed process sends nothing and ackWait redelivers."""
        interval = max(self._pubsub.config.ack_wait / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        m = delivery.message
        await self._pubsub._publish(self._js, topic, m.data, m.content_type, m.metadata)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self._settled(deliveries)
        for d in deliveries:
            with contextlib.suppress(Exception):
                await d.receipt.nak()

    async def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        self._held.clear()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


def _delivery(topic: str, msg: Any) -> Delivery:
    headers = msg.headers
    content_type, metadata = None, _NO_HEADERS
    if headers:
        content_type = headers.get(_CONTENT_TYPE)
        metadata = types.MappingProxyType(
            {k: v for k, v in headers.items() if k != _CONTENT_TYPE and not k.startswith("Nats-")}
        )
    meta = msg.metadata
    message = Message(
        topic=topic,
        data=bytes(msg.data),
        metadata=metadata,
        content_type=content_type,
        id=str(meta.sequence.stream),
        delivery_count=max(int(meta.num_delivered or 1), 1),
    )
    return Delivery(message, receipt=msg)


def _name(text: str) -> str:
    """A valid stream or consumer name: invalid characters become '_' plus a short hash."""
    clean = _NAME_INVALID.sub("_", text)
    if clean != text or len(clean) > 200:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        clean = f"{clean[:190]}_{digest}"
    return clean


def _matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject filter (``*``, ``>``) captures ``subject``."""
    parts, tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(parts):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(parts) == len(tokens)


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _creds(jwt: str, seed: str) -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt.strip()}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.strip()}\n------END USER NKEY SEED------\n"
    )


class JetStreamPubSub(JetStreamDriver[JetStreamSettings]):
    """Dapr's pubsub.jetstream, with competing consumers and fan-out by app id."""

    FEATURES = frozenset()

    def jetstream_config(self) -> JetStreamConfig:
        s = self.settings
        if s.deliver_policy == "sequence" and s.start_sequence is None:
            raise MetadataError(
                "deliverPolicy 'sequence' needs startSequence", component=self.label,
                field="startSequence",
            )  # fmt: skip
        if s.deliver_policy == "time" and s.start_time is None:
            raise MetadataError(
                "deliverPolicy 'time' needs startTime", component=self.label, field="startTime"
            )
        consumer = s.durable_name or s.queue_group_name
        if not consumer:
            consumer = self.consumer_id(s.consumer_id, names="the durable consumers")
        return JetStreamConfig(
            stream_name=s.stream_name,
            create_stream=s.create_stream,
            consumer=consumer,
            deliver_policy=s.deliver_policy,
            start_sequence=s.start_sequence,
            start_time=s.start_time,
            ack_wait=s.ack_wait.total_seconds(),
            max_ack_pending=s.max_ack_pending,
            back_off=tuple(d.total_seconds() for d in s.back_off),
        )


__all__ = [
    "JetStreamConfig",
    "JetStreamDriver",
    "JetStreamPubSub",
    "JetStreamSettings",
    "NatsConnectionSettings",
]
