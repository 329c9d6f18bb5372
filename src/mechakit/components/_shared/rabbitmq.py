"""RabbitMQ connection and publishing shared by pubsub.rabbitmq and bindings.rabbitmq
(aio-pika, imported when a component opens).

One ``AmqpConnection`` per component keeps a connection up: when it drops (a broker
restart, a network cut) it reconnects every ``reconnectWait`` for as long as the component
is open (upstream gives up after a minute, cc#4335). Each queue consumer
(``_shared.rabbitmq_queue``) has a channel of its own and re-declares its exchange, queue
and bindings on every new connection, so a subscription made while the broker is down
starts once it is back, and every subscription resumes after a restart. Publishes wait for the connection a few ``reconnectWait`` and then
fail with ``ConnectionFailedError``; with ``publisherConfirm`` a publish returns only once
the broker has the message, so none is silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from pydantic import SecretStr

from mechakit.core.errors import ComponentError, ConnectionFailedError, MetadataError
from mechakit.core.metadata import Duration, Settings, setting

Log = Any
_CONNECT_TIMEOUT = 5.0
_PUBLISH_TIMEOUT = 10.0
"""Seconds one publish (and its confirm) may take before it is tried again."""
_FIRST_CONNECT_WITHIN = 10.0
"""Seconds ``open`` waits for the first connection before failing the component."""


class RabbitMQConnectionSettings(Settings):
    """How to reach RabbitMQ: ``connectionString`` or its parts."""

    connection_string: SecretStr | None = setting(
        None,
        aliases=("host",),
        description="AMQP URI (amqp://user:pass@host:port/vhost); 'host' is its old name.",
        example="amqp://guest:guest@localhost:5672/",
    )
    protocol: str = setting("", description="amqp or amqps, with hostname (default amqp).")
    hostname: str = setting("localhost", description="Broker host[:port], without a URI.")
    username: str = setting("", description="User, without a URI.")
    password: SecretStr | None = setting(None, description="Password, without a URI.")
    client_name: str = setting("", description="Connection name shown by the broker.")
    heart_beat: Duration = setting(
        timedelta(seconds=10), name="heartBeat", description="AMQP heartbeat interval."
    )

    def url(self, component: str) -> str:
        """The AMQP URI to connect to; a protocol clashing with the URI is a MetadataError."""
        if self.connection_string is not None and self.connection_string.get_secret_value():
            uri = self.connection_string.get_secret_value()
            scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
            if scheme not in ("amqp", "amqps"):
                raise MetadataError(
                    "connectionString must be an amqp:// or amqps:// URI",
                    component=component,
                    field="connectionString",
                )
            if self.protocol and self.protocol.lower() != scheme:
                raise MetadataError(
                    f"protocol {self.protocol!r} does not match the connection string's {scheme!r}",
                    component=component,
                    field="protocol",
                )
            return uri
        from urllib.parse import quote

        protocol = (self.protocol or "amqp").lower()
        if protocol not in ("amqp", "amqps"):
            raise MetadataError(
                f"protocol must be amqp or amqps, not {self.protocol!r}",
                component=component,
                field="protocol",
            )
        user = ""
        if self.username:
            user = quote(self.username, safe="")
            if self.password is not None:
                user += ":" + quote(self.password.get_secret_value(), safe="")
            user += "@"
        return f"{protocol}://{user}{self.hostname}/"


def reconnect_wait_setting(name: str, aliases: tuple[str, ...], default: float) -> Any:
    return setting(
        timedelta(seconds=default),
        name=name,
        aliases=aliases,
        description="Wait between reconnection attempts after the connection dropped.",
        example=f"{default:g}s",
    )


class AmqpConnection:
    """One connection, re-made in the background whenever it drops, until ``close``."""

    def __init__(
        self,
        url: str,
        *,
        label: str,
        log: Log,
        reconnect_wait: float,
        properties: Any,
        heartbeat: float = 10.0,
    ) -> None:
        self._heartbeat = max(int(heartbeat), 0)
        self._url, self._label, self._log = url, label, log
        self.reconnect_wait = max(reconnect_wait, 0.1)
        self._properties = properties
        self._connection: Any = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closed = False

    async def open(self) -> None:
        """Connects (``ConnectionFailedError`` when the broker cannot be had), then keeps the
        connection up in the background."""
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._keep_up(), name=f"{self._label} amqp")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), _FIRST_CONNECT_WITHIN)
        except TimeoutError:
            raise ConnectionFailedError(
                f"cannot connect to RabbitMQ within {_FIRST_CONNECT_WITHIN:g}s",
                component=self._label,
            ) from None

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    async def connection(self, within: float | None = None) -> Any:
        """The open connection, waiting for it ``within`` seconds (None: as long as it takes)."""
        if within is None:
            await self._up.wait()
        else:
            try:
                await asyncio.wait_for(self._up.wait(), within)
            except TimeoutError:
                raise ConnectionFailedError(
                    f"RabbitMQ is not reachable (waited {within:.3g}s for a reconnection)",
                    component=self._label,
                ) from None
        return self._connection

    async def _keep_up(self) -> None:
        import aio_pika

        while not self._closed:
            try:
                connection = await aio_pika.connect(
                    self._url,
                    timeout=_CONNECT_TIMEOUT,
                    client_properties=self._properties,
                    heartbeat=self._heartbeat,
                )
            except Exception as exc:
                if self._first is not None and not self._first.done():
                    self._first.set_exception(
                        ConnectionFailedError(
                            f"cannot connect to RabbitMQ: {exc}", component=self._label
                        )
                    )
                    return
                self._log.debug("%s: RabbitMQ connect failed: %s", self._label, exc)
                await asyncio.sleep(self.reconnect_wait)
                continue
            gone = when_closed(connection)
            self._connection = connection
            self._up.set()
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            else:
                self._log.warning("%s: reconnected to RabbitMQ", self._label)
            await gone
            self._up.clear()
            if not self._closed:
                self._log.warning(
                    "%s: lost the RabbitMQ connection; reconnecting every %.3gs",
                    self._label,
                    self.reconnect_wait,
                )
                await asyncio.sleep(self.reconnect_wait)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        connection, self._connection = self._connection, None
        self._up.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class Publisher:
    """Publishes on a channel of its own (with confirms when asked), re-made after a drop."""

    def __init__(self, amqp: AmqpConnection, *, label: str, confirm: bool) -> None:
        self._amqp, self._label, self._confirm = amqp, label, confirm
        self._channel: Any = None
        self._exchanges: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: Any,
        *,
        declare: Callable[[Any], Awaitable[Any]] | None = None,
        key: str = "",
    ) -> None:
        """Sends ``message`` to ``exchange`` ('' is the default exchange), declaring it
        first with ``declare(channel)`` (which returns it) once per channel; retries while reconnecting."""
        deadline = time.monotonic() + max(self._amqp.reconnect_wait * 3, 3.0)
        while True:
            try:
                channel = await self._open_channel(max(deadline - time.monotonic(), 0.05))
                target = self._exchanges.get(exchange)
                if target is None:
                    if declare is None:
                        target = channel.default_exchange if not exchange else None
                        if target is None:
                            target = await channel.get_exchange(exchange, ensure=False)
                    else:
                        target = await declare(channel)
                    self._exchanges[exchange] = target
                await target.publish(message, routing_key=routing_key, timeout=_PUBLISH_TIMEOUT)
                return
            except ConnectionFailedError:
                raise
            except Exception as exc:
                self._forget_channel()
                if not is_connection_error(exc):
                    raise ComponentError(
                        f"RabbitMQ refused the publish to {exchange or routing_key!r}: {exc}",
                        component=self._label,
                        key=key or None,
                    ) from exc
                if time.monotonic() >= deadline:
                    raise ConnectionFailedError(
                        f"publish to {exchange or routing_key!r} failed: {exc}",
                        component=self._label,
                        key=key or None,
                    ) from exc
                await asyncio.sleep(0.1)

    async def _open_channel(self, within: float) -> Any:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                connection = await self._amqp.connection(within)
                self._exchanges = {}
                self._channel = await connection.channel(publisher_confirms=self._confirm)
            return self._channel

    def _forget_channel(self) -> None:
        channel, self._channel = self._channel, None
        self._exchanges = {}
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(channel.close())

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


def is_connection_error(exc: BaseException) -> bool:
    """A failure that a new channel or connection may fix (not a refusal by the broker)."""
    import aiormq.exceptions as aexc

    refused = (
        aexc.ChannelPreconditionFailed
        | aexc.ChannelAccessRefused
        | aexc.ChannelNotFoundEntity
        | aexc.ChannelLockedResource
    )
    return not isinstance(exc, refused | MetadataError)


def when_closed(closable: Any) -> asyncio.Future[None]:
    """A future done once the aio-pika connection or channel ``closable`` has closed."""
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(_sender: Any, _exc: BaseException | None = None) -> None:
        if not gone.done():
            gone.set_result(None)

    closable.close_callbacks.add(on_close)
    return gone


PUBLISH_CONTROLS = frozenset({"ttlinseconds", "priority", "routingkey"})
"""Request metadata that sets message properties rather than travelling as headers."""


def outgoing_message(
    data: bytes,
    *,
    content_type: str | None,
    metadata: Mapping[str, str],
    ttl: int | None,
    delivery_mode: int,
    label: str,
    key: str,
) -> Any:
    """An ``aio_pika.Message``: other request metadata become headers, ``ttlInSeconds`` (or
    ``ttl``, the component's default) the expiration, ``priority`` the priority."""
    import uuid

    import aio_pika

    from mechakit.components._shared.requests import metadata_value
    from mechakit.core.errors import InvalidRequestError

    raw = metadata_value(metadata, "priority")
    priority: int | None = None
    if raw:
        try:
            priority = int(raw)
        except ValueError:
            priority = -1
        if not 0 <= priority <= 255:
            raise InvalidRequestError(
                f"metadata 'priority' must be a whole number from 0 to 255, got {raw!r}",
                component=label,
                key=key,
                field="priority",
            )
    headers: dict[str, Any] = {
        k: str(v) for k, v in metadata.items() if k.lower() not in PUBLISH_CONTROLS
    }
    return aio_pika.Message(
        bytes(data),
        headers=headers or None,
        content_type=content_type or None,
        delivery_mode=aio_pika.DeliveryMode(delivery_mode) if delivery_mode else None,
        expiration=ttl if ttl is not None and ttl > 0 else None,
        priority=priority,
        message_id=uuid.uuid4().hex,
    )


def client_properties(name: str) -> dict[str, Any]:
    return {"connection_name": name} if name else {}


__all__ = [
    "AmqpConnection",
    "Publisher",
    "RabbitMQConnectionSettings",
    "client_properties",
    "is_connection_error",
    "outgoing_message",
    "reconnect_wait_setting",
    "when_closed",
]
