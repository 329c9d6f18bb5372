"""A reconnecting aiomqtt client with manual acks, and publishing through one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mechakit.core.component import Backoff, Component
from mechakit.core.errors import ConnectionFailedError

from .settings import MQTTSettings, check_topic, endpoint, tls_context

OnMessage = Callable[[Any, int], None]
"""Called on the event loop with each paho message and the session epoch it came in."""


_PENDING_CALLS_WARNING = 10_000
"""Publishes awaiting their PUBACK at which aiomqtt warns (its default, 10, is routine)."""


class Connection:
    """One MQTT client id, connected until closed: reconnects with a doubling wait and
    subscribes its filters again after each connect. ``epoch`` grows whenever the broker
    has no session for us (a clean session, or one it lost): acks of messages of an older
    epoch are skipped, as their ids mean nothing in the new session."""

    def __init__(
        self,
        owner: Component[Any],
        settings: MQTTSettings,
        *,
        identifier: str,
        clean: bool,
        filters: Sequence[str] = (),
        on_message: OnMessage | None = None,
    ) -> None:
        self._owner, self._settings = owner, settings
        self._label, self._log = owner.label, owner.log
        self.identifier, self._clean, self._filters = identifier, clean, list(filters)
        self._on_message = on_message
        self._endpoint = endpoint(settings, component=owner.label)
        self._tls = tls_context(settings, component=owner.label) if self._endpoint.tls else None
        self._client: Any = None
        self.connected = asyncio.Event()
        self.epoch = 0
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._last_error = ""
        self.source = f"MQTT client {identifier!r}"

    async def start(self) -> None:
        """Connects; a first connection that fails is a ConnectionFailedError."""
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name=f"{self._label} {self.source}")
        try:
            await asyncio.wait_for(
                asyncio.shield(self._first), self._settings.connect_timeout.total_seconds()
            )
        except BaseException as exc:
            await self.close()
            if isinstance(exc, ConnectionFailedError):
                raise
            if isinstance(exc, TimeoutError):
                raise ConnectionFailedError(
                    f"cannot connect to the MQTT broker at {self._where()}: "
                    f"{self._last_error or 'timed out'}",
                    component=self._label,
                ) from None
            raise

    def _where(self) -> str:
        return f"{self._endpoint.host}:{self._endpoint.port}"

    async def _run(self) -> None:
        import aiomqtt
        from aiomqtt.exceptions import MqttConnectError

        backoff = Backoff(first=0.2, cap=5.0)
        while True:
            try:
                client = self._make_client()
                await client.__aenter__()
            except (aiomqtt.MqttError, OSError, ValueError) as exc:
                self._failed(exc, refused=isinstance(exc, MqttConnectError))
                await asyncio.sleep(backoff.next())
                continue
            self._client = client
            try:
                for topic_filter in self._filters:
                    codes = await client.subscribe(topic_filter, qos=self._settings.qos)
                    self._check_granted(topic_filter, codes)
                self.connected.set()
                backoff.reset()
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)
                async for _ in client.messages:  # ours come via on_message; this ends on a drop
                    pass
            except aiomqtt.MqttError as exc:
                self._log.warning("%s: %s lost its connection: %s", self._label, self.source, exc)
            finally:
                self.connected.clear()
                self._client = None
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)
            await asyncio.sleep(backoff.next())

    def _check_granted(self, topic_filter: str, codes: Any) -> None:
        """A SUBACK with a failure code (0x80 and up) refuses the subscription: init fails
        with it; later it is logged and retried with the next connection."""
        import aiomqtt

        refused = [c for c in codes or () if int(getattr(c, "value", c)) >= 0x80]
        if not refused:
            return
        error = ConnectionFailedError(
            f"the MQTT broker refused the subscription {topic_filter!r}: {refused[0]}",
            component=self._label,
            key=topic_filter,
        )
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
        raise aiomqtt.MqttError(str(error))

    def _failed(self, exc: Exception, *, refused: bool) -> None:
        if self._first is not None and not self._first.done() and refused:
            # The broker answered and said no (credentials, protocol): retrying will not help.
            self._first.set_exception(
                ConnectionFailedError(
                    f"the MQTT broker at {self._where()} refused the connection: {exc}",
                    component=self._label,
                )
            )
            return
        self._last_error = str(exc) or type(exc).__name__
        self._log.info("%s: %s cannot connect yet: %s", self._label, self.source, exc)

    def _make_client(self) -> Any:
        import aiomqtt
        import paho.mqtt.client as paho

        e, s = self._endpoint, self._settings
        options: dict[str, Any] = {
            "identifier": self.identifier,
            "username": e.username,
            "password": e.password,
            "keepalive": int(s.keep_alive.total_seconds()),
            "timeout": s.connect_timeout.total_seconds(),
            "tls_context": self._tls,
        }
        if e.websockets:
            options.update(transport="websockets", websocket_path=e.path)
        if s.protocol_version == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if self._clean else 0xFFFFFFFF
            options.update(
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=self._clean,
                properties=properties,
            )
        else:
            options.update(protocol=aiomqtt.ProtocolVersion.V311, clean_session=self._clean)
        client = aiomqtt.Client(e.host, e.port, **options)
        # aiomqtt warns on every publish while more than 10 wait for their PUBACK: with
        # concurrent publishers that is normal, and it flooded the logs.
        client.pending_calls_threshold = _PENDING_CALLS_WARNING
        inner: paho.Client = client._client  # aiomqtt exposes no manual acks; paho does
        inner.manual_ack_set(True)
        aiomqtt_on_connect = inner.on_connect

        def on_connect(*args: Any) -> None:
            flags = args[2]
            if not getattr(flags, "session_present", False):
                self.epoch += 1
            aiomqtt_on_connect(*args)  # type: ignore[misc]

        inner.on_connect = on_connect
        if self._on_message is not None:
            deliver = self._on_message
            inner.on_message = lambda _client, _userdata, msg: deliver(msg, self.epoch)
        return client

    async def wait_connected(self) -> Any:
        """The connected aiomqtt client; ConnectionFailedError after connectTimeout."""
        if self._client is None or not self.connected.is_set():
            try:
                await asyncio.wait_for(
                    self.connected.wait(), self._settings.connect_timeout.total_seconds()
                )
            except TimeoutError:
                raise ConnectionFailedError(
                    f"not connected to the MQTT broker at {self._where()}", component=self._label
                ) from None
        return self._client

    def ack(self, mid: int, qos: int, epoch: int) -> bool:
        """PUBACK ``mid`` if it belongs to the current session and we are connected."""
        client = self._client
        if qos == 0 or epoch != self.epoch or client is None or not self.connected.is_set():
            return False
        client._client.ack(mid, qos)
        return True

    async def unsubscribe(self) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            for topic_filter in self._filters:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.unsubscribe(topic_filter), 5)
        self._filters = []

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner


def publish_properties(
    settings: MQTTSettings, content_type: str | None, metadata: Mapping[str, str]
) -> Any:
    """MQTT 5 properties carrying the content type and metadata; None on 3.1.1."""
    if settings.protocol_version != "5":
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type:
        properties.ContentType = content_type
    pairs = [(str(k), str(v)) for k, v in metadata.items()]
    if pairs:
        properties.UserProperty = pairs
    return properties


async def publish(
    connection: Connection,
    settings: MQTTSettings,
    *,
    topic: str,
    data: bytes,
    qos: int,
    retain: bool,
    properties: Any = None,
    component: str,
) -> None:
    """Publishes and, for QoS 1 and 2, waits for the broker's acknowledgement."""
    import aiomqtt

    check_topic(topic, component=component)
    client = await connection.wait_connected()
    try:
        await client.publish(topic, bytes(data), qos=qos, retain=retain, properties=properties)
    except (aiomqtt.MqttError, OSError) as exc:
        raise ConnectionFailedError(
            f"publish to {topic!r} failed: {exc}", component=component, key=topic
        ) from exc
